"""An instance that listens beyond loopback is named in the deploy, whatever its framework.

kiln gives each instance HOST=127.0.0.1. Node's ``listen(port)`` with no host,
as the NestJS scaffold writes it (``app.listen(process.env.PORT ?? 3000)``),
binds every interface anyway, and Sails does it inside ``sails.lift``: each
instance was reachable on the host's own addresses around the balancer, and
nothing said so (a new user saw it with ``ss -ltnp``). The agent now reads
the instance's listening sockets from /proc once it is healthy.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from localtest import free_port, wait_for

from kiln.home import Home
from kiln.local.listening import exposed, listening_ports
from kilntest import Kiln

BIND = (
    "import socket, sys, time\ns = socket.socket(socket.{family})\n"
    "s.bind(({host!r}, {port})); s.listen(); print('up', flush=True); time.sleep(60)\n"
)


@pytest.fixture
def listener() -> Iterator[object]:
    started: list[subprocess.Popen[str]] = []

    def start(family: str, host: str, port: int) -> int:
        code = BIND.format(family=family, host=host, port=port)
        proc = subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True
        )
        started.append(proc)
        assert proc.stdout is not None and proc.stdout.readline() == "up\n"
        return proc.pid

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize(
    ("family", "host", "shown"),
    [("AF_INET", "0.0.0.0", "0.0.0.0:{port}"), ("AF_INET6", "::", "[::]:{port}")],
)
def test_every_interface_is_named(listener: object, family: str, host: str, shown: str) -> None:
    port = free_port()
    pid = listener(family, host, port)  # type: ignore[operator]
    said = exposed(pid, port)
    assert said is not None and said.startswith(f"listens on {shown.format(port=port)}, not only")
    assert exposed(pid, port + 1) is None  # another port is not the instance's $PORT


@pytest.mark.parametrize(("family", "host"), [("AF_INET", "127.0.0.1"), ("AF_INET6", "::1")])
def test_loopback_is_not_named(listener: object, family: str, host: str) -> None:
    port = free_port()
    pid = listener(family, host, port)  # type: ignore[operator]
    assert listening_ports(pid) == {port}
    assert exposed(pid, port) is None


SERVER = """\
const http = require('node:http');
const server = http.createServer((req, res) => res.end('hello\\n'));
server.listen(Number(process.env.PORT ?? 3000));
"""


@pytest.mark.slow
def test_a_node_app_without_a_host_deploys_with_a_warning(local_home: Home, tmp_path: Path) -> None:
    if shutil.which("node") is None:
        pytest.skip("node is not installed (scripts/test-deps.sh installs it)")
    app = tmp_path / "hello"
    app.mkdir()
    (app / "server.js").write_text(SERVER)
    (app / "package.json").write_text(json.dumps({"name": "hello", "main": "server.js"}))
    kiln = Kiln(app)
    init = kiln("init").stdout
    assert "warning: server.js listens on every interface" in init, init
    toml = (app / "kiln.toml").read_text()
    port = free_port()
    for old, new in (
        ('listen = "127.0.0.1:8080"', f'listen = "127.0.0.1:{port}"'),
        ('interval = "1s"', 'interval = "250ms"'),
    ):
        assert old in toml, old
        toml = toml.replace(old, new)
    (app / "kiln.toml").write_text(toml)
    result = kiln("deploy", "--json")
    doc = json.loads(result.stdout)
    assert doc["outcome"] == "succeeded", doc
    (warning,) = doc["warnings"]  # once for the image, not once per instance
    assert " listens on [::]:" in warning and "around kiln's load balancer" in warning, warning
    assert warning in " ".join(result.stderr.split()), result.stderr
    wait_for(lambda: b"hello" in _get(port), 10, "the app through the balancer")


def _get(port: int) -> bytes:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
        body: bytes = response.read()
    return body
