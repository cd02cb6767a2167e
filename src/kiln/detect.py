"""What kind of app a directory holds, and how to build and run it in production.

``kiln init`` writes what this finds, so the first deploy works as written:
a production server (gunicorn, uvicorn) installed into the image by the
build, listening on $HOST:$PORT, a health check on a path the app serves or
a TCP check. Every guess comes with the reason for it, printed to the user.
Detection reads files only; it never imports or runs the app.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pathspec

from kiln import nodescripts, pylocks, runenv
from kiln.config import HOST_PATTERN, BuildStep
from kiln.runenv import SYSTEM_PATH

# dotenv files that stay on the developer's machine: .env, and the *.local ones
# (Next.js, Vite, dotenv-flow: .env.local, .env.production.local…); .env.production
# and the like are often committed defaults a build reads, and are kept
ENV_FILES = [".env", ".env*.local"]
# (every kind's exclude gets ENV_FILES too: detect adds them)
PY_EXCLUDE = ["__pycache__/", "*.pyc", ".venv/", "venv/", "/deps/", "*.sqlite3"]
NODE_EXCLUDE = ["node_modules/", "npm-debug.log*"]
_NODE_SOURCES = (".js", ".mjs", ".cjs", ".ts")
PIP = "python3 -m pip install -q --target deps"
# threads: a sync worker serves one request at a time, so two of them behind a few
# slow requests left the health checks unanswered (a rolled-back deploy); the
# dev servers users try first (flask run, runserver) are threaded too
GUNICORN = "python3 -m gunicorn --bind $HOST:$PORT --workers 2 --threads 4 --access-logfile -"
UVICORN = "python3 -m uvicorn --host $HOST --port $PORT"
_SOURCE_LIMIT = 256 * 1024  # bigger files are not read for detection
_NOT_SOURCE = frozenset({"node_modules", "deps", "venv", ".venv", ".git", "__pycache__"})
# Servers whose clients must come back to the instance that opened their session
# (long-polling transports, in-process session state): [fleet] sticky = "cookie".
_STICKY_NPM = (
    "socket.io",
    "engine.io",
    "sockjs",
    "@nestjs/platform-socket.io",
    "@feathersjs/socketio",  # socket.io inside: its long-polls must reach one instance
)
# Node apps run as any other (`npm start`), under their framework's own server
_NAMED_NODE_SERVERS = (
    ("@react-router/serve", "React Router"),
    ("@remix-run/serve", "Remix"),
)
_STICKY_PYPI = ("python-socketio", "flask-socketio", "python-engineio")


@dataclass
class Detected:
    """An app's kind and the kiln.toml settings that deploy it; ``why`` says how we know."""

    kind: str
    run: str
    why: list[str] = field(default_factory=list)
    build: list[str | BuildStep] = field(default_factory=list)
    exclude: list[str] = field(default_factory=lambda: list(PY_EXCLUDE))
    writable: list[str] = field(default_factory=lambda: ["tmp/", "*.log"])
    env: dict[str, str] = field(default_factory=dict)
    health_path: str | None = None  # None: a TCP check
    health_host: str | None = None  # the Host health checks send, when the app needs one
    grace: str = "30s"
    release: str | None = None
    notes: list[str] = field(default_factory=list)
    sticky: str | None = None  # why each client must stay on one instance, if it must
    warnings: list[str] = field(default_factory=list)  # what will not work as the app stands
    run_source: str = "detected"  # or "Procfile": the app's own web process
    release_source: str | None = None  # "detected" or "Procfile" when there is a release
    # what kiln's Python run line imports (framework, server), given to _pip_build: the
    # build installs those the manifest lacks; a Procfile's web process may change them
    needed: list[str] = field(default_factory=list)


def detect(root: Path) -> Detected:
    """The first detector that recognises the app; a commented fallback otherwise."""
    # the stack modules build on this one's helpers, so they are imported here
    from kiln.detect_node import (
        detect_node_script,
        detect_node_stack,
        fastify_note,
        node_warnings,
    )
    from kiln.detect_python import detect_python_stack
    from kiln.fixedport import fixed_port_warnings
    from kiln.procfile import apply_procfile
    from kiln.pyversion import python_warning

    detectors: list[Callable[[Path], Detected | None]] = [_django, detect_python_stack]
    detectors += [_python_framework, detect_node_stack, _node, detect_node_script, _static]
    found = next((f for f in (d(root) for d in detectors) if f), None)
    found = found or _fallback(root)
    if "PYTHONPATH" in found.env and found.kind != "Django":
        _python_database(root, found)
    found.release_source = "detected" if found.release else None
    found.sticky = found.sticky or _sticky(root)
    if found.sticky:
        found.why.append(found.sticky)
    apply_procfile(root, found)
    if found.sticky:
        _one_process(found)  # after the Procfile: kiln's own gunicorn line only
    if found.kind == "unknown" and found.run_source != "Procfile":
        found.why.insert(0, "nothing recognised here: the run line fails the first deploy")
        found.warnings.append(UNKNOWN_RUN)
    if found.kind == "Node":
        note = fastify_note(root)
        found.notes += [note] if note else []
    found.warnings += fixed_port_warnings(root, found.run)
    if "PYTHONPATH" in found.env:  # a Python app, run by the hosts' python3
        wrong = python_warning(root, runenv.python_on(SYSTEM_PATH))
        found.warnings += [wrong] if wrong else []
    found.exclude += [p for p in ENV_FILES if p not in found.exclude]
    _env_files_note(root, found)
    found.warnings += _unbuilt_front_end(root, found)
    if (root / "package.json").is_file():
        found.warnings += node_warnings(root, found.run)
        database = _node_sqlite(root)
        if database is not None:
            found.warnings.append(sqlite_in_app(found.release, database))
    return found


def _unbuilt_front_end(root: Path, found: Detected) -> list[str]:
    """A Python app with a package.json whose build script kiln does not run: a new
    user's Django site bundled its JavaScript with esbuild into static/, the image
    had no bundle, and every page answered 500 (a missing manifest entry)."""
    if "PYTHONPATH" not in found.env or not (root / "package.json").is_file():
        return []
    package = package_json(root)
    script = build_script(package) if package is not None else None
    if script is None or package is None:
        return []
    text = scripts_of(package).get(script)
    return [
        f"package.json's {script} script ('{text}') is not run by the build: add a step "
        f'before the others, e.g. {{ run = "npm ci --include=dev && npm run {script}", '
        'inputs = ["package.json", "package-lock.json", "assets/**"], outputs = '
        '["static/dist"] } with its own inputs and outputs'
    ]


def _env_files_note(root: Path, found: Detected) -> None:
    """Say which dotenv files stay out of the image, and where their settings go."""
    spec = pathspec.GitIgnoreSpec.from_lines(ENV_FILES)
    try:
        names = sorted(p.name for p in root.iterdir() if p.is_file() and spec.match_file(p.name))
    except OSError:
        return
    if names:
        listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
        verb = "stays" if len(names) == 1 else "stay"
        found.notes.append(
            f"{listed} {verb} out of the image (local settings and secrets): give "
            "production its settings in [env] and its secrets in [secrets]"
        )


def _one_process(found: Detected) -> None:
    """Sessions held in a process need every request of a client in that process:
    gunicorn spreads connections over its workers with no affinity, so one worker
    (threaded, as Flask-SocketIO's docs run it), and instances for scale."""
    if found.run.startswith(GUNICORN):
        found.run = found.run.replace("--workers 2 --threads 4", "--workers 1 --threads 100", 1)
        found.why.append(
            "one gunicorn worker with 100 threads per instance: its workers would split a "
            "client's session between processes; scale with [fleet] size"
        )


def _sticky(root: Path) -> str | None:
    """Why the app needs session affinity: a session server among its dependencies,
    or sessions kept in the process's memory."""
    listed = set(_requirements(root))
    python = [name for name in _STICKY_PYPI if name in listed]
    npm = [name for name in _STICKY_NPM if name in _npm_dependencies(root)]
    if not python and not npm:
        return _memory_sessions(root)
    where = (
        f"{', '.join(npm)} in package.json"
        if npm
        else f"{', '.join(python)} in {_python_manifest(root)}"
    )
    return (
        f"{where}: each client's polling requests must reach the instance holding its "
        'session, so the load balancer keeps it there (sticky = "cookie")'
    )


