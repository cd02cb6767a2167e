"""A Procfile (Heroku, Dokku, Render): the app's own word on how it runs.

``web: gunicorn myproj.wsgi --log-file -`` is the command its author runs in
production, so ``kiln init`` uses it over its own guess, made to listen on
$HOST:$PORT (kiln.listenargs); ``release: python manage.py migrate`` becomes
the release command. Other process types (worker, clock) are not instances
behind a load balancer: init names them in a note, never drops them silently.
The build still comes from detecting the stack. Read by ``kiln init`` only:
kiln.toml is what deploys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from kiln.detect import (
    PIP,
    PY_EXCLUDE,
    Detected,
    _pip_build,
    _python_env,
    _python_source,
    _read,
    _requirements,
    _route,
    brought_with,
)
from kiln.fixedport import AROUND_BALANCER
from kiln.listenargs import Adapted, listen_on_host_port, python3
from kiln.runenv import SYSTEM_PATH
from kiln.runline import assignments, simple_commands

NAME = "Procfile"
# foreman's and Heroku's grammar: a process type, a colon, the command
_LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(\S.*?)\s*$")
_LOOKED_AT = frozenset(("python", "python3", "node", "npm", "yarn", "pnpm"))
# yarn and pnpm commands that are not a package.json script
_NOT_SCRIPTS = frozenset(("install", "add", "exec", "dlx", "node", "workspace", "workspaces"))
_SHELL = frozenset(
    ("python", "python3", "node", "npm", "npx", "sh", "bash", "exec", "cd", "env", ".")
)


@dataclass
class Procfile:
    """Process types and their commands, and the lines that were neither."""

    processes: dict[str, str] = field(default_factory=dict)
    malformed: list[tuple[int, str]] = field(default_factory=list)  # (number, line)
    repeated: list[str] = field(default_factory=list)  # types declared twice: the last wins


def parse_procfile(text: str) -> Procfile:
    """Blank lines and # comments skipped; every other line must be 'type: command'."""
    procfile = Procfile()
    for number, line in enumerate(text.removeprefix("\ufeff").splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _LINE.match(stripped)
        if match is None:
            procfile.malformed.append((number, stripped))
            continue
        name, command = match.groups()
        if name in procfile.processes and name not in procfile.repeated:
            procfile.repeated.append(name)
        procfile.processes[name] = command
    return procfile


def read_procfile(root: Path) -> Procfile | None:
    path = root / NAME
    return parse_procfile(_read(path)) if path.is_file() else None


def apply_procfile(root: Path, found: Detected) -> None:
    """Let the app's Procfile set the run and release commands ``found`` guessed."""
    procfile = read_procfile(root)
    if procfile is None:
        return
    if procfile.malformed:
        lines = ", ".join(f"{n} ('{text[:40]}')" for n, text in procfile.malformed)
        found.notes.append(
            f"Procfile line{'s' if len(procfile.malformed) > 1 else ''} {lines} "
            f"{'are' if len(procfile.malformed) > 1 else 'is'} not 'type: command': ignored"
        )
    if procfile.repeated:
        found.notes.append(
            f"Procfile declares {', '.join(procfile.repeated)} twice: the last is used"
        )
    web = procfile.processes.get("web")
    if web is None:
        found.notes.append("Procfile has no web process: the run line is kiln's own guess")
    else:
        _use_web(root, found, web)
    release = procfile.processes.get("release")
    if release is not None:
        _use_release(root, found, release)
    others = [name for name in procfile.processes if name not in ("web", "release")]
    if others:
        plural = len(others) > 1
        found.notes.append(
            f"Procfile's {', '.join(others)} process{'es are' if plural else ' is'} not run "
            "by kiln, which runs the web process on each instance: run "
            f"{'them' if plural else 'it'} elsewhere"
        )


def _use_web(root: Path, found: Detected, web: str) -> None:
    adapted = _npm(listen_on_host_port(web))
    dev = _dev_server(adapted.words)
    if dev:
        guess = f": kiln's own guess was '{found.run}'" if found.kind != "unknown" else ""
        found.warnings.append(
            f"the Procfile's web process runs {dev}, which is not made for production "
            f"traffic{guess}"
        )
    found.why.append(f"Procfile: web process '{web}' runs the app, instead of kiln's own guess")
    found.run, found.run_source = adapted.line, "Procfile"
    found.why += adapted.changes
    opened = _every_interface(adapted)
    adapted.warnings += [opened] if opened else []
    found.warnings += adapted.warnings
    first = adapted.words[0] if adapted.words else ""
    if adapted.server is None and first not in _LOOKED_AT and not adapted.warnings:
        found.notes.append(
            f"kiln cannot see where the Procfile's '{first}' listens: it must listen on $PORT, "
            "and on $HOST rather than 0.0.0.0"
        )
    unknown = found.kind == "unknown"  # nothing recognised: a Python manifest says enough
    if adapted.server is not None or _runs_python(adapted) or unknown:
        _python_build(root, found, adapted)
    _bin_path(root, found, adapted)
    if adapted.server is not None and adapted.server.name == "gunicorn":
        _workers(found, adapted.words)
    found.run = _keep_deps(found, found.run)


def _use_release(root: Path, found: Detected, release: str) -> None:
    adapted = _npm(python3(release))
    if found.release and found.release != adapted.line:
        found.why.append(f"Procfile: release process, instead of '{found.release}'")
    else:
        found.why.append("Procfile: release process, run once per deployment before traffic")
    found.release, found.release_source = adapted.line, "Procfile"
    _bin_path(root, found, adapted)
    found.release = _keep_deps(found, found.release)


def _npm(adapted: Adapted) -> Adapted:
    """``yarn start``, ``pnpm run x`` → ``npm start``, ``npm run x``: the build runs yarn
    and pnpm through npx, so the instances' PATH may have neither; npm runs the same
    package.json script."""
    words = adapted.words
    if len(words) < 2 or words[0] not in ("yarn", "pnpm") or adapted.line.count(words[0]) != 1:
        return adapted
    if any(c in adapted.line[adapted.line.index(words[0]) :] for c in "<>|&;"):
        return adapted  # a redirection after it: left as written
    script = words[2] if words[1] == "run" and len(words) > 2 else words[1]
    if script.startswith("-") or script in _NOT_SCRIPTS:
        return adapted
    npm = "npm start" if script == "start" else f"npm run {script}"
    at = adapted.line.index(words[0])
    raw = (simple_commands(adapted.line[at:]) or [[]])[-1]  # the words as written
    skip = 3 if words[1] == "run" else 2
    if len(raw) > skip:
        npm += f" -- {adapted.line[at + raw[skip][1] :]}"
    adapted.line = adapted.line[:at] + npm
    adapted.words = ["npm", *words[1:]]
    adapted.changes.append(
        f"'{words[0]} {' '.join(words[1:])}' run as '{npm}': the same package.json script, "
        f"and the instances' PATH need not have {words[0]}"
    )
    return adapted


def _dev_server(words: list[str]) -> str | None:
    """The development server a command starts (Django's runserver, flask run), if any."""
    text = " ".join(words)
    if re.search(r"\bmanage\.py runserver\b", text):
        return "Django's development server (manage.py runserver)"
    if re.search(r"^(?:python3? -m )?flask(?: --app \S+)? run\b", text):
        return "Flask's development server (flask run)"
    if re.search(r"^(?:python3? -m )?fastapi dev\b", text):
        return "FastAPI's development server (fastapi dev, which reloads on every change)"
    return None


# a literal 0.0.0.0 the line still has: kiln did not rewrite where it listens
_EVERY_INTERFACE = re.compile(r"(?<![\w.])0\.0\.0\.0(?![\w.])")


def _every_interface(adapted: Adapted) -> str | None:
    """A warning when the web process, as kiln leaves it, listens on 0.0.0.0: a server
    kiln knows is told $HOST instead, any other command is run as written."""
    if adapted.server is not None or not _EVERY_INTERFACE.search(adapted.line):
        return None
    words = adapted.words or adapted.line.split()
    first = " ".join(words[:2]) if words[0] in _LOOKED_AT and len(words) > 1 else words[0]
    return (
        f"the Procfile's web process listens on 0.0.0.0 (every interface), and kiln does not "
        f"rewrite where '{first}' listens: {AROUND_BALANCER}; make it listen on $HOST "
        "(kiln sets it)"
    )


def _keep_deps(found: Detected, line: str) -> str:
    """``PYTHONPATH=src gunicorn …`` keeps deps/ on the path: set alone, it would hide
    the packages the build installs there (gunicorn itself among them)."""
    if "PYTHONPATH" not in found.env:
        return line
    for text, start in reversed(assignments(line)):
        if text.startswith("PYTHONPATH=") and "$PYTHONPATH" not in text:
            line = f"{line[: start + len(text)]}:$PYTHONPATH{line[start + len(text) :]}"
            found.why.append(
                f"Procfile sets {text}: kiln appends ':$PYTHONPATH', so the packages the "
                f"build installs into {found.env['PYTHONPATH']}/ are still found"
            )
    return line


def _runs_python(adapted: Adapted) -> bool:
    return bool(adapted.words) and adapted.words[0] in ("python", "python3")


def _python_build(root: Path, found: Detected, adapted: Adapted) -> None:
    """A Python web process needs the app's dependencies, and its server, in deps/."""
    if "PYTHONPATH" not in found.env:
        if _python_source(root) is None and not (root / "pyproject.toml").is_file():
            return  # nothing says what to install: the run line is the user's to check
        needed = [adapted.server.module] if adapted.server else []
        found.kind = "Python app (Procfile)"
        # a Node build found beside it (assets for the Python app) is kept, after pip
        found.build = _pip_build(root, needed, found.why) + found.build
        found.env = _python_env() | found.env
        found.exclude = PY_EXCLUDE + [p for p in found.exclude if p not in PY_EXCLUDE]
        found.notes = [n for n in found.notes if "process.env.PORT" not in n]  # node's server
        found.health_path = _route(root, ("/health", "/healthz", "/ping"))
        return
    if found.needed and (adapted.server is not None or _runs_python(adapted)):
        _own_server_replaced(root, found, adapted)
        return
    if adapted.server is None:
        return
    dist = adapted.server.module
    names = _requirements(root, extras=True)
    if dist in names or dist in brought_with(names):
        return
    for i, step in enumerate(found.build):
        command = step if isinstance(step, str) else step.run
        if PIP not in command or re.search(rf"(?<![\w-]){re.escape(dist)}(?![\w-])", command):
            continue
        listed = re.search(rf"{re.escape(PIP)}(?: -r \S+)?", command)
        assert listed is not None
        grown = command[: listed.end()] + f" {dist}" + command[listed.end() :]
        found.build[i] = grown if isinstance(step, str) else step.model_copy(update={"run": grown})
        found.why.append(f"{dist} (the Procfile's server) is not listed: the build adds it")
        return


_KILNS_SERVERS = ("gunicorn", "uvicorn")  # what kiln's own run lines serve Python apps with


def _own_server_replaced(root: Path, found: Detected, adapted: Adapted) -> None:
    """The web process names its server (or runs a script that serves): the build
    ensures that server only, not the one kiln's own run line needed. uvicorn and
    websockets were added for a Procfile running daphne, gunicorn for `python app.py`."""
    server = [adapted.server.module] if adapted.server else []
    needed = [n for n in found.needed if n not in _KILNS_SERVERS] + server
    if needed == found.needed:
        return
    said: list[str] = []  # what the detected build said, with either interface
    old = _pip_build(root, found.needed, said)[0]
    _pip_build(root, found.needed, said, wsgi=True)
    if old not in found.build:
        return
    why: list[str] = []
    new = _pip_build(root, needed, why, wsgi="--interface wsgi" in found.run)[0]
    found.build[found.build.index(old)] = new
    at = next((i for i, line in enumerate(found.why) if line in said), len(found.why))
    kept = [line for line in found.why if line not in said]
    found.why = kept[:at] + why + kept[at:]
    words = [(s if isinstance(s, str) else s.run).split() for s in (old, new)]
    dropped = [w for w in words[0] if w not in words[1]]
    if dropped:
        found.why.append(
            f"the Procfile's web process decides the server: the build does not add "
            f"{' and '.join(dropped)}, which kiln's own run line needed"
        )


def _bin_path(root: Path, found: Detected, adapted: Adapted) -> None:
    """A command the build installs (a console script in deps/bin, a package's
    node_modules/.bin) is found there, as Heroku's PATH finds it."""
    word = adapted.words[0] if adapted.words else ""
    if not word or word in _SHELL or (adapted.server and not adapted.wrapper):
        return
    if found.env.get("PYTHONPATH") == "deps":
        # a script of the app's own (bin/web) may run gunicorn, as on Heroku
        where, what = "deps/bin", "where the build installs Python scripts"
    elif (root / "package.json").is_file() and word not in ("yarn", "pnpm") and "/" not in word:
        where, what = "node_modules/.bin", "where packages install their commands"
    else:
        return
    path = f"{where}:{SYSTEM_PATH}"
    if found.env.get("PATH", path) != path:
        return
    if "PATH" not in found.env:
        found.why.append(f"Procfile runs '{word}': [env] PATH starts with {where}, {what}")
    found.env["PATH"] = path


def _workers(found: Detected, words: list[str]) -> None:
    """gunicorn's workers come from WEB_CONCURRENCY when not given, as Heroku sets it:
    one sync worker alone lets a few slow requests starve the health checks."""
    given = any(w in ("-w", "--workers") or w.startswith(("--workers=", "-w")) for w in words)
    if given or "WEB_CONCURRENCY" in found.env or found.sticky:
        return
    found.env["WEB_CONCURRENCY"] = "2"
    found.why.append(
        "WEB_CONCURRENCY=2 (as Heroku sets it): gunicorn runs two workers, so a slow "
        "request does not hold up the health checks"
    )
