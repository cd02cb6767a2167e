"""Python web stacks that are not a plain WSGI/ASGI object for gunicorn or uvicorn.

Streamlit and Gradio apps are scripts run by their framework's own server;
Dash wraps a Flask server; Sanic ships its own server; aiohttp runs on
gunicorn's aiohttp worker; Quart, Litestar, FastHTML, Falcon and Bottle are WSGI/ASGI
apps under names the generic detector does not know. Each stack is found by
what its source imports or constructs (never by running it), and gets a run
line that listens on $HOST:$PORT, the health route the framework serves, and
the reasons.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kiln.detect import (
    GUNICORN,
    UVICORN,
    Detected,
    _app_modules,
    _pip_build,
    _python_env,
    _read,
    asgi_served,
    module_name,
    python_detected,
)

_HEALTH = ("/health", "/healthz", "/ping")
_SCRIPT_NAMES = ("streamlit_app.py", "app.py", "main.py", "Home.py", "dashboard.py", "demo.py")


def detect_python_stack(root: Path) -> Detected | None:
    """The first stack one of the app's top-level modules uses, or None."""
    modules = _modules(root)
    for stack in (_streamlit, _gradio, _session_server):
        found = stack(root, modules)
        if found is not None:
            return found
    served = _served_modules(root)
    for path in served:
        text = _read(path)
        for app in _APP_OBJECTS:
            match = re.search(app.pattern, text, re.MULTILINE)
            if match is not None:
                return app.build(root, path, text, match)
    return _factory(root, served)


def _served_modules(root: Path) -> list[Path]:
    """Modules that may hold an app object a server imports: the top level's, then a
    package's and a src layout's (kiln.detect._app_modules), as for Flask and FastAPI.
    A Sanic app in ``myapp/server.py`` or Quart's tutorial ``src/blog/__init__.py``
    was otherwise not found, and kiln init fell back to nothing."""
    top = _modules(root)
    return top + [p for p in _app_modules(root) if p not in top]