# a module that makes express-session keep its sessions in a shared database
# (memorystore and session-file-store keep them per process or per host: not these)
_SESSION_STORE = re.compile(
    r"(redis|mongo|pg|postgres|mysql|dynamodb|memcache|knex|sequelize|typeorm|prisma"
    r"|firestore|datastore)"
)


def _session_store(name: str) -> bool:
    return bool(_SESSION_STORE.search(name)) and (
        name.startswith("connect-") or "session" in name or "store" in name
    )


def _memory_sessions(root: Path) -> str | None:
    """express-session given no store keeps every session in its MemoryStore: with
    two instances each request met the other's empty store, the session cookie was
    overwritten, and nobody stayed logged in (a new user's Express + EJS app)."""
    deps = _npm_dependencies(root)
    if "sails" in deps:
        return _sails_sessions(root)
    if "express-session" not in deps or any(_session_store(name) for name in deps):
        return None
    if any(re.search(r"\bstore\s*:", _read(f)) for f in _sources(root, _NODE_SOURCES)):
        return None
    return (
        "express-session in package.json, given no store: its MemoryStore keeps each "
        "session in one process, so the load balancer keeps each client on the instance "
        'holding it (sticky = "cookie"); a deploy still ends every session: give it a '
        "shared store (connect-redis, connect-pg-simple) to keep them"
    )


def _sails_sessions(root: Path) -> str | None:
    """Sails bundles express-session, in memory unless config/session.js (or the
    production environment's config) names an adapter: a new user's counter in
    req.session read 1 on every request through two instances."""
    session = js_code(_read(root / "config" / "session.js"))
    production = js_code(_read(root / "config" / "env" / "production.js"))
    block = re.search(r"\bsession\s*:\s*\{([^{}]*(?:\{[^{}]*\}[^{}]*)*)\}", production)
    for code in (session, block.group(1) if block else ""):
        if re.search(r"\badapter\s*:", code):
            return None
    return (
        "Sails keeps sessions in memory unless config/session.js names an adapter: each "
        "session lives in one process, so the load balancer keeps each client on the instance "
        'holding it (sticky = "cookie"); a deploy still ends every session: set '
        "sails.config.session.adapter (@sailshq/connect-redis) to keep them"
    )


def js_code(text: str) -> str:
    """JavaScript without its comments (Sails' generated config is mostly comments,
    ``* 1. Choose an adapter:`` among them; AdonisJS' start/env.ts has some too). A
    ``//`` inside a string (a URL) cuts the rest of its line: what is looked for
    here comes before it."""
    return re.sub(r"/\*.*?\*/|//[^\n]*", "", text, flags=re.DOTALL)


# Node's SQLite drivers, and a database file named relative to the app (or file: URLs)
_SQLITE_NPM = ("better-sqlite3", "sqlite3", "node-sqlite3-wasm", "sqlite", "@libsql/client")
_SQLITE_FILE = re.compile(r"""['"`](?:file:)?(?!/)(?:\./)?[\w./-]*\.(?:db|sqlite3?)['"`]""")
_PRISMA_SQLITE = re.compile(r'provider\s*=\s*"sqlite"[^}]*?\burl\s*=\s*"file:(?!/)', re.DOTALL)


def _node_sqlite(root: Path) -> str | None:
    """Where a Node app names a SQLite file inside its directory, if it does: each
    instance then writes its own copy (a new user's notes API answered with half of
    the notes, by instance)."""
    deps = _npm_dependencies(root)
    schema = root / "prisma" / "schema.prisma"
    if ("prisma" in deps or "@prisma/client" in deps) and _PRISMA_SQLITE.search(_read(schema)):
        return "the datasource url in prisma/schema.prisma"
    if not any(name in deps for name in _SQLITE_NPM):
        return None
    for path in _sources(root, _NODE_SOURCES):
        match = _SQLITE_FILE.search(_read(path))
        if match:
            return f"the database path in {path.relative_to(root)} ({match.group(0)})"
    return None


def _npm_dependencies(root: Path) -> dict[str, object]:
    manifest = root / "package.json"
    if not manifest.is_file():
        return {}
    try:
        package = json.loads(_read(manifest))
    except ValueError:
        return {}
    deps = package.get("dependencies") if isinstance(package, dict) else None
    return deps if isinstance(deps, dict) else {}


# Python ------------------------------------------------------------------------


def _requirements(root: Path, *, extras: bool = False) -> list[str]:
    """Lower-cased distribution names in requirements.txt (no includes, no URLs), else
    in the Pipenv or Poetry files, else in pyproject.toml's [project] dependencies.
    ``extras``: each extra asked for is listed too, as ``fastapi[standard]``."""
    path = root / "requirements.txt"
    source = _python_source(root)
    if source == "requirements.txt":
        lines = _read(path).splitlines()
    elif source in ("Pipfile.lock", "Pipfile", "poetry.lock", "Poetry"):
        lines = _locked_names(root, source)
    else:
        lines = _pyproject_dependencies(root) or []
    names = []
    for line in lines:
        match = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?", line)
        if match:
            name = re.sub(r"[-_.]+", "-", match.group(1)).lower()
            names.append(name)
            asked = (match.group(2) or "").split(",") if extras else []
            names += [f"{name}[{e.strip().lower()}]" for e in asked if e.strip()]
    return names


def _python_database(root: Path, found: Detected) -> None:
    """Migrations as the release (Alembic, Flask-Migrate), and a word on a SQLite file in
    the app directory. Without them a FastAPI or Flask app deployed green and answered
    500 ('no such table') on every page that reads its database."""
    listed = _requirements(root)
    target = re.search(r"""['"]?([\w.]+:[\w.]+(?:\(\))?)['"]?\s*$""", found.run)
    migrate = None
    if "flask-migrate" in listed and (root / "migrations" / "alembic.ini").is_file() and target:
        found.release = f"python3 -m flask --app {shlex.quote(target.group(1))} db upgrade"
        found.why.append("Flask-Migrate's migrations/: 'flask db upgrade' is the release")
        migrate = "flask db upgrade"
    elif "alembic" in listed and (root / "alembic.ini").is_file():
        found.release = "python3 -m alembic upgrade head"
        found.why.append("alembic.ini: 'alembic upgrade head' is the release")
        migrate = "alembic upgrade head"
    # a path relative to the app, or made from the app's own directory (Flask-AppBuilder's
    # "sqlite:///" + os.path.join(basedir, "app.db"), an f-string of BASE_DIR)
    here = (
        r"(?:os\.path\.join\(\s*|str\(\s*)?"
        r"(?:basedir|base_dir|BASE_DIR|APP_DIR|here\b|os\.path\.)"
    )
    sqlite = re.compile(rf"sqlite(?:\+\w+)?:///(?:(?!/)[\w.-]|[\"']\s*\+\s*{here}|\{{\s*{here})")
    if any(sqlite.search(_read(path)) for path in _sources(root, (".py", ".ini", ".toml"))):
        found.warnings.append(sqlite_in_app(migrate, "DATABASE_URL (or your setting)"))


def sqlite_in_app(migrate: str | None, setting: str) -> str:
    """One warning for a SQLite file in the app directory, whatever the framework: the
    release migrates a copy of the app directory that is then deleted, and each instance
    runs on its own. A Django project deployed green with it, every page that read the
    database a 500 ('no such table'), when init had only noted it."""
    migrated = (
        f"the release's '{migrate}' migrates a copy that is thrown away"
        if migrate
        else "a release that migrated it would migrate a copy that is thrown away"
    )
    return (
        f"the database is a SQLite file inside the app directory: {migrated}, and each "
        f"instance has its own empty database; point {setting} at a shared database "
        "through a [secrets] entry (a DATABASE_URL, or a path outside the app directory)"
    )


def _uses_websockets(root: Path) -> bool:
    """The app's Python source has WebSocket routes, and no manifest asks for
    uvicorn[standard] (which brings a WebSocket library)."""
    manifests = _read(root / "requirements.txt") + _read(root / "pyproject.toml")
    if re.search(r"uvicorn\s*\[[^\]]*standard", manifests):
        return False
    return any("websocket" in _read(path).lower() for path in _sources(root, (".py",)))


def _python_manifest(root: Path) -> str:
    """The file the app's Python dependencies are read from."""
    source = _python_source(root) or "pyproject.toml"
    return "pyproject.toml" if source in ("Poetry", "[project]", "uv.lock", "pdm.lock") else source


