"""y-websocket's server (npm): WebSocket upgrades through kiln's load balancer, rolled out."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
from pathlib import Path

from realkit import first_try, npm_tools


def _handshake(port: int, path: str = "/my-room") -> bytes:
    """Open a WebSocket through the fleet's address; the first line of the answer."""
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
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


FASTAPI_WS = """\
from fastapi import FastAPI, WebSocket

app = FastAPI()
VERSION = "v1"


@app.get("/")
async def index():
    return {"version": VERSION}


@app.websocket("/ws")
async def echo(websocket: WebSocket):
    await websocket.accept()
    async for text in websocket.iter_text():
        await websocket.send_text(f"{VERSION} {text}")
"""


def test_a_fastapi_websocket_route_when_kiln_adds_uvicorn(tmp_path: Path) -> None:
    """requirements.txt lists only fastapi: the uvicorn kiln adds must speak WebSocket.
    Before, plain uvicorn answered the upgrade with 404 ('No supported WebSocket library
    detected'), though the app works on the author's machine with uvicorn[standard]."""
    app = tmp_path / "chat"
    app.mkdir()
    (app / "requirements.txt").write_text("fastapi==0.115.0\n")
    main = app / "main.py"
    main.write_text(FASTAPI_WS)

    def change() -> None:
        main.write_text(FASTAPI_WS.replace('"v1"', '"v2"'))

    _kiln, port = first_try(app, "/", change, lambda body: b'"version":"v1"' in body)
    assert _handshake(port, "/ws") == b"HTTP/1.1 101 Switching Protocols"
    node_modules = npm_tools("ws@8")
    echo = subprocess.run(
        ["node", "-e", WS_ECHO, f"ws://127.0.0.1:{port}/ws"],
        env={**os.environ, "NODE_PATH": str(node_modules)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert echo.stdout.strip() == "v1 hello", echo.stderr


WS_ECHO = """\
const WebSocket = require('ws');
const ws = new WebSocket(process.argv[1]);
ws.on('open', () => ws.send('hello'));
ws.on('message', (data) => { console.log(String(data)); ws.close(); });
ws.on('error', (err) => { console.error(String(err)); process.exit(1); });
"""
