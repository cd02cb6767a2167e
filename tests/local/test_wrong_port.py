"""An app that ignores $PORT: the failed deploy says where it listens, not only its log.

nodejs.org's hello world listens on a fixed port. With one instance its
health checks are refused; with two, the second dies with EADDRINUSE. Real
node processes, the real agent and CLI, from `kiln init` on.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from localtest import free_port, write_config

from kiln.home import Home
from kiln.local.listening import listening_ports, port_in_use
from kilntest import Kiln

pytestmark = pytest.mark.slow

HELLO = """\
const http = require('node:http');
const hostname = '127.0.0.1';
const port = {port};
const server = http.createServer((req, res) => {{
  res.statusCode = 200;
  res.end('Hello World\\n');
}});
server.listen(port, hostname, () => {{
  console.log(`Server running at http://${{hostname}}:${{port}}/`);
}});
"""


def _app(tmp_path: Path, size: int) -> tuple[Kiln, int]:
    if shutil.which("node") is None:
        pytest.skip("node is not installed (scripts/test-deps.sh installs it)")
    fixed = free_port()
    app = tmp_path / f"hello{size}"
    app.mkdir()
    (app / "index.js").write_text(HELLO.format(port=fixed))
    kiln = Kiln(app)
    init = kiln("init").stdout
    assert f"warning: index.js listens on port {fixed}" in init, init
    toml = (app / "kiln.toml").read_text()
    for old, new in (
        ('listen = "127.0.0.1:8080"', f'listen = "127.0.0.1:{free_port()}"'),
        ("size = 2", f"size = {size}"),
        ('grace = "20s"', 'grace = "2s"'),
        ('interval = "1s"', 'interval = "250ms"'),
    ):
        assert old in toml, old
        toml = toml.replace(old, new)
    (app / "kiln.toml").write_text(toml)
    return kiln, fixed


def _failed_deploy(kiln: Kiln) -> str:
    result = kiln("deploy", "--json", ok=False)
    assert result.exit_code == 4, result.stdout + result.stderr
    doc = json.loads(result.stdout)
    assert doc["outcome"] == "rolled back" and doc["gate"] == "boot", doc
    return str(doc["message"])


def test_one_instance_listening_elsewhere_is_named(
    local_home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kiln, fixed = _app(tmp_path, 1)
    message = _failed_deploy(kiln)
    assert f"listens on :{fixed}, not on $PORT=" in message, message
    assert "the app must listen on $PORT (and $HOST)" in message


def test_a_second_instance_dying_with_eaddrinuse_is_named(local_home: Home, tmp_path: Path) -> None:
    kiln, fixed = _app(tmp_path, 2)
    message = _failed_deploy(kiln)
    assert (
        f"listens on :{fixed}, not on $PORT=" in message
        or f"port {fixed} was already in use (EADDRINUSE), and its $PORT is " in message
    ), message
    assert "the app must listen on $PORT (and $HOST)" in message


@pytest.mark.parametrize(
    ("log", "said"),
    [
        ("Error: listen EADDRINUSE: address already in use :::3000\n", "port 3000 was"),
        (
            "[Errno 98] error while attempting to bind on address ('0.0.0.0', 8000): address "
            "already in use\n",
            "port 8000 was",
        ),
        ("[ERROR] Connection in use: ('0.0.0.0', 5000)\n", "port 5000 was"),
        ("portend.Timeout: Port 8080 not free on 127.0.0.1.\n", "port 8080 was"),  # CherryPy
        ("OSError: [Errno 98] Address already in use\n", "the address it listens on was"),
        ("Error: listen EADDRINUSE: address already in use 127.0.0.1:4100\n", "its $PORT=4100"),
    ],
)
def test_address_in_use_in_the_log(log: str, said: str) -> None:
    found = port_in_use("some output\n" + log + "Node.js v20\n", 4100)
    assert found is not None and said in found
    assert port_in_use("listening on 4100\n", 4100) is None


def test_listening_ports_of_a_session(tmp_path: Path) -> None:
    """A child leading its own session, as an instance does: CI may run us in session 0."""
    import subprocess
    import sys
    import time

    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import socket, sys, time\n"
            "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
            "print(s.getsockname()[1], flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        deadline = time.monotonic() + 10
        while port not in listening_ports(child.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert port in listening_ports(child.pid)
        assert listening_ports(0) == set()  # no session: nothing, not every process's
    finally:
        child.kill()
        child.wait()


SLOW_BOOT = """\
import http.server, os, time
time.sleep(120)  # a lifespan loading a model, a slow import: longer than the grace
http.server.ThreadingHTTPServer(
    (os.environ["HOST"], int(os.environ["PORT"])), http.server.SimpleHTTPRequestHandler
).serve_forever()
"""


def test_an_app_still_booting_when_grace_ends_is_told_to_raise_grace(
    local_home: Home, tmp_path: Path
) -> None:
    """Before, the gate said only 'unhealthy: cannot connect: Connection refused', as for
    an app that crashed; the log tail showed the app waiting on its startup."""
    app = tmp_path / "slow"
    write_config(app, free_port()).write_text(
        (app / "kiln.toml").read_text().replace('grace = "10s"', 'grace = "2s"')
    )
    (app / "app.py").write_text(SLOW_BOOT)
    message = _failed_deploy(Kiln(app))
    assert "nothing in it listens yet when its [health] grace of 2s ends" in message, message
    assert "if the app takes longer to boot, raise grace; it must listen on $PORT=" in message