def _python_source(root: Path) -> str | None:
    """Where the app's dependencies come from, in the order that wins: a
    requirements.txt (teams export it on purpose), a lock (Pipfile.lock, poetry.lock, uv.lock,
    pdm.lock),
    a Pipfile, pyproject.toml's [project] table, Poetry's own table ("Poetry")."""
    for name in ("requirements.txt", "Pipfile.lock"):
        if (root / name).is_file():
            return name
    poetry = _poetry_table(root)
    if (root / "poetry.lock").is_file() and (poetry or _pyproject_dependencies(root)):
        return "poetry.lock"
    for lock in ("uv.lock", "pdm.lock"):
        if (root / lock).is_file() and _pyproject_dependencies(root) is not None:
            return lock
    if (root / "Pipfile").is_file():
        return "Pipfile"
    if _pyproject_dependencies(root) is not None:
        return "[project]"
    return "Poetry" if poetry else None


def _poetry_table(root: Path) -> dict[str, object]:
    """pyproject.toml's [tool.poetry.dependencies] (Poetry 1), empty without one."""
    try:
        project = tomllib.loads(_read(root / "pyproject.toml"))
    except tomllib.TOMLDecodeError:
        return {}
    deps = project.get("tool", {}).get("poetry", {}).get("dependencies")
    return deps if isinstance(deps, dict) else {}


def _locked_names(root: Path, source: str) -> list[str]:
    """The distributions a Pipenv or Poetry project names (the roots for Poetry)."""
    try:
        if source == "Pipfile.lock":
            return list(json.loads(_read(root / source)).get("default", {}))
        if source == "Pipfile":
            return list(tomllib.loads(_read(root / source)).get("packages", {}))
        roots, _ = pylocks.poetry_roots(tomllib.loads(_read(root / "pyproject.toml")))
    except (ValueError, AttributeError, TypeError):  # TOMLDecodeError, JSONDecodeError too
        return []  # the bake reads the file again, and fails on it
    return [name for name, *_ in roots]


def _pyproject_dependencies(root: Path) -> list[str] | None:
    """pyproject.toml's [project] dependencies (PEP 621), None without them."""
    path = root / "pyproject.toml"
    if not path.is_file():
        return None
    try:
        project = tomllib.loads(_read(path)).get("project", {})
    except tomllib.TOMLDecodeError:
        return None
    deps = project.get("dependencies") if isinstance(project, dict) else None
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        return None
    return deps


# pyproject.toml's [project] dependencies fed to pip at bake time, so that the
# image follows the file (pip has no "install only the dependencies" option)
# Through a file, not a pipe: /bin/sh has no pipefail, so a pyproject.toml that
# does not parse would have fed pip nothing and the bake would have succeeded
# with no dependencies, to fail at boot.
PYPROJECT_LIST = ".kiln-requirements.txt"
PYPROJECT_DEPS = (
    'python3 -c \'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))'
    f'["project"]["dependencies"], sep="\\n")\' > {PYPROJECT_LIST} && '
)


# distributions (and extras) that install a server, and what it needs, with them: kiln
# need not add it, nor say the app lacks it. From their metadata: each requires
# uvicorn[standard], which requires websockets; fastapi[standard] fastapi-cli too.
_UVICORN_STANDARD = ("uvicorn", "websockets")
_FASTAPI_STANDARD = (*_UVICORN_STANDARD, "fastapi-cli")
_BRINGS = {
    "python-fasthtml": _UVICORN_STANDARD,
    "uvicorn[standard]": _UVICORN_STANDARD,
    "fastapi[standard]": _FASTAPI_STANDARD,
    "fastapi[standard-no-fastapi-cloud-cli]": _FASTAPI_STANDARD,
    "fastapi[all]": _FASTAPI_STANDARD,
    "litestar[standard]": _UVICORN_STANDARD,
    "litestar[cli]": _UVICORN_STANDARD,
    "litestar[full]": _UVICORN_STANDARD,
    "channels[daphne]": ("daphne",),  # as Channels' tutorial installs it
}


# ASGI servers an app may list instead of uvicorn: each serves the app on $HOST:$PORT
# (checked against their --help: hypercorn 0.18, daphne 4.2, granian 2.8)
_ASGI_SERVERS = {
    "hypercorn": "python3 -m hypercorn --bind $HOST:$PORT",
    "daphne": "python3 -m daphne -b $HOST -p $PORT",
    "granian": "python3 -m granian --interface asgi --host $HOST --port $PORT",
}


def listed_asgi_server(root: Path) -> str | None:
    """The ASGI server the app lists (or a listed package brings), uvicorn first."""
    names = _requirements(root, extras=True)
    listed = {*names, *brought_with(names)}
    return next((s for s in ("uvicorn", *_ASGI_SERVERS) if s in listed), None)


def asgi_served(
    root: Path, target: str, why: list[str], *, factory: bool = False
) -> tuple[str, str]:
    """(run line, server) of an ASGI app at ``target`` (``module:app``; a function that
    builds it with ``factory``): the server the app lists, uvicorn when it lists none.
    Quart's hypercorn and Channels' daphne were replaced by an added uvicorn."""
    server = listed_asgi_server(root) or "uvicorn"
    if server == "daphne" and factory:
        server = "uvicorn"  # daphne calls no factory
    if server == "uvicorn":
        run = f"{UVICORN} {'--factory ' if factory else ''}{shlex.quote(target)}"
    elif server == "hypercorn" and factory:  # hypercorn evaluates 'module:make()'
        run = f"{_ASGI_SERVERS[server]} {shlex.quote(target + '()')}"
    else:
        given = "--factory " if factory else ""
        run = f"{_ASGI_SERVERS[server]} {given}{shlex.quote(target)}"
    if server != "uvicorn":
        why.append(
            f"{server} is in {_python_manifest(root)}, and uvicorn is not: the app's own "
            "server runs it"
        )
    return run, server


def brought_with(names: list[str]) -> dict[str, str]:
    """{distribution: the one of ``names`` that requires it} for the servers they bring;
    ``names`` as _requirements lists them with their extras."""
    return {dep: name for name in names for dep in _BRINGS.get(name, ())}


def _pip_build(
    root: Path, needed: list[str], why: list[str], *, wsgi: bool = False
) -> list[str | BuildStep]:
    """Install requirements.txt plus the server (and framework) it does not list.

    With a requirements.txt the step is cached by it: a code-only change
    re-bakes without running pip. ``wsgi``: uvicorn serves WSGI (no WebSocket).
    """
    listed = _requirements(root)
    brought = brought_with([*_requirements(root, extras=True), *needed])
    missing = [name for name in needed if name not in listed and name not in brought]
    for dep in sorted({d for d in needed if d in brought and d not in listed}):
        standard = ", which requires uvicorn[standard]" if dep in _UVICORN_STANDARD else ""
        why.append(f"{dep} comes with {brought[dep]}{standard}")
    # plain uvicorn answers a WebSocket upgrade with 404 ("No supported WebSocket library
    # detected"): when kiln adds uvicorn, and when the app lists it plainly (`uv add
    # uvicorn`) but has WebSocket routes
    has_ws = {"websockets", "wsproto"} & {*listed, *brought}
    serving = "uvicorn" in needed and not wsgi and not has_ws
    if serving and ("uvicorn" in missing or _uses_websockets(root)):
        missing.append("websockets")
    source = _python_source(root)
    parts = [PIP]
    inputs = [source] if source else []
    if source == "requirements.txt":
        parts.append("-r requirements.txt")
        why.append("requirements.txt: installed into deps/ at bake time, reused while unchanged")
    elif source == "[project]":
        inputs = ["pyproject.toml"]
        parts = [PYPROJECT_DEPS + PIP, f"-r {PYPROJECT_LIST}"]
        why.append(
            "pyproject.toml: its [project] dependencies installed into deps/ at bake time, "
            "reused while it is unchanged"
        )
    elif source is not None:
        read = "pyproject.toml" if source == "Poetry" else source
        with_project = ("poetry.lock", "uv.lock", "pdm.lock")
        inputs = ["pyproject.toml", source] if source in with_project else [read]
        inputs.append(LOCK_SCRIPT)  # a newer kiln's program re-runs the step
        parts = [lock_program(read) + PIP, f"-r {PYPROJECT_LIST}"]
        why.append(_LOCK_WHY[source])
        why += _poetry_why(root) if source == "Poetry" else []
    else:
        why.append("no requirements.txt: the build installs unpinned packages; pin them there")
        if (root / "pyproject.toml").is_file():
            why.append(
                "pyproject.toml lists no dependencies ([project] or [tool.poetry]): "
                "the build installs the server only"
            )
    if missing:
        parts.append(" ".join(missing))
        shown = _python_manifest(root) if source else "requirements.txt"
        why.append(f"{', '.join(missing)} not in {shown}: the build adds it")
    command = " ".join(parts)
    if source and source != "requirements.txt":
        command += f" && rm {PYPROJECT_LIST}"  # the list is no part of the image
    if source:
        return [BuildStep(run=command, inputs=inputs, outputs=["deps"])]
    return [command]


