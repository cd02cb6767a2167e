"""Third-party Python apps from PyPI on production servers: httpbin (WSGI), datasette (ASGI)."""

from __future__ import annotations

import json
from pathlib import Path

from realkit import LoadLoop, deploy, first_try, free_port, get, review

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
