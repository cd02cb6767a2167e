"""Python web stacks that are not a plain WSGI/ASGI object for gunicorn or uvicorn.

Streamlit and Gradio apps are scripts run by their framework's own server;
Dash wraps a Flask server; Sanic ships its own server; aiohttp runs on
gunicorn's aiohttp worker; Quart, Litestar, Falcon and Bottle are WSGI/ASGI
apps under names the generic detector does not know. Each stack is found by
what its source imports or constructs (never by running it), and gets a run
line that listens on $HOST:$PORT, the health route the framework serves, and
the reasons.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kiln.detect import GUNICORN, UVICORN, Detected, _pip_build, _python_env, _read, _route

_HEALTH = ("/health", "/healthz", "/ping")
_SCRIPT_NAMES = ("streamlit_app.py", "app.py", "main.py", "Home.py", "dashboard.py", "demo.py")


def detect_python_stack(root: Path) -> Detected | None:
    """The first stack one of the app's top-level modules uses, or None."""
    modules = _modules(root)
    for stack in (_streamlit, _gradio):
        found = stack(root, modules)
        if found is not None:
            return found
    for path in modules:
        text = _read(path)
        for app in _APP_OBJECTS:
            match = re.search(app.pattern, text, re.MULTILINE)
            if match is not None:
                return app.build(root, path, text, match)
    return _aiohttp_factory(root, modules)


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
            warnings=warnings,
            sticky=(
                "Gradio keeps each session's queue and state in one instance: the load "
                'balancer keeps each client there (sticky = "cookie")'
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
    """gunicorn or uvicorn on ``module:object``, like the generic frameworks."""

    def build(root: Path, path: Path, text: str, match: re.Match[str]) -> Detected:
        why = [f"{path.name} defines {match.group(0).strip().rstrip('(')}…: a {kind} app"]
        why.append(f"served by {server} on $HOST:$PORT")
        command = GUNICORN if server == "gunicorn" else UVICORN
        return _python(
            kind, f"{command} {path.stem}:{match.group(1)}", root, why, [framework, server]
        )

    return build


def _python(kind: str, run: str, root: Path, why: list[str], needed: list[str]) -> Detected:
    return Detected(
        kind=kind,
        run=run,
        why=why,
        build=_pip_build(root, needed, why, wsgi="--interface wsgi" in run),
        env=_python_env(),
        health_path=_route(root, _HEALTH),
        grace="20s",
    )


def _dash(root: Path, path: Path, text: str, match: re.Match[str]) -> Detected:
    app = match.group(1)
    why = [f"{path.name} defines {app} = Dash(…): a Dash app (a Flask server inside)"]
    server = re.search(rf"^(\w+)\s*=\s*{app}\.server\b", text, re.MULTILINE)
    if server:
        run = f"{GUNICORN} {path.stem}:{server.group(1)}"
        why.append(f"{server.group(1)} = {app}.server: served by gunicorn, as Dash documents")
        return _python("Dash", run, root, why, ["dash", "gunicorn"])
    # gunicorn takes a name, not an attribute path; uvicorn takes app.server
    run = f"{UVICORN} --interface wsgi {path.stem}:{app}.server"
    why.append(f"no 'server = {app}.server' line: uvicorn serves {app}.server as WSGI")
    found = _python("Dash", run, root, why, ["dash", "uvicorn"])
    found.notes.append(
        f"add 'server = {app}.server' to {path.name} and run "
        f"'{GUNICORN} {path.stem}:server' for a multi-worker server"
    )
    return found


def _sanic(root: Path, path: Path, text: str, match: re.Match[str]) -> Detected:
    why = [f"{path.name} defines {match.group(1)} = Sanic(…): a Sanic app"]
    why.append("served by Sanic's own server (python3 -m sanic) on $HOST:$PORT")
    run = f"python3 -m sanic {path.stem}:{match.group(1)} --host $HOST --port $PORT --no-motd"
    found = _python("Sanic", run, root, why, ["sanic"])
    if found.health_path is None and _sanic_health(text):
        found.health_path = "/__health__"
    return found


def _sanic_health(text: str) -> bool:
    """Sanic's built-in health endpoint, when the app turns it on."""
    return re.search(r"HEALTH\s*=\s*True|HEALTH_ENDPOINT\s*=\s*True", text) is not None


def _aiohttp(root: Path, path: Path, text: str, match: re.Match[str]) -> Detected:
    why = [f"{path.name} defines {match.group(1)} = web.Application(): an aiohttp app"]
    return _aiohttp_served(root, path, match.group(1), why)


def _aiohttp_factory(root: Path, modules: list[Path]) -> Detected | None:
    """A function that builds and returns a web.Application (sync or async)."""
    for path in modules:
        text = _read(path)
        for match in re.finditer(r"^(async\s+)?def\s+(\w+)\(\s*\)", text, re.MULTILINE):
            rest = text[match.end() :].partition("\n")[2]  # the lines after the def
            body = re.split(r"^\S", rest, maxsplit=1, flags=re.MULTILINE)[0]
            made = re.search(r"^\s+(\w+)\s*=\s*(?:aiohttp\.)?web\.Application\(", body, re.M)
            if made and re.search(rf"^\s+return\s+{made.group(1)}\s*$", body, re.MULTILINE):
                name = match.group(2)
                why = [f"{path.name}: {name}() returns a web.Application: an aiohttp app"]
                target = name if match.group(1) else f"{name}()"  # the worker awaits a coroutine
                return _aiohttp_served(root, path, target, why)
    return None


def _aiohttp_served(root: Path, path: Path, target: str, why: list[str]) -> Detected:
    why.append("served by gunicorn's aiohttp worker on $HOST:$PORT (web.run_app is not called)")
    worker = "--worker-class aiohttp.GunicornWebWorker"  # async: no threads
    run = f"{GUNICORN.replace(' --threads 4', '')} {worker} {path.stem}:{target}"
    return _python("aiohttp", run, root, why, ["aiohttp", "gunicorn"])


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
    _App("Falcon", _OBJECT + r"falcon\.asgi\.App\(", _served("Falcon", "uvicorn", "falcon")),
    _App("Falcon", _OBJECT + r"falcon\.App\(", _served("Falcon", "gunicorn", "falcon")),
    _App("Bottle", _OBJECT + r"(?:bottle\.)?Bottle\(", _served("Bottle", "gunicorn", "bottle")),
)