_LOCK_WHY = {
    "Pipfile.lock": "Pipfile.lock: its default packages installed into deps/ at their locked "
    "versions (never develop), read at bake time, reused while it is unchanged",
    "poetry.lock": "poetry.lock: the packages the main dependencies of pyproject.toml need, "
    "installed into deps/ at their locked versions (dev groups left out), read at bake time, "
    "reused while both files are unchanged",
    "uv.lock": "uv.lock: the packages the [project] dependencies of pyproject.toml need, "
    "installed into deps/ at their locked versions (dev groups left out), read at bake time, "
    "reused while both files are unchanged",
    "pdm.lock": "pdm.lock: the packages the [project] dependencies of pyproject.toml need, "
    "installed into deps/ at their locked versions (dev groups left out), read at bake time, "
    "reused while both files are unchanged",
    "Pipfile": "Pipfile: its [packages] installed into deps/ at bake time, NOT pinned: "
    "run pipenv lock and commit Pipfile.lock to pin them",
    "Poetry": "pyproject.toml: Poetry's [tool.poetry.dependencies] installed into deps/ at bake "
    "time (as PEP 508 ranges), NOT pinned: commit poetry.lock to pin them",
}


def _poetry_why(root: Path) -> list[str]:
    """What of Poetry's table pip cannot install as written, named for the user."""
    try:
        roots, unknown = pylocks.poetry_roots(tomllib.loads(_read(root / "pyproject.toml")))
    except tomllib.TOMLDecodeError:
        return []
    lines = []
    if unknown:
        lines.append(f"{', '.join(unknown)}: no pip equivalent for its constraint, unpinned")
    direct = [name for name, _, _, line in roots if " @ " in line or line.startswith((".", "/"))]
    if direct:
        lines.append(f"{', '.join(direct)}: from git, a URL or a path, as written, not pinned")
    return lines


# The program that reads a Pipenv, Poetry or uv file at bake time (kiln.pylocks, as it
# is): kiln init writes it beside kiln.toml, and the build step runs it by this name.
LOCK_SCRIPT = ".kiln-locks.py"


def lock_program(name: str) -> str:
    """The shell words that write the requirement lines of a Pipenv, Poetry, uv or PDM file
    to .kiln-requirements.txt at bake time, with the image python3 (kiln need not be
    installed where the build runs). Through a file: /bin/sh has no pipefail, and a
    file that does not parse must fail the step."""
    return f"python3 {LOCK_SCRIPT} {name} > {PYPROJECT_LIST} && "


def lock_script() -> str:
    """What kiln init writes to LOCK_SCRIPT: kiln.pylocks, under a header saying why."""
    head = (
        "# Written by `kiln init`: the build step in kiln.toml runs this program to read\n"
        "# the app's lock file at bake time. Keep it with kiln.toml (commit it); run\n"
        "# `kiln init --force` with a newer kiln to refresh it.\n"
    )
    return head + Path(pylocks.__file__).read_text()


def _python_env(src: bool = False) -> dict[str, str]:
    """``src``: the app's packages are under src/ (a src layout), which goes on the path
    since only the dependencies are installed, not the project itself. deps/bin leads
    PATH, as on Heroku: a release line `flask db upgrade` or `alembic upgrade head`
    (and `kiln run -- alembic …`) finds the command the build installed."""
    return {
        "PYTHONPATH": "src:deps" if src else "deps",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PATH": f"deps/bin:{SYSTEM_PATH}",
    }


def _django(root: Path) -> Detected | None:
    manage = root / "manage.py"
    if not manage.is_file():
        return None
    match = re.search(r"DJANGO_SETTINGS_MODULE['\"],\s*['\"]([\w.]+)['\"]", _read(manage))
    if match is None:
        return None
    settings = match.group(1)
    found = _django_project(root, settings)
    if found is None:
        return None
    base, package = found
    package_dir = base / package.replace(".", "/")
    src = base != root
    why = [f"manage.py sets DJANGO_SETTINGS_MODULE={settings}: a Django project"]
    if src:
        why.append(f"src layout: src/ goes on PYTHONPATH, so {package} imports")
    settings_files, assigned = _django_settings(base, settings)
    settings_text = "\n".join(_read(f) for f in settings_files)
    channels = "ASGI_APPLICATION" in settings_text and (package_dir / "asgi.py").is_file()
    if (package_dir / "wsgi.py").is_file() and not channels:
        run = f"{GUNICORN} {package}.wsgi:application"
        why.append(f"{package}/wsgi.py: served by gunicorn")
        server = "gunicorn"
    elif (package_dir / "asgi.py").is_file():
        reason = "ASGI_APPLICATION is set (Channels: WebSockets)" if channels else "served"
        said: list[str] = []
        run, server = asgi_served(root, f"{package}.asgi:application", said)
        why += [f"{package}/asgi.py: {reason}, by {server}", *said]
    else:
        return None
    build = _pip_build(root, ["django", server], why)
    notes = []
    static_root = re.search(r"^STATIC_ROOT\s*=.*?['\"]([\w.-]+)/?['\"]\)?\s*$", settings_text, re.M)
    if static_root:
        depends = next((s.inputs for s in build if isinstance(s, BuildStep)), [])
        shown = [f.relative_to(root).as_posix() for f in _django_settings_files(base, settings)]
        build.append(
            BuildStep(
                run="python3 manage.py collectstatic --noinput",
                # every static/ directory, however deep (apps/polls/static was missed by
                # */static, and a stale stylesheet shipped), and what installs packages
                inputs=[*depends, *shown, "**/static"],
                outputs=[static_root.group(1)],
            )
        )
        why.append(
            f"STATIC_ROOT is {static_root.group(1)}/: static files are collected at bake time, "
            "again only when dependencies, settings or a static/ directory change"
        )
    elif "STATIC_ROOT" in settings_text:
        build.append("python3 manage.py collectstatic --noinput")
        why.append("STATIC_ROOT is set: static files are collected at bake time")
    else:
        notes.append("set STATIC_ROOT (and serve it, e.g. with whitenoise) to ship static files")
    warnings = _django_debug(base, settings, assigned)
    if "STATIC_ROOT" in settings_text and not _static_served(root, settings_text):
        warnings.append(
            "STATIC_ROOT is collected at bake time, but nothing serves it: Django serves "
            "static files only with DEBUG on, and gunicorn and uvicorn never do, so every "
            "/static/ URL answers 404 (the admin unstyled); add whitenoise to the "
            "requirements and 'whitenoise.middleware.WhiteNoiseMiddleware' after "
            "SecurityMiddleware, or put them on a CDN (STORAGES, an absolute STATIC_URL)"
        )
    if "sqlite3" in settings_text:
        warnings.append(sqlite_in_app("manage.py migrate", "DATABASES"))
    if re.search(r"^MEDIA_ROOT\s*=.*BASE_DIR", settings_text, re.MULTILINE):
        notes.append(
            "MEDIA_ROOT is inside the app directory: an upload lands on one instance and is "
            "gone at the next deploy; keep uploads in shared storage (django-storages)"
        )
    health_host = _allowed_host(assigned)
    if health_host is not None:
        why.append(f"ALLOWED_HOSTS lists {health_host}: health checks send it as their Host")
    return Detected(
        kind="Django",
        run=run,
        why=why,
        build=build,
        env=_python_env(src),
        health_path=_route(root, ("/health", "/healthz")),
        health_host=health_host,
        release="python3 manage.py migrate --noinput",
        notes=notes,
        warnings=warnings,
        needed=["django", server],
    )


