"""y-websocket's server (npm): WebSocket upgrades through kiln's load balancer, rolled out."""

from __future__ import annotations

import base64
import json
import os
import socket
from pathlib import Path

from realkit import first_try


def _handshake(port: int) -> bytes:
    """Open a WebSocket through the fleet's address; the first line of the answer."""
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            (
                "GET /my-room HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    return head.split(b"\r\n", 1)[0]


def test_a_websocket_server_on_the_first_try(tmp_path: Path) -> None:
    app = tmp_path / "collab"
    app.mkdir()
    package = {
        "name": "collab",
        "private": True,
        "scripts": {"start": "y-websocket"},
        "dependencies": {"y-websocket": "1.5.4"},
    }
    (app / "package.json").write_text(json.dumps(package, indent=2))
    (app / "README.md").write_text("v1\n")

    def change() -> None:
        (app / "README.md").write_text("v2\n")

    _kiln, port = first_try(app, "/", change, lambda body: body.strip() == b"okay")
    assert _handshake(port) == b"HTTP/1.1 101 Switching Protocols"
    assert 'run = "npm start"' in (app / "kiln.toml").read_text()
