"""Python apps laid out as their frameworks' own guides lay them out, with no Procfile.

FastAPI's "Bigger Applications" tutorial keeps the app in a package
(``app/main.py``, routers beside it, relative imports); Flask's tutorial makes
it in a factory in ``flaskr/__init__.py``; packaging guides put the code under
``src/``. Before, `kiln init` read only modules at the top of the app, found
nothing, and served the directory as a static site. Real FastAPI, Flask and
their servers from PyPI, deployed as `kiln init` writes them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from realkit import deploy, free_port, get, review

from kilntest import Kiln


def _deployed(app: Path, files: dict[str, str]) -> tuple[dict[str, Any], int]:
    """The app written, `kiln init` as it is (but for the review's edits), deployed:
    (what init said, the port it serves on)."""
    for name, text in files.items():
        (app / name).parent.mkdir(parents=True, exist_ok=True)
        (app / name).write_text(text)
    kiln = Kiln(app)
    port = free_port()
    init: dict[str, Any] = json.loads(kiln("init", "--json").stdout)
    review(app, port)
    deploy(kiln)
    return init, port


MAIN = """\
from fastapi import Depends, FastAPI

from .dependencies import token
from .routers import items

app = FastAPI(dependencies=[Depends(token)])
app.include_router(items.router)


@app.get("/")
async def root():
    return {"message": "Hello Bigger Applications!"}
"""

DEPENDENCIES = """\
from typing import Annotated

from fastapi import Header, HTTPException


async def token(x_token: Annotated[str, Header()] = "fake-super-secret-token"):
    if x_token != "fake-super-secret-token":
        raise HTTPException(status_code=400, detail="X-Token header invalid")
"""

ITEMS = """\
from fastapi import APIRouter

router = APIRouter(prefix="/items", tags=["items"])
fake_items_db = {"plumbus": {"name": "Plumbus"}, "gun": {"name": "Portal Gun"}}


@router.get("/")
async def read_items():
    return fake_items_db
"""


@pytest.mark.timeout(300)
def test_fastapis_bigger_applications_layout(tmp_path: Path) -> None:
    app = tmp_path / "bigger"
    files = {
        "requirements.txt": "fastapi==0.115.6\nuvicorn==0.34.0\n",
        "app/__init__.py": "",
        "app/main.py": MAIN,
        "app/dependencies.py": DEPENDENCIES,
        "app/routers/__init__.py": "",
        "app/routers/items.py": ITEMS,
        "tests/__init__.py": "",
        "tests/test_main.py": "from app.main import app\n",
    }
    init, port = _deployed(app, files)
    assert init["kind"] == "FastAPI" and init["run"].endswith(" app.main:app"), init
    status, body = get(port, "/items/")
    assert status == 200 and json.loads(body)["gun"] == {"name": "Portal Gun"}, body[:300]


FACTORY = """\
import os

from flask import Flask


def create_app(test_config=None):
    app = Flask(__name__, instance_relative_config=True)
    app.config.from_mapping(GREETING=os.environ.get("GREETING", "hello"))

    from . import views

    app.register_blueprint(views.bp)
    return app
"""

VIEWS = """\
from flask import Blueprint, current_app

bp = Blueprint("views", __name__)


@bp.get("/hello")
def hello():
    return {"greeting": current_app.config["GREETING"], "package": __package__}
"""

PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "greeter"
version = "1.0"
dependencies = ["flask==3.1.0"]
"""


@pytest.mark.timeout(300)
def test_a_flask_factory_in_a_src_layout(tmp_path: Path) -> None:
    app = tmp_path / "greeter"
    files = {
        "pyproject.toml": PYPROJECT,
        "src/greeter/__init__.py": FACTORY,
        "src/greeter/views.py": VIEWS,
    }
    init, port = _deployed(app, files)
    assert init["kind"] == "Flask" and init["run"].endswith(" 'greeter:create_app()'"), init
    assert 'PYTHONPATH = "src:deps"' in (app / "kiln.toml").read_text()
    status, body = get(port, "/hello")
    assert status == 200 and json.loads(body) == {"greeting": "hello", "package": "greeter"}