def _static_served(root: Path, settings_text: str) -> bool:
    """Whether something serves STATIC_ROOT in production: whitenoise (or dj-static),
    or a storage backend / absolute STATIC_URL that puts the files elsewhere.
    (A new user's Django REST framework API: its browsable pages and the admin had
    no CSS.)"""
    listed = set(_requirements(root))
    if {"whitenoise", "dj-static"} & listed or "whitenoise" in settings_text.lower():
        return True
    if re.search(r"^STATIC_URL\s*=\s*[^#\n]*['\"](?:https?:)?//", settings_text, re.M):
        return True
    return bool(re.search(r"storages\.backends|STATICFILES_STORAGE", settings_text))


def _django_debug(base: Path, settings: str, assigned: dict[str, ast.expr | None]) -> list[str]:
    """DEBUG = True in the settings in use (wagtail start's settings.dev, say): every
    error is then a page of the code and settings, served to anyone. DEBUG off with
    ALLOWED_HOSTS empty: Django answers 400 to every request. The production module
    suggested instead is read too: Wagtail's leaves ALLOWED_HOSTS empty."""
    node = assigned.get("DEBUG")
    if not (isinstance(node, ast.Constant) and node.value is True):
        return [_NO_HOSTS.format(settings=settings)] if _no_hosts(assigned) else []
    package = settings.rpartition(".")[0]
    where = base / package.replace(".", "/")
    production = next((n for n in ("production", "prod") if (where / f"{n}.py").is_file()), None)
    if production is not None:
        module = f"{package}.{production}"
        use = f'[env] DJANGO_SETTINGS_MODULE = "{module}"'
        hosts = _django_settings(base, module)[1]  # DEBUG off there: it must list them
    else:
        use = "DEBUG from the environment (DEBUG = os.environ.get('DEBUG') == '1')"
        hosts = assigned
    if _no_hosts(hosts):
        its = "its " if production is not None else ""
        use += f", and list the public host names in {its}ALLOWED_HOSTS ({_HOSTS_FROM_ENV})"
    return [
        f"{settings} sets DEBUG = True: every error page (the code, the settings) is served "
        f"to anyone; use {use}"
    ]


_HOSTS_FROM_ENV = (
    "from the environment: ALLOWED_HOSTS = os.environ['ALLOWED_HOSTS'].split(','), "
    "with an [env] ALLOWED_HOSTS entry"
)
_NO_HOSTS = (
    "{settings} leaves ALLOWED_HOSTS empty: with DEBUG off, Django answers 400 (Bad "
    f"Request) to every request; list the public host names in it ({_HOSTS_FROM_ENV})"
)


def _no_hosts(assigned: dict[str, ast.expr | None]) -> bool:
    """ALLOWED_HOSTS is certainly empty: never assigned (nor possibly by a module kiln
    cannot read), or assigned [] or () for certain."""
    if "ALLOWED_HOSTS" not in assigned:
        return UNSEEN not in assigned
    node = assigned["ALLOWED_HOSTS"]
    return isinstance(node, ast.List | ast.Tuple) and not node.elts


def _allowed_host(assigned: dict[str, ast.expr | None]) -> str | None:
    """A name Django answers when ALLOWED_HOSTS is a literal list of public names only:
    it answers 400 to a check sent with the instance's address as its Host (a deploy
    of such a project rolled back, every check 400). Only string literals are read:
    ``os.getenv("DOMAIN")`` or an f-string is no host name."""
    node = assigned.get("ALLOWED_HOSTS")
    try:
        hosts = ast.literal_eval(node) if node is not None else None
    except ValueError:  # computed: from the environment, a function, …
        return None
    if not isinstance(hosts, list | tuple) or not all(isinstance(h, str) for h in hosts):
        return None
    if not hosts or {"*", "127.0.0.1", "localhost", ".localhost", "[::1]"} & set(hosts):
        return None
    host = str(hosts[0]).lstrip(".")  # ".example.com" is example.com and its subdomains
    return host if re.fullmatch(HOST_PATTERN, host) else None


def _django_project(root: Path, settings: str) -> tuple[Path, str] | None:
    """(where imports start, the package with wsgi.py or asgi.py) for ``settings``.

    The settings module's package, or one above it: ``mysite.settings`` is in
    ``mysite``, a split ``mysite.settings.production`` in ``mysite`` too. At the
    top, or under src/ (manage.py at the top, the project in a src layout).
    """
    parts = settings.split(".")[:-1]
    for base in (root, root / "src"):
        for end in range(len(parts), 0, -1):
            package = ".".join(parts[:end])
            directory = base / package.replace(".", "/")
            if (directory / "wsgi.py").is_file() or (directory / "asgi.py").is_file():
                return base, package
    return None


def _django_settings_files(base: Path, settings: str) -> list[Path]:
    """The settings module's source: its file, or every module of a settings package
    (``settings/__init__.py`` importing ``base.py``), or of the package a split
    ``settings.production`` is in."""
    path = base / settings.replace(".", "/")
    if path.with_suffix(".py").is_file():
        module = path.with_suffix(".py")
        if module.parent.name == "settings" or (module.parent / "base.py").is_file():
            return sorted(module.parent.glob("*.py"))  # split: base.py holds the rest
        return [module]
    if (path / "__init__.py").is_file():
        return sorted(path.glob("*.py"))
    return []


# in what _django_settings returns: a star import kiln could not read ("*" is no name)
UNSEEN = "*"


def _django_settings(base: Path, settings: str) -> tuple[list[Path], dict[str, ast.expr | None]]:
    """The settings modules Django runs for ``settings``, and the value each top-level
    name ends with, as Python runs them: a star import (``from .base import *``) takes
    effect where it stands, so a later assignment wins over it. A name assigned under
    an ``if`` depends on the run: its value is None. Siblings that are not imported
    (``staging.py`` beside the ``production.py`` in use) are not read. A star import of
    another package's module, which kiln cannot read, is recorded as UNSEEN; one of the
    app's own that does not exist (``from .local import *`` in a try) set nothing."""
    files: list[Path] = []
    assigned: dict[str, ast.expr | None] = {}

    def run(module: str, certain: bool) -> None:
        path = base / module.replace(".", "/")
        path = path / "__init__.py" if (path / "__init__.py").is_file() else path.with_suffix(".py")
        top = module.partition(".")[0]
        if not path.is_file() and not (base / top).is_dir() and not (base / f"{top}.py").is_file():
            assigned[UNSEEN] = None  # another package's settings: any name may come from it
        if path in files or not path.is_file():
            return
        files.append(path)
        try:
            tree = ast.parse(_read(path))
        except (SyntaxError, ValueError):
            return
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        statements(tree.body, package, certain)

    def statements(body: list[ast.stmt], package: str, certain: bool) -> None:
        for node in body:
            if isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names):
                parts = package.split(".")
                start = parts[: len(parts) - node.level + 1] if node.level else []
                run(".".join([*start, *([node.module] if node.module else [])]), certain)
            elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                plain = certain and not isinstance(node, ast.AugAssign)
                for target in targets:
                    if isinstance(target, ast.Name):
                        assigned[target.id] = node.value if plain else None
            elif isinstance(node, ast.Try):  # try: from .local import * / except ImportError
                statements(node.body, package, certain)
            elif isinstance(node, ast.If):
                statements(node.body + node.orelse, package, certain=False)

    run(settings, certain=True)
    return files, assigned


_FRAMEWORKS = (
    # (kind, regex of the app object, server, framework distribution)
    ("FastAPI", r"^(\w+)\s*(?::[^=]+)?=\s*(?:fastapi\.)?FastAPI\(", "uvicorn", "fastapi"),
    ("Starlette", r"^(\w+)\s*(?::[^=]+)?=\s*(?:\w+\.)?Starlette\(", "uvicorn", "starlette"),
    ("Flask", r"^(\w+)\s*(?::[^=]+)?=\s*(?:flask\.)?Flask\(", "gunicorn", "flask"),
    ("Flask", r"^def (create_app)\(", "gunicorn", "flask"),
    ("WSGI", r"^def (application)\(\s*environ\s*,\s*start_response", "gunicorn", None),
    ("WSGI", r"^(application)\s*=", "gunicorn", None),
    ("ASGI", r"^(application|app)\s*=", "uvicorn", None),
)
_MODULES = ("app.py", "main.py", "wsgi.py", "asgi.py", "server.py", "application.py", "api.py")
# directories that hold a package but never the app it serves
_NOT_APP = frozenset({"tests", "test", "testing", "docs", "examples", "scripts", "migrations"})


