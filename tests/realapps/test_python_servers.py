"""Third-party Python apps from PyPI on production servers: httpbin (WSGI), datasette (ASGI)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from realkit import SYSTEM_PYTHON, LoadLoop, deploy, first_try, free_port, get, pip_tools, review

from kilntest import Kiln


def test_httpbin_on_gunicorn_on_the_first_try(tmp_path: Path) -> None:
    app = tmp_path / "bin"
    app.mkdir()
    (app / "requirements.txt").write_text("httpbin==0.10.2\n")
    wsgi = app / "wsgi.py"
    wsgi.write_text("import httpbin\n\napplication = httpbin.app\n")

    def change() -> None:
        wsgi.write_text(wsgi.read_text() + "# v2\n")

    first_try(app, "/get", change, lambda body: json.loads(body)["url"].endswith("/get"))
    toml = (app / "kiln.toml").read_text()
    assert "python3 -m gunicorn" in toml and "wsgi:application" in toml


def test_datasette_on_uvicorn_on_the_first_try(tmp_path: Path) -> None:
    app = tmp_path / "data"
    app.mkdir()
    (app / "requirements.txt").write_text("datasette>=0.64,<0.66\n")
    asgi = app / "asgi.py"
    asgi.write_text("from datasette.app import Datasette\n\napp = Datasette(memory=True).app()\n")

    def change() -> None:
        asgi.write_text(asgi.read_text() + "# v2\n")

    def check(body: bytes) -> bool:
        return "datasette" in json.loads(body)

    first_try(app, "/-/versions.json", change, check)
    toml = (app / "kiln.toml").read_text()
    assert "python3 -m uvicorn" in toml and "asgi:app" in toml


PYPROJECT_APP = """\
import humanize
from flask import Flask

app = Flask(__name__)


@app.get("/")
def index():
    return {"size": humanize.naturalsize(123456789), "version": "v1"}
"""


def test_a_pyproject_toml_app_gets_its_dependencies(tmp_path: Path) -> None:
    """No requirements.txt: the dependencies are in pyproject.toml's [project] table (uv,
    PDM, Hatch, Poetry 2). Before, the build installed flask and gunicorn only and every
    instance died with ModuleNotFoundError: humanize."""
    app = tmp_path / "sizes"
    app.mkdir()
    (app / "pyproject.toml").write_text(
        '[project]\nname = "sizes"\nversion = "0.1.0"\nrequires-python = ">=3.11"\n'
        'dependencies = ["flask>=3,<4", "humanize>=4.9"]\n'
    )
    main = app / "app.py"
    main.write_text(PYPROJECT_APP)

    def change() -> None:
        main.write_text(PYPROJECT_APP.replace('"v1"', '"v2"'))

    first_try(app, "/", change, lambda body: json.loads(body)["size"] == "123.5 MB")
    toml = (app / "kiln.toml").read_text()
    assert 'inputs = ["pyproject.toml"]' in toml and "python3 -m gunicorn" in toml


SLOW_APP = """\
import time
from flask import Flask

app = Flask(__name__)
VERSION = "v1"


@app.get("/")
def index():
    return VERSION


@app.get("/report")
def report():
    time.sleep(3)  # a slow query, an upstream API
    return "report " + VERSION
"""


def test_a_flask_app_with_slow_requests_rolls_out_under_them(tmp_path: Path) -> None:
    """Twelve slow requests at a time while a rolling deploy runs: none fails. Before,
    kiln init ran two sync gunicorn workers per instance, one request each: requests
    queued past the client's 10 s timeout (3 of 34 failed), and in a run with wrk on
    /health beside them, the health checks timed out too and the deploy rolled back."""
    app = tmp_path / "reports"
    app.mkdir()
    (app / "requirements.txt").write_text("flask==3.0.3\n")
    main = app / "app.py"
    main.write_text(SLOW_APP)
    kiln = Kiln(app)
    port = free_port()
    kiln("init")
    review(app, port)
    deploy(kiln)
    main.write_text(SLOW_APP.replace('"v1"', '"v2"'))
    with LoadLoop(
        "127.0.0.1", port, path="/report", workers=12, pause=0.0, max_seconds=240
    ) as slow:
        second = deploy(kiln)
    assert second["outcome"] == "succeeded"
    assert slow.sent >= 12 and slow.failed == 0, slow.errors
    assert get(port, "/") == (200, b"v2")


LOCKED_APP = """\
import importlib.metadata
import importlib.util

import humanize
from flask import Flask

app = Flask(__name__)


