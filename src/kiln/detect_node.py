"""Node web stacks whose start script is not a production server on $HOST:$PORT.

Next.js and Nuxt build at bake time and run their production server; NestJS
runs its compiled dist/main.js, Qwik City its Node adapter's server/, Angular
(kiln.detect_angular) its SSR server, AdonisJS (kiln.detect_adonis) its build/; the site
generators (kiln.detect_sites) build at bake time, their output served as static
files (their `start` scripts are development servers). Fastify apps keep the
generic Node run line with a note on the host Fastify binds by default.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pathspec

from kiln import nodescripts
from kiln.detect import (
    _NODE_SOURCES,
    ENV_FILES,
    NODE_EXCLUDE,
    Detected,
    _read,
    _sources,
    build_script,
    package_json,
    scripts_of,
    workspaces,
)
from kiln.detect_adonis import adonis
from kiln.detect_angular import angular
from kiln.detect_sites import served_site, static_build
from kiln.fixedport import JS_HOST_ENV, fixed_port
from kiln.nodestack import NODE_ENV, dependencies, node_stack
from kiln.runenv import SYSTEM_PATH

# Any of these among the dependencies: the app has a server of its own.
_SERVERS = (
    "express",
    "fastify",
    "koa",
    "@hapi/hapi",
    "next",
    "nuxt",
    "@nestjs/core",
    "@remix-run/serve",
    "@react-router/serve",  # React Router 7's framework mode (Remix's successor)
    "@sveltejs/kit",
    "@astrojs/node",
    "hono",
    "@hono/node-server",
    "socket.io",
)


def detect_node_stack(root: Path) -> Detected | None:
    """A Node stack kiln runs differently from `npm start`, or None."""
    package = package_json(root)
    if package is None:
        return None
    deps = dependencies(package)
    stacks = (
        ("next", _next),
        ("nuxt", _nuxt),
        ("@nestjs/core", _nest),
        ("@sveltejs/kit", _sveltekit),
        ("@astrojs/node", _astro),
        ("@builder.io/qwik-city", _qwik),
        ("@qwik.dev/router", _qwik),  # Qwik 2's name for it
        ("@angular/core", angular),
        ("@adonisjs/core", adonis),
    )
    for name, stack in stacks:
        if name in deps:
            return stack(root, package)
    if not any(server in deps for server in _SERVERS):
        return static_build(root, package, deps)
    return None


def detect_node_script(root: Path) -> Detected | None:
    """A lone server script and no package.json (nodejs.org's hello world)."""
    if (root / "package.json").is_file():
        return None
    for name in ("server.js", "app.js", "index.js", "server.mjs", "app.mjs", "index.mjs"):
        if (root / name).is_file() and re.search(r"\.listen\(", _read(root / name)):
            return Detected(
                kind="Node script",
                run=f"node {name}",
                why=[f"{name} calls .listen( and there is no package.json: run with node"],
                exclude=list(NODE_EXCLUDE),
                env=dict(NODE_ENV),
                grace="20s",
            )
    return None


def fastify_note(root: Path) -> str | None:
    """Fastify binds localhost unless told: say how to listen on $HOST:$PORT."""
    package = package_json(root)
    if package is None or "fastify" not in dependencies(package):
        return None
    start = str(scripts_of(package).get("start", ""))
    if re.search(r"\bfastify\s+start\b", start):
        return (
            "fastify-cli reads $PORT; give it the host too: 'fastify start -a $HOST …' "
            "(or FASTIFY_ADDRESS)"
        )
    if any(_TOLD.search(text) and JS_HOST_ENV.search(text) for text in _node_texts(root)):
        return None  # it is told (a new user's TypeScript server, noted all the same)
    return (
        "Fastify listens on localhost and port 3000 unless told: "
        "fastify.listen({ port: Number(process.env.PORT), host: process.env.HOST })"
    )


# listen({ port, host }) in either order: the host it is given is read from HOST
_TOLD = re.compile(r"\.listen\(\s*\{[^}]*\b(?:port\b[^}]*\bhost|host\b[^}]*\bport)\b")


def _node_texts(root: Path) -> list[str]:
    return [_read(path) for path in _sources(root, _NODE_SOURCES)]


def _next(root: Path, package: dict[str, object]) -> Detected:
    why = ["package.json depends on next: a Next.js app"]
    why.append("'next start' serves the build on $HOST:$PORT (-H, -p), run without npm")
    found = node_stack(
        "Next.js", "node_modules/.bin/next start -H $HOST -p $PORT", why, root, package, (".next",)
    )
    found.health_path = _next_health(root)
    if found.health_path:
        why.append(f"health: the API route {found.health_path}")
    return found


def _next_health(root: Path) -> str | None:
    """An API route named health/healthz/ping in pages/api or app/api."""
    for base in ("", "src/"):
        for name in ("health", "healthz", "ping"):
            for ext in ("js", "ts", "mjs"):
                if (root / f"{base}pages/api/{name}.{ext}").is_file() or (
                    root / f"{base}app/api/{name}/route.{ext}"
                ).is_file():
                    return f"/api/{name}"
    return None


def _nuxt(root: Path, package: dict[str, object]) -> Detected:
    why = ["package.json depends on nuxt: a Nuxt app"]
    why.append("its build is .output/server/index.mjs, which listens on $HOST:$PORT itself")
    return node_stack(
        "Nuxt", "node .output/server/index.mjs", why, root, package, (".output", ".nuxt")
    )


def _nest(root: Path, package: dict[str, object]) -> Detected:
    why = ["package.json depends on @nestjs/core: a NestJS app"]
    why.append("'nest build' compiles it to dist/main.js, run with node (as start:prod does)")
    found = node_stack("NestJS", "node dist/main.js", why, root, package, ("dist",))
    main = _read(root / "src" / "main.ts")
    if "process.env.PORT" not in main and fixed_port(main, js=True) is None:
        # a literal port gets init's warning instead; this is for a port from elsewhere
        found.notes.append("src/main.ts must call app.listen(process.env.PORT, process.env.HOST)")
    return found


def _sveltekit(root: Path, package: dict[str, object]) -> Detected:
    config = _read(root / "svelte.config.js") or _read(root / "svelte.config.ts")
    out = re.search(r"""\bout\s*:\s*['"]([\w./-]+)['"]""", config)
    build = out.group(1).strip("./") if out else "build"
    why = ["package.json depends on @sveltejs/kit: a SvelteKit app"]
    why.append(f"adapter-node builds it into {build}/, run with node: it reads $HOST and $PORT")
    found = node_stack("SvelteKit", f"node {build}", why, root, package, (build, ".svelte-kit"))
    # adapter-node's own settings: the scheme and client address kiln's balancer sends
    found.env |= {
        "PROTOCOL_HEADER": "x-forwarded-proto",
        "ADDRESS_HEADER": "x-forwarded-for",
        "XFF_DEPTH": "1",
    }
    why.append(
        "PROTOCOL_HEADER and ADDRESS_HEADER: the scheme and client address come from kiln's "
        "balancer (without them every form POST was refused as cross-site: 403)"
    )
    if "@sveltejs/adapter-node" not in dependencies(package):
        found.warnings.append(
            "svelte.config.js does not use @sveltejs/adapter-node, whose Node server kiln "
            "runs: npm i -D @sveltejs/adapter-node and use it in svelte.config.js"
        )
    return found


def _astro(root: Path, package: dict[str, object]) -> Detected:
    why = ["package.json depends on @astrojs/node: an Astro app rendered on demand"]
    why.append("its standalone server is dist/server/entry.mjs, which reads $HOST and $PORT")
    found = node_stack(
        "Astro", "node ./dist/server/entry.mjs", why, root, package, ("dist", ".astro")
    )
    config = "\n".join(_read(root / f"astro.config.{ext}") for ext in ("mjs", "ts", "js", "mts"))
    if re.search(r"""mode\s*:\s*['"]middleware['"]""", config):
        found.warnings.append(
            "astro.config uses the node adapter in middleware mode, which needs a server of "
            "your own: use mode: 'standalone', or set [app] run to your server"
        )
    found.notes.append(
        "Astro checks that form POSTs come from the site's origin: list the public domain "
        "in security.allowedDomains (astro.config) so that check and Astro.url use it"
    )
    return found


# Qwik City's adapters whose build is a Node server, in server/entry.NAME.js
_QWIK_SERVERS = ("node-server", "express", "fastify")


def _qwik(root: Path, package: dict[str, object]) -> Detected:
    """Qwik City runs as its adapter builds it: a Node server, or a static site."""
    deps = dependencies(package)
    name = "@qwik.dev/router" if "@qwik.dev/router" in deps else "@builder.io/qwik-city"
    serve = str(scripts_of(package).get("serve", "")).strip()
    given = re.fullmatch(r"node\s+(server/entry\.[\w-]+)", serve)
    adapter = next((a for a in _QWIK_SERVERS if (root / "adapters" / a).is_dir()), None)
    if given is None and adapter is None and (root / "adapters" / "static").is_dir():
        return served_site(root, package, name, "Qwik City", "dist")
    entry = given.group(1) if given else f"server/entry.{adapter or 'node-server'}"
    why = [f"package.json depends on {name}: a Qwik City app"]
    why.append(f"its Node adapter builds {entry}.js, run with node: it reads $PORT")
    why.append("Qwik City lists its server's packages (undici…) as devDependencies: they stay")
    found = node_stack(
        "Qwik City", f"node {entry}", why, root, package, ("dist", "server"), keep_dev=True
    )
    found.env["PROTOCOL_HEADER"] = "x-forwarded-proto"
    why.append(
        "PROTOCOL_HEADER: Qwik City refuses a form POST whose Origin is not the request's "
        "own, whose scheme (https) comes from kiln's balancer"
    )
    found.notes.append(
        "Qwik City takes the site's origin from the Host header; set ORIGIN in [env] "
        "(https://example.com) if the public one differs"
    )
    if given is None and adapter is None:
        found.warnings.append(
            "Qwik City has no adapter in adapters/, so its build makes no server: add the "
            "Node one ('npm run qwik add node-server') for kiln to run, or 'static' for a "
            "static site"
        )
    return found


def engine_warning(root: Path, installed: str | None) -> str | None:
    """package.json's ``engines.node`` asks for a newer Node than ``installed``
    (``node --version`` on this machine, which bakes and runs the instances): npm
    only warns (EBADENGINE, a line per package), and the app fails later."""
    package = package_json(root) or {}
    engines = package.get("engines")
    wanted = engines.get("node") if isinstance(engines, dict) else None
    if not isinstance(wanted, str) or installed is None:
        return None
    least = re.match(r"\s*(?:>=|\^|~|=)?\s*v?(\d+)", wanted)
    have = re.match(r"v?(\d+)", installed.strip())
    if least is None or have is None or int(have.group(1)) >= int(least.group(1)):
        return None
    return (
        f"package.json asks for node {wanted} (engines.node), and this machine's node is "
        f"{installed.strip()}: the bake and the instances run that one; install a newer "
        "Node here, or lower engines.node if the app runs on it"
    )


def node_warnings(root: Path, run: str) -> list[str]:
    """What kiln init says of any Node package run by ``run``: a Node too old for it,
    a dotenv file the image lacks, and a workspace member that should be deployed
    from its workspace's root."""
    warnings = []
    engine = engine_warning(root, node_version())
    if engine is not None:
        warnings.append(engine)
    warnings += bun_warnings(root)
    warnings += runner_warnings(root, run)
    warnings += file_server_warnings(root, run)
    pnpm = next((p for p in [root, *list(root.resolve().parents)[:4]] if _pnpm_workspace(p)), None)
    if pnpm is not None:
        where = "here" if pnpm == root else f"in {pnpm}"
        warnings.append(
            f"pnpm-workspace.yaml {where}: kiln init builds npm and yarn workspaces, not "
            "pnpm's (its members' packages are installed beside them, and a member installed "
            "alone cannot resolve workspace:* dependencies): list the members in package.json "
            "'workspaces' and use npm, or write [app] build and run yourself"
        )
    warnings += env_file_warnings(root, run)
    member_of = workspace_root(root)
    if member_of is not None:
        warnings.append(
            f"this package is a workspace of {member_of}: run kiln init there (its start "
            "script can run this one: npm start -w NAME). Installed alone, without the "
            "workspace's lockfile, its sibling packages would be fetched from the npm "
            "registry, where anyone may publish a package of their names"
        )
    return warnings


def env_file_warnings(root: Path, run: str) -> list[str]:
    """`node --env-file=.env` in what the bake or an instance runs: kiln leaves .env
    out of the image, and node exits at once ('node: .env: not found')."""
    package = package_json(root) or {}
    build = build_script(package)
    ran = nodescripts.commands(package, run)
    ran += nodescripts.commands(package, f"npm run {build}") if build else []
    said = []
    for command, name in nodescripts.env_files(ran):
        left_out = _LEFT_OUT.match_file(name.removeprefix("./"))
        if not left_out and (root / name).is_file():
            continue
        where = f"scripts.{command.script}" if command.script else "the run line"
        text = str(scripts_of(package).get(command.script, "")) if command.script else run
        why = "kiln leaves it out of the image" if left_out else "the app has no such file"
        fails = f" ('node: {name}: not found')" if command.program == "node" else ""
        said.append(
            f"{where} ('{text}') gives {command.program} --env-file {name}, and {why}: "
            f"it would fail at once{fails}. Move those settings "
            "into [env] and the secrets into [secrets], and drop the flag (or use Node 22's "
            "--env-file-if-exists)"
        )
    return list(dict.fromkeys(said))


_LEFT_OUT = pathspec.GitIgnoreSpec.from_lines(ENV_FILES)

# a command word: at the start, after a separator or `env` (cross-env too), past any
# VAR=value assignments before it
_BUN = re.compile(r"(?:^|[;&|(]\s*|\benv\s+)(?:\w+=\S*\s+)*(bunx?)(?=\s|$)")


def bun_warnings(root: Path) -> list[str]:
    """What kiln init says of a Bun project: its images have node and npm, not Bun."""
    package = package_json(root) or {}
    scripts = scripts_of(package)
    lock = next((n for n in ("bun.lock", "bun.lockb") if (root / n).is_file()), None)
    said = []
    for name in ("start", build_script(package)):
        command = scripts.get(name) if name else None
        if isinstance(command, str) and _BUN.search(command):
            said.append(
                f"scripts.{name} runs Bun ('{command}'), which the image does not have (kiln "
                "bakes Node apps with node and npm): it would fail with 'bun: not found'. Run "
                "the app with node (a start script such as 'node server.js', or [app] run), or "
                "install Bun in [app] build yourself"
            )
    others = ("package-lock.json", "npm-shrinkwrap.json", "yarn.lock", "pnpm-lock.yaml")
    if lock is not None and not any((root / other).is_file() for other in others):
        said.append(
            f"{lock} is Bun's lockfile, which npm does not read: 'npm install' resolves the "
            "versions afresh (commit a package-lock.json for repeatable builds)"
        )
    return said


# static file servers run by a start script, and the option that gives them a host
_FILE_SERVERS = {
    "serve": (("-l", "--listen"), "serve -l tcp://$HOST:$PORT DIR"),
    "http-server": (("-a",), "http-server DIR -a $HOST -p $PORT"),
}


def file_server_warnings(root: Path, run: str) -> list[str]:
    """`serve public` answers on every interface (a new user's instances were reachable
    on *:PORT, around the balancer): it reads $PORT, not $HOST."""
    package = package_json(root) or {}
    said = []
    for command in nodescripts.commands(package, run):
        known = _FILE_SERVERS.get(command.program)
        if known is None or any(w.startswith(known[0]) for w in command.words[1:]):
            continue
        where = f"scripts.{command.script}" if command.script else "the run line"
        text = scripts_of(package).get(command.script, "") if command.script else run
        said.append(
            f"{where} runs {command.program} ('{text}') with no host: it listens on every "
            f"interface, reachable around the load balancer; give it one: '{known[1]}'"
        )
    return said


def _pnpm_workspace(path: Path) -> bool:
    return (path / "pnpm-workspace.yaml").is_file()


def runner_warnings(root: Path, run: str) -> list[str]:
    """A script an instance runs that calls yarn or pnpm: the build runs them through
    npx, but an instance has node and npm only ('sh: 1: pnpm: not found', a new
    user's pnpm workspace whose start script was 'pnpm --filter api start')."""
    package = package_json(root) or {}
    said = []
    for command in nodescripts.commands(package, run):
        if (
            command.program in ("yarn", "pnpm")
            and command.script
            and shutil.which(command.program, path=SYSTEM_PATH) is None
        ):
            text = scripts_of(package).get(command.script, "")
            said.append(
                f"scripts.{command.script} runs {command.program} ('{text}'), which the "
                "instances do not have (the build runs it through npx): start the app with "
                "node or npm instead (e.g. 'node apps/api/server.js'), or set [app] run"
            )
    return list(dict.fromkeys(said))


def node_version() -> str | None:
    """``node --version`` of this machine, None without a working node."""
    node = shutil.which("node")
    if node is None:
        return None
    try:
        done = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def workspace_root(root: Path) -> Path | None:
    """The npm/yarn workspace ``root`` is a member of, if any (up to 4 levels up)."""
    for parent in list(root.resolve().parents)[:4]:
        package = package_json(parent)
        if package is None:
            continue
        for member in workspaces(package):
            if any(m.resolve() == root.resolve() for m in parent.glob(member.rstrip("/"))):
                return parent
    return None