def _python_framework(root: Path) -> Detected | None:
    for path in _app_modules(root):
        text = _read(path)
        for kind, pattern, server, framework in _FRAMEWORKS:
            if pattern.endswith("=") and path.name != f"{kind.lower()}.py":
                continue  # 'application = …' means WSGI in wsgi.py, ASGI in asgi.py
            match = re.search(pattern, text, re.MULTILINE)
            if match is None:
                continue
            if match.group(1) == "create_app" and kind == "Flask":
                if not re.search(r"^\s*(?:from|import)\s+flask\b", text, re.MULTILINE):
                    continue  # another framework's factory (kiln.detect_python's)
                made = _made_by_factory(root, path)
                if made is not None:  # it needs arguments a module passes it
                    path, match = made
            called = kind == "Flask" and match.group(1) == "create_app"
            target = f"{module_name(root, path)}:{match.group(1)}" + ("()" if called else "")
            shown = path.relative_to(root).as_posix()
            why = [f"{shown} defines {match.group(0).strip().rstrip('(')}…: a {kind} app"]
            if server == "uvicorn":
                said: list[str] = []
                run, server = asgi_served(root, target, said)
                why += [f"served by {server} on $HOST:$PORT", *said]
            else:  # quoted: /bin/sh runs it, where "create_app()" is a syntax error
                run = f"{GUNICORN} {shlex.quote(target)}"
                why.append(f"served by {server} on $HOST:$PORT")
            needed = [n for n in (framework, server) if n is not None]
            return python_detected(kind, run, root, path, why, needed)
    return None


def python_detected(
    kind: str, run: str, root: Path, path: Path, why: list[str], needed: list[str]
) -> Detected:
    """A Python app served from module ``path`` by ``run``; ``needed``: the packages
    the server line imports, installed when the requirements do not list them."""
    src = import_base(root, path) != root
    if src:
        why.append("src layout: src/ goes on PYTHONPATH")
    return Detected(
        kind=kind,
        run=run,
        why=why,
        build=_pip_build(root, needed, why, wsgi="--interface wsgi" in run),
        env=_python_env(src),
        health_path=_route(root, ("/health", "/healthz", "/ping")),
        grace="20s",
        needed=needed,
    )


def import_base(root: Path, path: Path) -> Path:
    """Where imports of ``path`` start: src/ in a src layout, the top otherwise (and
    when src/ is itself a package: ``src.main:app``, whose relative imports work)."""
    src = root / "src"
    return src if path.is_relative_to(src) and not (src / "__init__.py").is_file() else root


def module_name(root: Path, path: Path) -> str:
    """The dotted module a server imports ``path`` as."""
    parts = path.relative_to(import_base(root, path)).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _made_by_factory(root: Path, factory: Path) -> tuple[Path, re.Match[str]] | None:
    """(module, match of ``X = create_app(``) when ``factory``'s create_app needs
    arguments and a top-level module calls it with them (Flasky's ``flasky.py``:
    ``app = create_app(os.getenv("FLASK_CONFIG") or "default")``); gunicorn then
    imports that module's app, where ``create_app()`` failed for the missing one."""
    define = re.search(r"^def create_app\(([^)]*)\)", _read(factory), re.MULTILINE)
    params = define.group(1) if define else ""
    required = [p for p in params.split(",") if p.strip() and "=" not in p and "*" not in p]
    if not required:
        return None
    for path in sorted(root.glob("*.py")):
        found = re.search(r"^(\w+)\s*=\s*create_app\(", _read(path), re.MULTILINE)
        if found is not None:
            return path, found
    return None


def _app_modules(root: Path) -> list[Path]:
    """Modules that may define the app, likeliest first, each once: the top level's,
    then a package's (``app/main.py`` as in FastAPI's larger layouts, a Flask factory
    in ``flaskr/__init__.py``), then those of a src layout."""
    found = [root / name for name in _MODULES] + sorted(root.glob("*.py"))
    for base in (root, root / "src"):
        for package in _packages(base):
            found += [package / name for name in (*_MODULES, "__init__.py")]
    return [path for n, path in enumerate(found) if path.is_file() and path not in found[:n]]


def _packages(base: Path) -> list[Path]:
    """The importable packages directly in ``base`` that may be the app's."""
    if not base.is_dir():
        return []
    return sorted(
        path
        for path in base.iterdir()
        if path.name.isidentifier()
        and path.name not in _NOT_APP
        and path.name not in _NOT_SOURCE
        and (path / "__init__.py").is_file()
    )


def _route(root: Path, paths: tuple[str, ...], suffixes: tuple[str, ...] = (".py",)) -> str | None:
    """A health route the source defines: '/health' in a route decorator, urls.py or
    an express ``app.get('/health', ...)``; installed packages are not the app's."""
    for source in _sources(root, suffixes):
        text = _read(source)
        for path in paths:
            if re.search(rf"""["']{re.escape(path)}/?["']""", text) or (
                re.search(rf"""path\(\s*["']{re.escape(path[1:])}/?["']""", text)
            ):
                return path
    return None


def _sources(root: Path, suffixes: tuple[str, ...], limit: int = 200) -> list[Path]:
    """The app's own source files, never descending into installed packages."""
    found: list[Path] = []
    for directory, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _NOT_SOURCE)
        found += [Path(directory, f) for f in sorted(files) if f.endswith(suffixes)]
        if len(found) >= limit:
            break
    return sorted(found)[:limit]


# Node --------------------------------------------------------------------------


def package_json(root: Path) -> dict[str, object] | None:
    """package.json as a dict ({} when unreadable), None without one."""
    manifest = root / "package.json"
    if not manifest.is_file():
        return None
    try:
        package = json.loads(_read(manifest))
    except ValueError:
        package = {}
    return package if isinstance(package, dict) else {}


def scripts_of(package: dict[str, object]) -> dict[str, object]:
    raw_scripts = package.get("scripts")
    return raw_scripts if isinstance(raw_scripts, dict) else {}


def node_build(
    root: Path,
    package: dict[str, object],
    why: list[str],
    keep_dev: bool = False,
    script: str | None = None,
    first: Sequence[str | nodescripts.Command] = (),
) -> list[str | BuildStep]:
    """Install (cached by package.json and the lockfile), build, prune: the bake's steps.
    ``keep_dev``: the app runs a devDependency, so the image keeps them all.
    ``script``: the script that builds, when not build_script's (VitePress' docs:build).
    ``first``: what the start script compiled with before starting the app (scripts,
    commands), run after the build script unless it runs them."""
    tool = node_tool(root, package, why)
    inputs = ["package.json", tool.lock] if tool.lock else ["package.json"]
    script = script or build_script(package)
    scripts = [script] if script else []
    ran = nodescripts.commands(package, f"npm run {script}") if script else []
    done = {c.script for c in ran}
    scripts += [s for s in first if isinstance(s, str) and s not in done]
    commands = [nodescripts.local_bin(shlex.join(c.words)) for c in first if not isinstance(c, str)]
    runs = [tool.run(s) for s in scripts] + commands
    building = bool(runs)
    members = workspaces(package)
    if members:  # npm and yarn workspaces: one install at the root makes them all
        inputs += [f"{m.rstrip('/')}/package.json" for m in members]
        why.append(f"workspaces {', '.join(members)}: installed together, from the root")
    # npm makes no node_modules/ for a package without dependencies, so a step
    # promising one would fail every bake of a plain `node:http` app.
    installing = (
        bool(members)
        or _declares(package, ("dependencies", "optionalDependencies"))
        or ((building or keep_dev) and _declares(package, ("devDependencies",)))
    )
    if not installing:
        why.append("no dependencies in package.json: nothing to install")
        return list(runs)
    why.append(
        f"node_modules/ is made by the build and reused while {' and '.join(inputs)} "
        f"{'is' if len(inputs) == 1 else 'are'} unchanged"
    )
    if building:
        after = "kept: the app runs one" if keep_dev else "pruned after"
        shown = [f"scripts.{s}" for s in scripts] + [f"'{c}'" for c in commands]
        why.append(f"{', '.join(shown)}: run at bake time (with dev dependencies, {after})")
        # [env] NODE_ENV=production reaches the build, and npm, yarn and pnpm
        # would leave out the devDependencies (tsc, vite, nest) the build runs
        step = BuildStep(run=tool.install_dev, inputs=inputs, outputs=["node_modules"])
        prune = [tool.prune] if tool.prune and not keep_dev else []
        return [step, *runs, *prune]
    install = tool.install_dev if keep_dev else tool.install_prod
    return [BuildStep(run=install, inputs=inputs, outputs=["node_modules"])]


