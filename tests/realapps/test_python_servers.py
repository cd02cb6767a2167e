"""Third-party Python apps from PyPI on production servers: httpbin (WSGI), datasette (ASGI)."""

from __future__ import annotations

import json
from pathlib import Path

from realkit import first_try


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