def _shown(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def _modules(root: Path) -> list[Path]:
    """Top-level .py files, the usual entry names first."""
    named = [root / n for n in _SCRIPT_NAMES if (root / n).is_file()]
    return named + [p for p in sorted(root.glob("*.py")) if p not in named and p.is_file()]


def _imports(text: str, package: str) -> bool:
    return re.search(rf"^\s*(?:import|from)\s+{package}\b", text, re.MULTILINE) is not None


# scripts run by their framework's server ------------------------------------


def _streamlit(root: Path, modules: list[Path]) -> Detected | None:
    path = next((p for p in modules if _imports(_read(p), "streamlit")), None)
    if path is None:
        return None
    why = [f"{path.name} imports streamlit: a Streamlit app, run by 'streamlit run'"]
    why.append(
        "--global.developmentMode false: Streamlit installed into deps/ would otherwise "
        "think it is a development checkout and refuse --server.port"
    )
    why.append(f"health: Streamlit's own /_stcore/health; its WebSocket is {_ST_WS}")
    run = (
        f"python3 -m streamlit run {path.name} --server.address $HOST --server.port $PORT "
        "--server.headless true --global.developmentMode false "
        "--server.fileWatcherType none --browser.gatherUsageStats false"
    )
    return Detected(
        kind="Streamlit",
        run=run,
        why=why,
        build=_pip_build(root, ["streamlit"], why),
        env=_python_env(),
        health_path="/_stcore/health",
        grace="30s",
        notes=[
            "each browser session lives in one instance's memory (st.session_state): "
            "a deploy starts it afresh"
        ],
        sticky=(
            "Streamlit keeps each session in the instance that opened its WebSocket, and "
            "file uploads (/_stcore/upload_file) must reach that instance: the load "
            'balancer keeps each client there (sticky = "cookie")'
        ),
    )


_ST_WS = "/_stcore/stream, carried by kiln's balancer"


def _gradio(root: Path, modules: list[Path]) -> Detected | None:
    for path in modules:
        text = _read(path)
        if not _imports(text, "gradio") or ".launch(" not in text:
            continue
        why = [f"{path.name} imports gradio and calls .launch(): a Gradio app, run as a script"]
        why.append("GRADIO_SERVER_NAME/GRADIO_SERVER_PORT make launch() listen on $HOST:$PORT")
        warnings = []
        fixed = re.search(r"\.launch\([^)]*\b(server_port|server_name)\s*=", text, re.DOTALL)
        if fixed:
            warnings.append(
                f"{path.name} passes {fixed.group(1)}= to launch(), which overrides "
                "GRADIO_SERVER_NAME/PORT: remove it so each instance listens on $HOST:$PORT"
            )
        return Detected(
            kind="Gradio",
            run=f"GRADIO_SERVER_NAME=$HOST GRADIO_SERVER_PORT=$PORT python3 {path.name}",
            why=why,
            build=_pip_build(root, ["gradio"], why),
            env=_python_env() | {"GRADIO_ANALYTICS_ENABLED": "False"},
            health_path="/",
            grace="60s",
            # Gradio writes it into its package on first launch: not drift
            writable=["tmp/", "*.log", "deps/gradio/hash_seed.txt"],
            warnings=warnings,
            sticky=(
                "Gradio keeps each session's queue and state in one instance: the load "
                'balancer keeps each client there (sticky = "cookie")'
            ),
        )
    return None


@dataclass(frozen=True)
class _Sessions:
    """A framework whose browser sessions live in its own server's process."""

    kind: str
    package: str  # the module imports it
    marker: str  # and has this (regex)
    run: str  # {file}: the module
    serves: str  # why the run line is what it is


_SESSION_SERVERS = (
    _Sessions(
        "Panel",
        "panel",
        r"\.servable\(",
        "python3 -m panel serve {file} --address $HOST --port $PORT",
        "'panel serve' runs it (run as a script, it defines the app and ends)",
    ),
    _Sessions(
        "Bokeh",
        "bokeh",
        r"\bcurdoc\(\)",
        "python3 -m bokeh serve {file} --address $HOST --port $PORT",
        "'bokeh serve' runs it (run as a script, it defines the document and ends)",
    ),
    _Sessions(
        "Shiny",
        "shiny",
        r"\bApp\(|shiny\.express",
        "python3 -m shiny run {file} --host $HOST --port $PORT",
        "'shiny run' serves it",
    ),
    _Sessions(
        "NiceGUI",
        "nicegui",
        r"\bui\.run\(",
        "python3 {file}",
        "ui.run() serves it: it must be told host=os.environ['HOST'], "
        "port=int(os.environ['PORT']), reload=False, show=False",
    ),
)


def _session_server(root: Path, modules: list[Path]) -> Detected | None:
    """Panel, Bokeh, Shiny and NiceGUI apps: each browser session (its document, its
    WebSocket or socket.io, its upload URLs) lives in one server process, so every
    request of a client must reach the same instance. Run as scripts (`kiln init`'s
    guess), the first three ended at once with status 0."""
    for path in modules:
        text = _read(path)
        for server in _SESSION_SERVERS:
            if not _imports(text, server.package) or not re.search(server.marker, text):
                continue
            why = [f"{path.name} imports {server.package}: a {server.kind} app"]
            why.append(server.serves)
            return Detected(
                kind=server.kind,
                run=server.run.format(file=path.name),
                why=why,
                build=_pip_build(root, [server.package], why),
                env=_python_env(),
                grace="30s",
                sticky=(
                    f"{server.kind} keeps each browser session in the process that opened it "
                    "(its WebSocket, its uploads): the load balancer keeps each client there "
                    '(sticky = "cookie")'
                ),
            )
    return None


# app objects under a server --------------------------------------------------


@dataclass(frozen=True)
class _App:
    """A framework's app object in a module, and how kiln serves it."""

    kind: str
    pattern: str  # group 1: the object's name
    build: Callable[[Path, Path, str, re.Match[str]], Detected]


def _served(
    kind: str, server: str, framework: str
) -> Callable[[Path, Path, str, re.Match[str]], Detected]:
    """gunicorn on ``module:object``, or the ASGI server the app lists (uvicorn when it
    lists none), like the generic frameworks."""

    def build(root: Path, path: Path, text: str, match: re.Match[str]) -> Detected:
        shown = _shown(root, path)
        why = [f"{shown} defines {match.group(0).strip().rstrip('(')}…: a {kind} app"]
        target = f"{module_name(root, path)}:{match.group(1)}"
        said: list[str] = []
        if server == "gunicorn":
            run, serving = f"{GUNICORN} {shlex.quote(target)}", server
        else:
            run, serving = asgi_served(root, target, said)
        why += [f"served by {serving} on $HOST:$PORT", *said]
        return python_detected(kind, run, root, path, why, [framework, serving])

    return build


def _dash(root: Path, path: Path, text: str, match: re.Match[str]) -> Detected:
    app = match.group(1)
    module = module_name(root, path)
    why = [f"{_shown(root, path)} defines {app} = Dash(…): a Dash app (a Flask server inside)"]
    server = re.search(rf"^(\w+)\s*=\s*{app}\.server\b", text, re.MULTILINE)
    if server:
        run = f"{GUNICORN} {module}:{server.group(1)}"
        why.append(f"{server.group(1)} = {app}.server: served by gunicorn, as Dash documents")
        return python_detected("Dash", run, root, path, why, ["dash", "gunicorn"])
    # gunicorn takes a name, not an attribute path; uvicorn takes app.server
    run = f"{UVICORN} --interface wsgi {module}:{app}.server"
    why.append(f"no 'server = {app}.server' line: uvicorn serves {app}.server as WSGI")
    found = python_detected("Dash", run, root, path, why, ["dash", "uvicorn"])
    found.notes.append(
        f"add 'server = {app}.server' to {path.name} and run "
        f"'{GUNICORN} {module}:server' for a multi-worker server"
    )
    return found


def _sanic(root: Path, path: Path, text: str, match: re.Match[str]) -> Detected:
    why = [f"{_shown(root, path)} defines {match.group(1)} = Sanic(…): a Sanic app"]
    why.append("served by Sanic's own server (python3 -m sanic) on $HOST:$PORT")
    target = shlex.quote(f"{module_name(root, path)}:{match.group(1)}")
    run = f"python3 -m sanic {target} --host $HOST --port $PORT --no-motd"
    found = python_detected("Sanic", run, root, path, why, ["sanic"])
    if found.health_path is None and _sanic_health(text):
        found.health_path = "/__health__"
    return found


def _sanic_health(text: str) -> bool:
    """Sanic's health endpoint: served by the sanic-ext plugin, and only with both
    settings on (HEALTH alone, in Sanic's own docs, answers 404 at /__health__)."""
    return bool(
        re.search(r"\bHEALTH\s*=\s*True", text) and re.search(r"HEALTH_ENDPOINT\s*=\s*True", text)
    )


def _fasthtml(root: Path, path: Path, text: str, match: re.Match[str]) -> Detected:
    """uvicorn on the app, as for Starlette (FastHTML is one): run as a script, its
    ``serve()`` started uvicorn on 0.0.0.0 with reload (two processes, every interface);
    imported by uvicorn, ``serve()`` does nothing."""
    found = _served("FastHTML", "uvicorn", "python-fasthtml")(root, path, text, match)
    found.why.insert(1, "serve() does nothing when a server imports the module")
    found.exclude.append(_SESSKEY)
    if "secret_key" not in text:  # a note: an app that keeps no session loses nothing
        found.notes.append(
            f"{_shown(root, path)} gives {match.group(2)}() no secret_key: FastHTML signs "
            f"session cookies with a key it writes to {_SESSKEY} at start, so each instance "
            "makes its own and refuses the others' sessions (and a deploy ends them all); "
            "pass secret_key=os.environ['SESSION_SECRET'] with a [secrets] entry"
        )
    return found


_SESSKEY = ".sesskey"  # FastHTML's signing key, made on the developer's machine: no image's


def _aiohttp(root: Path, path: Path, text: str, match: re.Match[str]) -> Detected:
    why = [f"{_shown(root, path)} defines {match.group(1)} = web.Application(): an aiohttp app"]
    return _aiohttp_served(root, path, match.group(1), why)


# what a factory's body builds: (kind, regex of the object it assigns); a Flask
# factory is kiln.detect's (gunicorn calls it)
_FACTORY_MADE = (
    ("aiohttp", r"(?:aiohttp\.)?web\.Application\("),
    ("FastAPI", r"(?:fastapi\.)?FastAPI\("),
    ("Starlette", r"(?:\w+\.)?Starlette\("),
    ("Quart", r"(?:quart\.)?Quart\("),
    ("Litestar", r"(?:litestar\.)?Litestar\("),
)


@dataclass(frozen=True)
class _Factory:
    path: Path
    name: str
    kind: str
    is_async: bool
    made: str | None  # ``app = name(…)`` at the module's top level: the app it made


def _find_factory(modules: list[Path]) -> _Factory | None:
    """A function that builds and returns an app, callable without arguments (every
    parameter has a default: Flaskr's ``create_app(test_config=None)``)."""
    for path in modules:
        text = _read(path)
        for match in re.finditer(r"^(async\s+)?def\s+(\w+)\(([^)]*)\)", text, re.MULTILINE):
            params = [p for p in match.group(3).split(",") if p.strip()]
            if any("=" not in p and not p.strip().startswith("*") for p in params):
                continue  # a server cannot call it as it stands
            rest = text[match.end() :].partition("\n")[2]  # the lines after the def
            body = re.split(r"^\S", rest, maxsplit=1, flags=re.MULTILINE)[0]
            for kind, made_by in _FACTORY_MADE:
                made = re.search(rf"^\s+(\w+)\s*(?::[^=]+)?=\s*{made_by}", body, re.M)
                returned = made and re.search(rf"^\s+return\s+{made.group(1)}\s*$", body, re.M)
                # uvicorn calls a factory, never awaits it; aiohttp's worker does both
                if returned and (kind == "aiohttp" or not match.group(1)):
                    name = match.group(2)
                    call = re.search(rf"^(\w+)\s*=\s*{name}\(", text, re.MULTILINE)
                    made_app = call.group(1) if call and not match.group(1) else None
                    return _Factory(path, name, kind, bool(match.group(1)), made_app)
    return None


def _factory(root: Path, modules: list[Path]) -> Detected | None:
    found = _find_factory(modules)
    if found is None:
        return None
    path, name, kind = found.path, found.name, found.kind
    why = [f"{_shown(root, path)}: {name}() returns a {kind} app"]
    if kind == "aiohttp":  # the worker awaits a coroutine, calls a function
        target = found.made or (name if found.is_async else f"{name}()")
        return _aiohttp_served(root, path, target, why)
    said: list[str] = []
    module = module_name(root, path)
    if found.made is not None:  # the module already made it: served as it is
        run, server = asgi_served(root, f"{module}:{found.made}", said)
        why.append(f"{found.made} = {name}(…) at the top: served by {server} on $HOST:$PORT")
    else:
        run, server = asgi_served(root, f"{module}:{name}", said, factory=True)
        why.append(f"served by {server} on $HOST:$PORT, which calls the factory")
    why += said
    return python_detected(kind, run, root, path, why, [kind.lower(), server])


def _aiohttp_served(root: Path, path: Path, target: str, why: list[str]) -> Detected:
    why.append(
        "served by gunicorn's aiohttp worker on $HOST:$PORT (gunicorn imports the module: "
        "a web.run_app() under __main__ does not run)"
    )
    worker = "--worker-class aiohttp.GunicornWebWorker"  # async: no threads
    # quoted: the run line goes through /bin/sh, where "create_app()" is a syntax error
    target = shlex.quote(f"{module_name(root, path)}:{target}")
    run = f"{GUNICORN.replace(' --threads 4', '')} {worker} {target}"
    return python_detected("aiohttp", run, root, path, why, ["aiohttp", "gunicorn"])


_OBJECT = r"^(\w+)\s*(?::[^=]+)?=\s*"
_APP_OBJECTS = (
    _App("Dash", _OBJECT + r"(?:dash\.)?Dash\(", _dash),
    _App("Sanic", _OBJECT + r"(?:sanic\.)?Sanic\(", _sanic),
    _App("aiohttp", _OBJECT + r"(?:aiohttp\.)?web\.Application\(", _aiohttp),
    _App("Quart", _OBJECT + r"(?:quart\.)?Quart\(", _served("Quart", "uvicorn", "quart")),
    _App(
        "Litestar",
        _OBJECT + r"(?:litestar\.)?Litestar\(",
        _served("Litestar", "uvicorn", "litestar"),
    ),
    # `app, rt = fast_app()`: the app is the first name (group 2: what made it)
    _App("FastHTML", r"^(\w+)\s*(?:,\s*\w+\s*)*=\s*(fast_app|FastHTML)\(", _fasthtml),
    _App("Falcon", _OBJECT + r"falcon\.asgi\.App\(", _served("Falcon", "uvicorn", "falcon")),
    _App("Falcon", _OBJECT + r"falcon\.App\(", _served("Falcon", "gunicorn", "falcon")),
    _App("Bottle", _OBJECT + r"(?:bottle\.)?Bottle\(", _served("Bottle", "gunicorn", "bottle")),
)