# where a Node build writes what a start script runs (tsc's dist/, Feathers' lib/)
BUILT_OUTPUT = r"(?:\./)?(?:dist|build|lib)/"


def build_script(package: dict[str, object]) -> str | None:
    """The script that builds the app: ``build``, or ``compile`` (Feathers and
    LoopBack compile TypeScript with it; their start script runs the output)."""
    scripts = scripts_of(package)
    return next((name for name in ("build", "compile") if name in scripts), None)


def workspaces(package: dict[str, object]) -> list[str]:
    """The workspace patterns package.json declares (npm's list, or yarn's packages)."""
    declared = package.get("workspaces")
    if isinstance(declared, dict):
        declared = declared.get("packages")
    return [str(w) for w in declared if isinstance(w, str)] if isinstance(declared, list) else []


@dataclass(frozen=True)
class NodeTool:
    """How the project's own package manager installs, builds and prunes."""

    lock: str | None
    install_dev: str  # exactly the lockfile's versions when there is one, devDependencies too
    install_prod: str  # the same, without them
    runner: str  # what runs a script: `npm run`
    prune: str | None  # after a build: devDependencies removed (None: they stay)

    def run(self, script: str) -> str:
        """The command that runs ``script`` (a name from package.json: quoted)."""
        return f"{self.runner} {shlex.quote(script)}"


def node_tool(root: Path, package: dict[str, object], why: list[str]) -> NodeTool:
    """npm, or yarn / pnpm when their lockfile is the project's (run with npx, pinned).

    npm ignores a pnpm-lock.yaml, takes a yarn.lock only as a hint (and rewrites
    it to what it resolved), so an image built with it would not hold the locked
    versions; and the lockfile must be an input of the cached install step.
    """
    manager = package.get("packageManager")
    wanted = manager.split("+", 1)[0] if isinstance(manager, str) else ""
    if not re.fullmatch(r"[\w.@-]*", wanted):  # it goes into a shell command: a name@version
        wanted = ""
    npm_lock = next(
        (n for n in ("package-lock.json", "npm-shrinkwrap.json") if (root / n).is_file()), None
    )
    if npm_lock is None and (root / "pnpm-lock.yaml").is_file():
        pnpm = wanted if wanted.startswith("pnpm@") else f"pnpm@{_pnpm_major(root)}"
        why.append(f"pnpm-lock.yaml: '{pnpm} install --frozen-lockfile' (pnpm run by npx)")
        tool = f"npx --yes {pnpm}"
        install = f"{tool} install --frozen-lockfile"
        return NodeTool(
            "pnpm-lock.yaml",
            f"{install} --prod=false",
            f"{install} --prod",
            f"{tool} run",
            f"{tool} prune --prod",
        )
    if npm_lock is None and (root / "yarn.lock").is_file():
        berry = "__metadata:" in _read(root / "yarn.lock")[:4096] or bool(
            re.match(r"yarn@[2-9]", wanted)
        )
        if not berry:
            yarn = wanted if wanted.startswith("yarn@1.") else "yarn@1"
            why.append(f"yarn.lock: '{yarn} install --frozen-lockfile' (yarn run by npx)")
            tool = f"npx --yes {yarn}"
            install = f"{tool} install --frozen-lockfile --non-interactive"
            return NodeTool(
                "yarn.lock",
                f"{install} --production=false",
                f"{install} --production",
                f"{tool} run",
                f"{install} --production",
            )
        return _berry(root, wanted, why)
    if npm_lock:
        why.append(f"{npm_lock}: 'npm ci' installs exactly the locked versions")
        install = "npm ci"
    else:
        if not (root / "yarn.lock").is_file():
            why.append(
                "no package-lock.json: 'npm install' (commit a lockfile for repeatable builds)"
            )
        install = "npm install --no-audit --no-fund"
    runner, prune = "npm run", "npm prune --omit=dev"
    return NodeTool(npm_lock, f"{install} --include=dev", f"{install} --omit=dev", runner, prune)


# Yarn 2+ installs into node_modules/ (its Plug'n'Play default needs every command
# that runs the app to load .pnp.cjs); the lockfile is the same either way
BERRY_ENV = "YARN_NODE_LINKER=node-modules YARN_ENABLE_TELEMETRY=0"


def _berry(root: Path, wanted: str, why: list[str]) -> NodeTool:
    """Yarn 2+ (a yarn.lock with ``__metadata:``): the release the project commits
    (.yarnrc.yml's yarnPath), else the version ``packageManager`` names, else the
    major that writes the lockfile's version, from the npm registry."""
    rc = _read(root / ".yarnrc.yml")
    path = re.search(r"^yarnPath:\s*[\"']?([^\"'\s#]+)", rc, re.MULTILINE)
    if wanted.startswith("yarn@"):
        version = wanted.removeprefix("yarn@")
    else:
        lock = _read(root / "yarn.lock")
        found = re.search(r"^__metadata:\s*\n\s+version:\s*(\d+)", lock, re.MULTILINE)
        lockfile = int(found.group(1)) if found else 8
        version = "4" if lockfile >= 8 else "3" if lockfile >= 6 else "2"
    if path and (root / path.group(1)).is_file():
        # its name says its version (yarn-4.1.0.cjs), or not (`yarn set version berry`)
        named = path.group(1)
        release = re.search(r"yarn-(\d[\w.-]*?)\.c?js$", named)
        version = release.group(1) if release else version
        yarn = f"node {shlex.quote(named)}"
    else:
        yarn, named = f"npx --yes --package @yarnpkg/cli-dist@{version} yarn", f"yarn {version}"
    leading = re.match(r"\d+", version)
    major = int(leading.group(0)) if leading else 4
    tool = f"{BERRY_ENV} {yarn}"
    install = f"{tool} install --immutable"
    why.append(
        f"yarn.lock is Yarn 2+'s: '{named} install --immutable' into node_modules/ "
        "(nodeLinker node-modules, so node and npm start find the packages)"
    )
    if major < 4:  # `workspaces focus` is Yarn 4's own; 2 and 3 need a plugin for it
        why.append("Yarn 2 and 3 have no production install without a plugin: devDependencies stay")
        return NodeTool("yarn.lock", install, install, f"{tool} run", None)
    focus = f"{tool} workspaces focus --all --production"
    return NodeTool("yarn.lock", install, f"{install} && {focus}", f"{tool} run", focus)


def _pnpm_major(root: Path) -> int:
    """The pnpm that writes this lockfile's version: 9.0 → 9, 6.x → 8, 5.x → 7."""
    match = re.search(
        r"^lockfileVersion:\s*'?(\d+)", _read(root / "pnpm-lock.yaml")[:512], re.MULTILINE
    )
    major = int(match.group(1)) if match else 9
    return 9 if major >= 9 else 8 if major == 6 else 7


def _node(root: Path) -> Detected | None:
    package = package_json(root)
    if package is None:
        return None
    scripts = scripts_of(package)
    start = str(scripts.get("start", "")) if scripts else ""
    main = str(package["main"]) if isinstance(package.get("main"), str) else None
    # `npm run build:ts && fastify start dist/app.js`: compiled at bake, not at each start
    first, rest = nodescripts.compiled_first(package, start) or ([], start)
    direct = re.fullmatch(r"node\s+([\w./-]+)", rest.strip())
    # a file the build makes (tsc's dist/index.js) need not exist here: the bake makes it
    built = direct and (build_script(package) or first) and re.match(BUILT_OUTPUT, direct[1])
    if direct and ((root / direct.group(1)).is_file() or built):
        run = f"node {direct.group(1)}"
        said = f"scripts.start is '{start}': run with node directly, so it gets signals"
    elif first:
        run = nodescripts.local_bin(rest)
        said = f"scripts.start is '{start}': run without npm, so it gets signals"
    elif start:
        run, said = "npm start", f"scripts.start is '{start}'"
    else:
        file = next(
            (f for f in (main, "server.js", "app.js", "index.js") if f and (root / f).is_file()),
            None,
        )
        if file is None:
            return None
        run, said = f"node {file}", f"no start script: {file} is the entry point"
    why = ["package.json: a Node app"]
    if run == "npm start":
        ran = nodescripts.commands(package, run)
    else:
        ran = nodescripts.commands(package, rest, "start") if first else []
    dev = nodescripts.dev_programs(root, package, ran)
    build = node_build(root, package, why, keep_dev=bool(dev), first=first)
    why.append(said)
    if first:
        steps = [f"npm run {s}" if isinstance(s, str) else shlex.join(s.words) for s in first]
        shown = " && ".join(steps)
        why.append(
            f"'{shown}' compiles the app: run at bake time, not at each instance's start "
            "(where the pruned compiler is missing)"
        )
    notes = ["the app must listen on process.env.PORT (and process.env.HOST if it binds one)"]
    deps = _npm_dependencies(root)
    # served as any Node app, by its own server; named as docs/init.md names them
    kind = next((k for name, k in _NAMED_NODE_SERVERS if name in deps), "Node")
    return Detected(
        kind=kind,
        run=run,
        why=why,
        build=build,
        exclude=list(NODE_EXCLUDE),
        env={"NODE_ENV": "production"},
        health_path=_route(root, ("/health", "/healthz", "/ping"), _NODE_SOURCES),
        grace="20s",
        notes=[*notes, *([_kept_dev_note(dev)] if dev else [])],
        warnings=[_watcher_warning(package, c) for c in nodescripts.watchers(ran)],
    )


