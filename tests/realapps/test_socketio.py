"""Socket.IO (npm socket.io 4 + express) on two instances, with real socket.io-client.

The client starts with HTTP long-polling, as it does by default: each poll is
a new request, and only the instance that opened the session knows it, so
without session affinity most clients fail ("xhr poll error"). `kiln init`
sees socket.io and sets [fleet] sticky = "cookie"; engine.io-client keeps
cookies in node when asked (`withCredentials: true`), as a browser does.
Then a rolling deploy replaces both instances under connected clients: they
move over with Socket.IO's own reconnect, and nothing else fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from realkit import deploy, free_port, get, npm_tools, review

from kilntest import Kiln
from ui.webdriver import Browser, available

N = 10
SERVER = """\
const PAGE = `PAGE_HTML`;
const express = require('express');
const http = require('http');
const { Server } = require('socket.io');
const app = express();
app.get('/healthz', (req, res) => res.send('ok'));
app.get('/', (req, res) => res.send('VERSION'));
app.get('/page', (req, res) => res.type('html').send(PAGE));
const server = http.createServer(app);
const io = new Server(server);
io.on('connection', (s) => {
  s.on('whoami', (ack) => ack(process.env.KILN_INSTANCE_ID));
});
server.listen(process.env.PORT, process.env.HOST);
"""

# A browser page: five sockets of its own (forceNew), polling first, as a browser keeps cookies.
PAGE = """<script src="/socket.io/socket.io.js"></script><script>
window.seen = [];
for (let i = 0; i < 5; i++) {
  const s = io({ forceNew: true, reconnection: false });
  const first = () => s.io.engine.transport.name;
  let began = null;
  s.io.once('open', () => { began = first(); });
  s.on('connect', () => s.emit('whoami', (id) => window.seen.push([id, began])));
  s.on('connect_error', (e) => window.seen.push(['error', e.message]));
}
</script>"""

# N clients, polling first; "ready" once all are connected, then each asks who serves it
# every 200 ms until the stop file appears, and a summary once all are connected again.
CLIENT = """\
const fs = require('fs');
const { io } = require('socket.io-client');
const [url, n, stopFile] = [process.argv[2], +process.argv[3], process.argv[4]];
const s = { connectErrors: [], disconnects: 0, lostAcks: 0, acks: 0, polledFirst: 0 };
const clients = [];
let ready = false;
function whoami(c) {
  return new Promise((resolve) => {
    const epoch = c.epoch;
    c.sock.timeout(5000).emit('whoami', (err, id) => {
      if (err) { if (c.epoch === epoch) s.lostAcks++; resolve(null); return; }
      s.acks++; c.on = id; resolve(id);
    });
  });
}
for (let i = 0; i < n; i++) {
  const sock = io(url, { withCredentials: true, reconnectionDelay: 200, timeout: 10000 });
  const c = { sock, epoch: 0, on: null };
  sock.io.once('open', () => { if (sock.io.engine.transport.name === 'polling') s.polledFirst++; });
  sock.on('connect_error', (e) => s.connectErrors.push(e.message));
  sock.on('disconnect', () => { c.epoch++; s.disconnects++; });
  clients.push(c);
}
const all = () => clients.every((c) => c.sock.connected);
async function main() {
  const t0 = Date.now();
  while (!all() && Date.now() - t0 < 30000) await new Promise((r) => setTimeout(r, 50));
  const before = await Promise.all(clients.map(whoami));
  console.log(JSON.stringify({ ready: all(), before, errors: s.connectErrors }));
  while (!fs.existsSync(stopFile)) {
    await Promise.all(clients.filter((c) => c.sock.connected).map(whoami));
    await new Promise((r) => setTimeout(r, 200));
  }
  const t1 = Date.now();
  while (!all() && Date.now() - t1 < 30000) await new Promise((r) => setTimeout(r, 50));
  const after = await Promise.all(clients.map(whoami));
  const upgraded = clients.filter((c) => c.sock.io.engine.transport.name === 'websocket').length;
  console.log(JSON.stringify({ ...s, after, upgraded, connected: all() }));
  process.exit(0);
}
main();
"""


def _status_ids(kiln: Kiln) -> set[str]:
    doc: dict[str, Any] = json.loads(kiln("status", "--json").stdout)
    return {i["id"] for i in doc["instances"] if i.get("state") == "healthy"}


def test_socketio_clients_connect_and_survive_a_rolling_deploy(tmp_path: Path) -> None:
    app = tmp_path / "chat"
    app.mkdir()
    package = {
        "name": "chat",
        "private": True,
        "scripts": {"start": "node server.js"},
        "dependencies": {"express": "4.22.3", "socket.io": "4.8.4"},
    }
    (app / "package.json").write_text(json.dumps(package, indent=2))
    server = SERVER.replace("PAGE_HTML", PAGE)
    (app / "server.js").write_text(server.replace("VERSION", "v1"))
    client = tmp_path / "client.js"
    client.write_text(CLIENT)
    env = {**os.environ, "NODE_PATH": str(npm_tools("socket.io-client@4.8.4"))}

    kiln = Kiln(app)
    init = kiln("init")
    assert "socket.io in package.json" in init.stdout
    toml = (app / "kiln.toml").read_text()
    assert 'sticky = "cookie"' in toml and 'path = "/healthz"' in toml
    port = free_port()
    review(app, port)
    deploy(kiln)
    assert get(port, "/") == (200, b"v1")
    old = _status_ids(kiln)
    assert len(old) == 2

    stop = tmp_path / "stop"
    url = f"http://127.0.0.1:{port}"
    with subprocess.Popen(
        ["node", str(client), url, str(N), str(stop)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            first = json.loads(proc.stdout.readline())
            assert first["ready"] and first["errors"] == [], first  # N/N connected
            assert set(first["before"]) == old  # balanced over both instances, then pinned
            (app / "server.js").write_text(server.replace("VERSION", "v2"))
            started = time.monotonic()
            second = deploy(kiln)
            rolled = time.monotonic() - started
            time.sleep(1.0)  # a few more rounds on the new instances
            stop.touch()
            summary = json.loads(proc.stdout.readline())
            proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
    new = _status_ids(kiln)
    assert second["outcome"] == "succeeded" and not new & old
    print(f"rolled in {rolled:.1f}s under {N} clients: {summary}")
    assert summary["polledFirst"] == N  # every session started on long-polling
    assert summary["connected"] and summary["connectErrors"] == [], summary
    assert summary["lostAcks"] == 0, summary  # nothing lost on a connection that stayed up
    assert set(summary["after"]) <= new, summary  # every client moved to the new instances
    assert summary["disconnects"] >= N  # each left an old instance once, by reconnecting
    if available():  # a real browser: it keeps the cookie itself, and scripts cannot read it
        with Browser(tmp_path / "chromium") as browser:
            browser.go(f"{url}/page")
            browser.wait_for("return window.seen.length === 5", 60, "5 sockets answering")
            seen = browser.js("return window.seen")
            assert all(began == "polling" and id_ in new for id_, began in seen), seen
            assert "kiln_" not in browser.js("return document.cookie")  # HttpOnly


FLASK_APP = """\
import os

