"""An app that writes into its own directory: `kiln drift` names the `writable` that fits.

A SQLite file next to the code and an uploads/ directory are what a new user's
Flask or Django app writes; drift reports them like tampering, and a reader
could `--replace` instances for what the app does by design. Real processes,
the real agent and CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from localtest import free_port, write_config

from kiln.home import Home
from kilntest import Kiln

pytestmark = pytest.mark.slow

WRITER = """\
import http.server, os, sqlite3
sqlite3.connect("app.db").execute("create table if not exists hits (t real)")
os.makedirs("uploads/2026", exist_ok=True)
open("uploads/2026/avatar.png", "wb").write(b"png")


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")


address = (os.environ["HOST"], int(os.environ["PORT"]))
http.server.ThreadingHTTPServer(address, Health).serve_forever()
"""


def test_drift_of_files_the_app_adds_names_the_writable_that_covers_them(
    local_home: Home, tmp_path: Path
) -> None:
    app = tmp_path / "writer"
    write_config(app, free_port())
    (app / "app.py").write_text(WRITER)
    kiln = Kiln(app)
    kiln("deploy")
    drift = kiln("drift", ok=False)
    assert drift.exit_code == 6, drift.stdout + drift.stderr
    assert "added     app.db" in drift.stdout and "uploads/2026/avatar.png" in drift.stdout
    note = 'list them in [app] writable = ["app.db", "uploads/"] (drift ignores those)'
    assert note in drift.stdout, drift.stdout
    toml = (app / "kiln.toml").read_text()
    (app / "kiln.toml").write_text(
        toml.replace(
            'run = "python3 app.py"', 'run = "python3 app.py"\nwritable = ["app.db", "uploads/"]'
        )
    )
    clean = kiln("drift", "--json")
    assert json.loads(clean.stdout)["drifted"] == 0
    assert "writable" not in kiln("drift").stdout  # no note when nothing drifted