def _kept_dev_note(dev: dict[str, str]) -> str:
    """Why the image keeps the devDependencies: the start script runs ``dev``
    (command → its package), which a prune would remove ('sh: 1: tsx: not found')."""
    shown = [c if c == p else f"{c} ({p})" for c, p in dev.items()]
    packages = " and ".join(dict.fromkeys(dev.values()))
    if len(shown) == 1:
        runs = f"runs {shown[0]}, a devDependency"
    else:
        runs = f"runs {', '.join(shown[:-1])} and {shown[-1]}, devDependencies"
    return (
        f"the start script {runs}: dev packages stay in the image; move {packages} to "
        "dependencies to leave them out"
    )


def _watcher_warning(package: dict[str, object], command: nodescripts.Command) -> str:
    """A start script that watches files: on a crash it waits for a change instead of
    exiting, and an image's files never change."""
    watching = command.program
    if command.words[1:2] == ("watch",):
        watching += " watch"
    elif "--watch" in " ".join(command.words):
        watching += " --watch"
    text = scripts_of(package).get(command.script or "start", "")
    return (
        f"scripts.{command.script} runs {watching} ('{text}'), a development watcher: when "
        "the app crashes it waits for a file to change instead of exiting, and it watches "
        "files an image never changes; start the app without it ('node server.js', "
        "'tsx src/index.ts')"
    )


def _declares(package: dict[str, object], keys: tuple[str, ...]) -> bool:
    """Whether package.json lists any package under one of ``keys``."""
    return any(isinstance(package.get(k), dict) and bool(package.get(k)) for k in keys)


# static ------------------------------------------------------------------------


def _static(root: Path) -> Detected | None:
    for directory in ("", "public", "dist", "_site", "site", "build"):
        if (root / directory / "index.html").is_file():
            where = f" --directory {directory}" if directory else ""
            shown = f"{directory}/index.html" if directory else "index.html"
            return Detected(
                kind="static site",
                run=f"python3 -m http.server --bind $HOST{where} $PORT",
                why=[f"{shown} and no app code: a static site, served by python3 -m http.server"],
                health_path="/",
                grace="10s",
            )
    return None


def _fallback(root: Path) -> Detected:
    inferred = _listed_server_app(root)
    if inferred is not None:
        return inferred
    for candidate in ("app.py", "main.py", "server.py"):
        if (root / candidate).is_file():
            why = [f"{candidate}: started with python3; it must listen on $HOST:$PORT"]
            build = _pip_build(root, [], why) if (root / "requirements.txt").is_file() else []
            env = _python_env() if build else {}
            found = Detected(
                kind="Python script", run=f"python3 {candidate}", why=why, build=build, env=env
            )
            if not _STARTS_SERVING.search(_read(root / candidate)):
                found.warnings.append(
                    f"{candidate} starts no server that kiln can see (no run(), serve(), "
                    "listen(), run_app() or serve_forever() call): if it only defines the "
                    "app, its first deploy fails at the boot gate; set [app] run to the "
                    "command of its server, on $HOST:$PORT"
                )
            return found
    # A run line that fails at the first deploy's boot gate, saying what to do. A
    # placeholder that served the directory passed every gate and published the
    # app's source (and whatever secrets it holds) behind the balancer.
    # (detect says so, unless a Procfile says what runs the app)
    apps = _apps_below(root)
    why = [f"apps in {', '.join(apps)}: run kiln init in each (a fleet each)"] if apps else []
    why += [
        f"{marker}: {what}, which kiln init does not build; write [app] build (compile "
        "at bake time) and [app] run (start it on $HOST:$PORT) yourself"
        for marker, what in _OTHER_STACKS
        if (root / marker).is_file()
    ][:1]
    return Detected(
        kind="unknown",
        run=f"echo {shlex.quote(UNKNOWN_RUN)} >&2; exit 64",
        why=why,
    )


# A script that serves calls one of these (app.run(), web.run_app(app), serve(app, …),
# server.serve_forever(), uvicorn.run(…), app.listen(…), demo.launch()); an Emmett
# quick start's app.py only defines the app (its server is `emmett serve`)
_STARTS_SERVING = re.compile(
    r"\b(?:run|serve|serve_forever|run_app|run_simple|listen|launch|start|run_server"
    r"|make_server|create_server|start_server)\s*\("
)


# What a directory kiln recognised nothing in is, when a file says so: "nothing
# recognised here" alone left a Go, Rust or Deno user guessing whether kiln saw it.
_OTHER_STACKS = (
    ("go.mod", "a Go module"),
    ("Cargo.toml", "a Rust crate"),
    ("deno.json", "a Deno project"),
    ("deno.jsonc", "a Deno project"),
    ("Gemfile", "a Ruby app"),
    ("mix.exs", "an Elixir project"),
    ("composer.json", "a PHP project"),
    ("pom.xml", "a Java (Maven) project"),
    ("build.gradle", "a Java (Gradle) project"),
    ("mkdocs.yml", "an MkDocs site"),
    ("pelicanconf.py", "a Pelican site"),
    ("hugo.toml", "a Hugo site"),
)


def _listed_server_app(root: Path) -> Detected | None:
    """An app object of a framework kiln does not know (BlackSheep's quick start:
    ``app = Application()`` in server.py), under the ASGI server the app lists. Run as
    a script, such a module defines the app and exits. Never a server it does not list."""
    server = listed_asgi_server(root)
    if server is None:
        return None
    modules = [root / name for name in _MODULES] + sorted(root.glob("*.py"))
    for path in dict.fromkeys(p for p in modules if p.is_file()):
        made = re.search(r"^(app|application)\s*(?::[^=]+)?=\s*([\w.]+)\(", _read(path), re.M)
        if made is None:
            continue
        why = [
            f"{path.name} assigns {made.group(1)} = {made.group(2)}(…), and {server} is in "
            f"{_python_manifest(root)}: inferred to be an ASGI app for it"
        ]
        run, server = asgi_served(root, f"{path.stem}:{made.group(1)}", why)
        why.append(f"served by {server} on $HOST:$PORT")
        found = python_detected("ASGI", run, root, path, why, [server])
        found.notes.append(
            f"kiln does not know the framework of {made.group(2)}(): if {path.stem}:"
            f"{made.group(1)} is no ASGI app, set [app] run to the command that serves it"
        )
        return found
    return None


_APP_FILES = ("manage.py", "package.json", "requirements.txt", "pyproject.toml", "Procfile")


def _apps_below(root: Path) -> list[str]:
    """Directories just below ``root`` that hold an app (a monorepo's root)."""
    try:
        below = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []
    return [
        f"{p.name}/"
        for p in below
        if p.name not in _NOT_SOURCE and any((p / f).is_file() for f in _APP_FILES)
    ]


UNKNOWN_RUN = (
    "kiln init recognised no app here: set [app] run in kiln.toml to the command that "
    "starts it on $HOST:$PORT (and [app] build to what installs it)"
)


def _read(path: Path) -> str:
    try:
        with path.open("rb") as f:
            return f.read(_SOURCE_LIMIT).decode("utf-8", "replace")
    except OSError:
        return ""
