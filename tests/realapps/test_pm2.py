"""A Node app started by pm2-runtime, pm2's own entry for containers.

pm2 keeps its state in ``$PM2_HOME`` (``~/.pm2``), and the instances of one
agent share its HOME: a second instance's pm2-runtime stopped the first's app
and exited ("Script already launched"), so the first deploy of two instances
never came up. Each instance now has its own runtime directory, and
``PM2_HOME`` points there (kiln.local.lifecycle.runtime_dir).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from realkit import first_try, get

pytestmark = pytest.mark.slow

SERVER = """\
const http = require('http');
const body = 'release one from pid ';
http.createServer((req, res) => {
  res.setHeader('Content-Type', 'text/plain');
  res.end(body + process.pid + '\\n');
}).listen(Number(process.env.PORT), process.env.HOST, () => console.log('listening'));
"""


@pytest.mark.timeout(600)
def test_a_pm2_runtime_app_on_the_first_try(tmp_path: Path) -> None:
    app = tmp_path / "api"
    app.mkdir()
    package = {
        "name": "api",
        "version": "1.0.0",
        "private": True,
        "scripts": {"start": "pm2-runtime start server.js"},
        "dependencies": {"pm2": "^5.4.0"},
    }
    (app / "package.json").write_text(json.dumps(package, indent=2))
    server = app / "server.js"
    server.write_text(SERVER)

    def change() -> None:
        server.write_text(SERVER.replace("release one", "release two"))

    _kiln, port = first_try(app, "/", change, lambda body: body.startswith(b"release one"))
    pids = {get(port, "/")[1] for _ in range(8)}
    assert len(pids) == 2, pids  # both instances' apps answer, each its own process