@app.get("/")
def index():
    return {
        "werkzeug": importlib.metadata.version("werkzeug"),
        "dev_tabulate": importlib.util.find_spec("tabulate") is not None,
        "size": humanize.naturalsize(123456789),
        "version": "v1",
    }
"""

# Flask 3.0.3 and its dependencies at real PyPI versions older than the newest
# (an unpinned install would get Werkzeug 3.1+), plus a dev-only package (tabulate)
# that the host's python3 does not have either
FLASK_LOCKED = {
    "blinker": "1.8.2",
    "click": "8.1.7",
    "colorama": "0.4.6",  # Windows only: left out
    "flask": "3.0.3",
    "humanize": "4.9.0",
    "itsdangerous": "2.2.0",
    "jinja2": "3.1.4",
    "markupsafe": "2.1.5",
    "werkzeug": "3.0.3",
}
FLASK_DEPS = {
    "click": 'colorama = {version = "*", markers = "platform_system == \\"Windows\\""}\n',
    "flask": 'blinker = ">=1.6.2"\nclick = ">=8.1.3"\nitsdangerous = ">=2.1.2"\n'
    'Jinja2 = ">=3.1.2"\nWerkzeug = ">=3.0.0"\n',
    "jinja2": 'MarkupSafe = ">=2.0"\n',
    "werkzeug": 'MarkupSafe = ">=2.1.1"\n',
}


def _poetry_lock() -> str:
    """poetry.lock as Poetry 1.8 writes it (lock-version 2.0: no groups, no category)."""
    text = "# This file is automatically @generated by Poetry 1.8.3 and should not be changed"
    text += " by hand.\n"
    for name, version in sorted({**FLASK_LOCKED, "tabulate": "0.9.0"}.items()):
        text += (
            f'\n[[package]]\nname = "{name}"\nversion = "{version}"\ndescription = ""\n'
            'optional = false\npython-versions = ">=3.8"\nfiles = []\n'
        )
        if name in FLASK_DEPS:
            text += "\n[package.dependencies]\n" + FLASK_DEPS[name]
    return (
        text + '\n[metadata]\nlock-version = "2.0"\npython-versions = "^3.11"\ncontent-hash = "0"\n'
    )


def _locked_check(body: bytes) -> bool:
    answer = json.loads(body)
    locked = answer["werkzeug"] == "3.0.3" and answer["size"] == "123.5 MB"
    return locked and answer["dev_tabulate"] is False


def _locked_first_try(app: Path) -> tuple[Kiln, int]:
    main = app / "app.py"
    main.write_text(LOCKED_APP)

    def change() -> None:
        main.write_text(LOCKED_APP.replace('"v1"', '"v2"'))

    return first_try(app, "/", change, _locked_check)


def test_a_poetry_1_app_deploys_from_its_lock(tmp_path: Path) -> None:
    """Poetry 1: dependencies in [tool.poetry.dependencies], versions in poetry.lock, a
    dev group. Before, init only noted that Poetry's table was not read: the build
    installed flask (newest: Werkzeug 3.1) and gunicorn, and the app died on
    ModuleNotFoundError: humanize."""
    app = tmp_path / "poet"
    app.mkdir()
    (app / "pyproject.toml").write_text(
        '[tool.poetry]\nname = "poet"\nversion = "0.1.0"\ndescription = ""\n'
        'authors = ["A <a@example.com>"]\npackage-mode = false\n\n'
        '[tool.poetry.dependencies]\npython = "^3.11"\nflask = "^3.0"\nhumanize = "^4.9"\n\n'
        '[tool.poetry.group.dev.dependencies]\ntabulate = "^0.9"\n'
    )
    (app / "poetry.lock").write_text(_poetry_lock())
    kiln, port = _locked_first_try(app)
    toml = (app / "kiln.toml").read_text()
    assert 'inputs = ["pyproject.toml", "poetry.lock", ".kiln-locks.py"]' in toml
    # the lock is read at bake time and is an input of the cached step: a new lock,
    # a new Werkzeug, with kiln.toml untouched
    lock = (app / "poetry.lock").read_text()
    (app / "poetry.lock").write_text(
        lock.replace('"werkzeug"\nversion = "3.0.3"', '"werkzeug"\nversion = "3.0.4"')
    )
    assert deploy(kiln)["outcome"] == "succeeded"
    assert json.loads(get(port, "/")[1])["werkzeug"] == "3.0.4"


def test_a_pdm_app_deploys_from_the_lock_pdm_wrote(tmp_path: Path) -> None:
    """The lock is PDM's own (pdm lock, against PyPI): Flask and Werkzeug locked at
    3.0.3 and humanize at 4.9.0, then the ranges loosened as a project states them.
    Before, init said pdm.lock was not used: the newest Werkzeug (3.1) was installed."""
    app = tmp_path / "pdmapp"
    app.mkdir()
    project = (
        '[project]\nname = "pdmapp"\nversion = "0.1.0"\nrequires-python = ">=3.11"\n'
        'dependencies = ["flask==3.0.3", "werkzeug==3.0.3", "humanize==4.9.0"]\n\n'
        '[dependency-groups]\ndev = ["tabulate>=0.9"]\n\n[tool.pdm]\ndistribution = false\n'
    )
    (app / "pyproject.toml").write_text(project)
    # hishel 2 dropped what PDM 2.29 imports (its own pin allows it)
    tools = pip_tools("pdm>=2.20,<3", "hishel[httpx2]>=1.4,<2")
    subprocess.run(
        [SYSTEM_PYTHON, "-m", "pdm", "lock"],
        cwd=app,
        check=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(tools), "PDM_CHECK_UPDATE": "false"},
    )
    assert 'name = "tabulate"' in (app / "pdm.lock").read_text()
    (app / "pyproject.toml").write_text(
        project.replace(
            '"flask==3.0.3", "werkzeug==3.0.3", "humanize==4.9.0"', '"flask>=3", "humanize>=4"'
        )
    )
    _locked_first_try(app)
    toml = (app / "kiln.toml").read_text()
    assert 'inputs = ["pyproject.toml", "pdm.lock", ".kiln-locks.py"]' in toml


def test_a_pipenv_app_deploys_from_its_lock(tmp_path: Path) -> None:
    """Pipfile + Pipfile.lock: before, not recognised at all (no dependencies installed)."""
    app = tmp_path / "pipenv"
    app.mkdir()
    (app / "Pipfile").write_text(
        '[packages]\nflask = "*"\nhumanize = "*"\n\n[dev-packages]\ntabulate = "*"\n\n'
        '[requires]\npython_version = "3.11"\n'
    )
    default = {
        name: {"hashes": [], "markers": "python_version >= '3.8'", "version": "==" + version}
        for name, version in FLASK_LOCKED.items()
    }
    default["colorama"]["markers"] = "platform_system == 'Windows'"
    develop = {"tabulate": {"hashes": [], "index": "pypi", "version": "==0.9.0"}}
    lock = {"_meta": {"pipfile-spec": 6}, "default": default, "develop": develop}
    (app / "Pipfile.lock").write_text(json.dumps(lock, indent=4))
    _locked_first_try(app)
    assert 'inputs = ["Pipfile.lock", ".kiln-locks.py"]' in (app / "kiln.toml").read_text()


def test_a_uv_app_deploys_from_its_lock(tmp_path: Path) -> None:
    """pyproject.toml says flask>=3 and humanize; uv.lock pins them (a dev group holds
    tabulate). Before, the ranges were installed: Werkzeug 3.1, not the locked 3.0.3."""
    app = tmp_path / "uvapp"
    app.mkdir()
    (app / "pyproject.toml").write_text(
        '[project]\nname = "uvapp"\nversion = "0.1.0"\nrequires-python = ">=3.11"\n'
        'dependencies = ["flask>=3", "humanize>=4"]\n\n'
        '[dependency-groups]\ndev = ["tabulate>=0.9"]\n'
    )
    text = 'version = 1\nrequires-python = ">=3.11"\n'
    registry = 'source = { registry = "https://pypi.org/simple" }\n'
    for name, version in sorted({**FLASK_LOCKED, "tabulate": "0.9.0"}.items()):
        text += f'\n[[package]]\nname = "{name}"\nversion = "{version}"\n{registry}'
        deps = [line.split(" =")[0].lower() for line in FLASK_DEPS.get(name, "").splitlines()]
        marked = {"colorama": ", marker = \"platform_system == 'Windows'\""}
        if deps:
            text += "dependencies = [\n"
            text += "".join(f'    {{ name = "{d}"{marked.get(d, "")} }},\n' for d in deps)
            text += "]\n"
    text += (
        '\n[[package]]\nname = "uvapp"\nversion = "0.1.0"\nsource = { virtual = "." }\n'
        'dependencies = [\n    { name = "flask" },\n    { name = "humanize" },\n]\n\n'
        '[package.dev-dependencies]\ndev = [\n    { name = "tabulate" },\n]\n'
    )
    (app / "uv.lock").write_text(text)
    _locked_first_try(app)
    assert (
        'inputs = ["pyproject.toml", "uv.lock", ".kiln-locks.py"]'
        in (app / "kiln.toml").read_text()
    )