from flask import Flask
from flask_socketio import SocketIO

app = Flask(__name__)
socketio = SocketIO(app)


@app.route("/healthz")
def healthz():
    return "ok"


@socketio.on("whoami")
def whoami():
    return os.environ["KILN_INSTANCE_ID"]
"""


def test_flask_socketio_under_gunicorn_connects_every_client(tmp_path: Path) -> None:
    """The same for Flask-SocketIO (a Python server the JS client speaks to): `kiln init`
    makes it sticky and runs one threaded gunicorn worker per instance, since gunicorn's
    workers would split a client's session between processes as instances do."""
    app = tmp_path / "chat"
    app.mkdir()
    (app / "app.py").write_text(FLASK_APP)
    (app / "requirements.txt").write_text(
        "flask==3.1.3\nflask-socketio==5.7.0\nsimple-websocket==1.1.0\ngunicorn==23.0.0\n"
    )
    client = tmp_path / "client.js"
    client.write_text(CLIENT)
    env = {**os.environ, "NODE_PATH": str(npm_tools("socket.io-client@4.8.4"))}
    kiln = Kiln(app)
    init = kiln("init")
    assert "flask-socketio in requirements.txt" in init.stdout
    toml = (app / "kiln.toml").read_text()
    assert 'sticky = "cookie"' in toml and "--workers 1 --threads 100 " in toml
    port = free_port()
    review(app, port)
    deploy(kiln)
    stop = tmp_path / "stop"
    stop.touch()  # connect, ask each instance once, report
    done = subprocess.run(
        ["node", str(client), f"http://127.0.0.1:{port}", str(N), str(stop)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    first, summary = (json.loads(line) for line in done.stdout.splitlines()[:2])
    assert first["ready"] and first["errors"] == [], (first, done.stderr)
    assert set(first["before"]) == _status_ids(kiln)  # both instances serve sessions
    assert summary["polledFirst"] == N and summary["lostAcks"] == 0, summary
    assert summary["connected"] and summary["connectErrors"] == [], summary
