"""A Flask app written for Heroku: its Procfile runs gunicorn on $PORT alone and a
release step that creates the database, as its users write them."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest
from realkit import deploy, first_try, free_port, get, review
from test_node import _LOCKS

from kilntest import Kiln

APP = """\
import os
import sqlite3

from flask import Flask

app = Flask(__name__)
VERSION = "v1"


@app.get("/")
def index():
    with sqlite3.connect(os.environ["DATABASE_PATH"]) as db:
        (greeting,) = db.execute("SELECT text FROM greetings").fetchone()
    return {"greeting": greeting, "version": VERSION}
"""

INIT_DB = """\
import os
import sqlite3

with sqlite3.connect(os.environ["DATABASE_PATH"]) as db:
    db.execute("CREATE TABLE IF NOT EXISTS greetings (text TEXT)")
    if not db.execute("SELECT count(*) FROM greetings").fetchone()[0]:
        db.execute("INSERT INTO greetings VALUES ('made by the release')")
"""

PROCFILE = """\
web: gunicorn app:app --log-file -
release: python init_db.py
worker: python worker.py
"""


def _listeners(port: int) -> set[str]:
    """The addresses TCP sockets listen on at ``port`` on this host (IPv4 and IPv6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            host, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(
                    str(ipaddress.ip_address(bytes.fromhex(host)[::-1])) if len(host) == 8 else host
                )
    return found


def _secret(app: Path) -> None:
    path = app / "kiln.toml"
    text = path.read_text().replace("[secrets]\n", '[secrets]\nDATABASE_PATH = "env:APP_DB"\n', 1)
    path.write_text(text)


@pytest.mark.timeout(300)
def test_a_heroku_procfile_app_on_the_first_try(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, kiln init ignored the Procfile: no release ran, so the table did not exist
    and every request failed (500)."""
    app = tmp_path / "greeter"
    app.mkdir()
    (app / "requirements.txt").write_text("flask==3.0.3\ngunicorn==23.0.0\n")
    main = app / "app.py"
    main.write_text(APP)
    (app / "init_db.py").write_text(INIT_DB)
    (app / "worker.py").write_text("print('a background worker kiln does not run')\n")
    (app / "Procfile").write_text(PROCFILE)
    monkeypatch.setenv("APP_DB", str(tmp_path / "app.sqlite3"))

    def change() -> None:
        main.write_text(APP.replace('"v1"', '"v2"'))

    def check(body: bytes) -> bool:
        return json.loads(body)["greeting"] == "made by the release"

    kiln, _ = first_try(app, "/", change, check, configure=_secret)
    toml = (app / "kiln.toml").read_text()
    assert 'run = "python3 -m gunicorn --bind $HOST:$PORT app:app --log-file -"' in toml
    assert 'release = "python3 init_db.py"' in toml and 'WEB_CONCURRENCY = "2"' in toml
    assert "worker process is not run by kiln" in toml
    # gunicorn alone would bind 0.0.0.0:$PORT; each instance listens on its $HOST only
    status = json.loads(kiln("status", "--json").stdout)
    addresses = [i["address"] for i in status["instances"] if i["state"] == "healthy"]
    assert addresses and all(a.startswith("127.0.0.1:") for a in addresses), addresses
    for address in addresses:
        assert _listeners(int(address.rsplit(":", 1)[1])) == {"127.0.0.1"}
    history = json.loads(kiln("history", "--json").stdout)
    releases = [h["figures"].get("release") for h in history if h["kind"] == "deploy"]
    assert releases and all(r and r["command"] == "python3 init_db.py" for r in releases)


FASTAPI_APP = """\
from fastapi import FastAPI

api = FastAPI()


@api.get("/items/{item}")
def read(item: int) -> dict[str, int]:
    return {"item": item, "twice": item * 2}
"""


@pytest.mark.timeout(300)
def test_a_fastapi_procfile_on_uvicorn_with_a_port_default(tmp_path: Path) -> None:
    """'--host=0.0.0.0 --port=${PORT:-5000}' as Render and Heroku guides write it: the
    host becomes $HOST, the port stays the instance's. The app object is 'api' in a
    package: detection finds it too, and the Procfile's line is the one that runs."""
    app = tmp_path / "items"
    (app / "service").mkdir(parents=True)
    (app / "requirements.txt").write_text("fastapi==0.115.6\nuvicorn==0.34.0\n")
    (app / "service" / "__init__.py").write_text(FASTAPI_APP)
    (app / "Procfile").write_text(
        "web: uvicorn service:api --host=0.0.0.0 --port=${PORT:-5000} --proxy-headers\n"
    )
    kiln = Kiln(app)
    port = free_port()
    init = json.loads(kiln("init", "--json").stdout)
    assert init["kind"] == "FastAPI" and init["run_source"] == "Procfile"
    assert init["run"] == (
        "python3 -m uvicorn service:api --host=$HOST --port=${PORT:-5000} --proxy-headers"
    )
    review(app, port)
    deploy(kiln)
    status, body = get(port, "/items/21")
    assert status == 200 and json.loads(body) == {"item": 21, "twice": 42}, body[:300]
    instances = json.loads(kiln("status", "--json").stdout)["instances"]
    for address in [i["address"] for i in instances if i["state"] == "healthy"]:
        assert _listeners(int(address.rsplit(":", 1)[1])) == {"127.0.0.1"}


NODE_SERVER = """\
const http = require('node:http');
const fs = require('node:fs');
const ms = require('ms');
http.createServer((req, res) => {
  const seeded = fs.readFileSync(process.env.SEED_PATH, 'utf8');
  res.end(`${seeded} ${ms(60000)}\\n`);
}).listen(Number(process.env.PORT), process.env.HOST);
"""


@pytest.mark.timeout(300)
def test_a_yarn_project_whose_procfile_runs_yarn_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """'web: yarn start' on a host without yarn (the build runs it through npx): the
    instances run 'npm start', the same script; 'release: node seed.js' runs before."""
    app = tmp_path / "seeded"
    app.mkdir()
    package = {"name": "seeded", "private": True, "dependencies": {"ms": "^2.0.0"}}
    package["scripts"] = {"start": "node server.js"}
    (app / "package.json").write_text(json.dumps(package))
    (app / "yarn.lock").write_text(_LOCKS["yarn.lock"])
    (app / "server.js").write_text(NODE_SERVER)
    (app / "seed.js").write_text(
        "require('node:fs').writeFileSync(process.env.SEED_PATH, 'seeded by the release');\n"
    )
    (app / "Procfile").write_text("web: yarn start\nrelease: node seed.js\n")
    monkeypatch.setenv("SEED_FILE", str(tmp_path / "seed.txt"))
    kiln = Kiln(app)
    port = free_port()
    init = json.loads(kiln("init", "--json").stdout)
    assert init["run"] == "npm start" and init["release"] == "node seed.js"
    review(app, port)
    toml = (app / "kiln.toml").read_text()
    (app / "kiln.toml").write_text(
        toml.replace("[secrets]\n", '[secrets]\nSEED_PATH = "env:SEED_FILE"\n', 1)
    )
    deploy(kiln)
    assert get(port, "/") == (200, b"seeded by the release 1m\n")
