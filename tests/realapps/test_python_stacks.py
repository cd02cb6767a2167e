"""Python stacks that are not a WSGI/ASGI object: Streamlit (PyPI), through kiln init as written."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
from pathlib import Path

import pytest
from realkit import SYSTEM_PYTHON, first_try

from kilntest import Kiln

pytestmark = pytest.mark.slow

STREAMLIT_APP = """\
import streamlit as st

st.title("Inventory")
st.write("version 1")
"""


def _websocket_ping(port: int, path: str) -> tuple[bytes, bytes]:
    """Open a WebSocket through the fleet's balancer and ping it: (status line, pong payload)."""
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: streamlit\r\n\r\n"
            ).encode()
        )
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                return data.split(b"\r\n", 1)[0], b""
            data += chunk
        head, rest = data.split(b"\r\n\r\n", 1)
        mask = os.urandom(4)
        payload = b"kiln"
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        sock.sendall(bytes([0x89, 0x80 | len(payload)]) + mask + masked)  # a masked ping
        while True:  # frames the server sends first (none expected) are skipped
            while len(rest) < 2:
                rest += sock.recv(4096)
            opcode, length = rest[0] & 0x0F, rest[1] & 0x7F
            while len(rest) < 2 + length:
                rest += sock.recv(4096)
            frame, rest = rest[2 : 2 + length], rest[2 + length :]
            if opcode == 0xA:
                return head.split(b"\r\n", 1)[0], frame


# A browser's first message: run the script. Its output comes back as ForwardMsgs.
SESSION = """\
import sys
from streamlit.proto.BackMsg_pb2 import BackMsg
from websockets.sync.client import connect

rerun = BackMsg()
rerun.rerun_script.query_string = ""
with connect(sys.argv[1], subprotocols=["streamlit"], open_timeout=30) as ws:
    ws.send(rerun.SerializeToString())
    for _ in range(50):
        frame = ws.recv(timeout=60)
        if b"version 1" in frame:
            print("rendered")
            break
"""


def _streamlit_session(kiln: Kiln, port: int) -> str:
    """A Streamlit session through the balancer, with the image's own client libraries."""
    status = json.loads(kiln("status", "--json").stdout)
    live = [i for i in status["instances"] if i["state"] == "healthy"]
    deps = Path(os.environ["KILN_HOME"]) / "instances" / live[0]["id"] / "deps"
    done = subprocess.run(
        [SYSTEM_PYTHON, "-c", SESSION, f"ws://127.0.0.1:{port}/_stcore/stream"],
        env={**os.environ, "PYTHONPATH": str(deps)},
        capture_output=True,
        text=True,
        timeout=180,
    )
    return done.stdout.strip() or done.stderr[-2000:]


@pytest.mark.timeout(900)  # a 470 MB install (pyarrow, pandas) baked, 3 deploys of 2 instances
def test_streamlit_on_the_first_try(tmp_path: Path) -> None:
    app = tmp_path / "inventory"
    app.mkdir()
    (app / "requirements.txt").write_text("streamlit>=1.40,<2\n")
    script = app / "app.py"
    script.write_text(STREAMLIT_APP)

    def change() -> None:
        script.write_text(STREAMLIT_APP.replace("version 1", "version 2"))

    kiln, port = first_try(app, "/", change, lambda body: b"<title>Streamlit</title>" in body)
    toml = (app / "kiln.toml").read_text()
    assert "python3 -m streamlit run app.py --server.address $HOST --server.port $PORT" in toml
    assert 'path = "/_stcore/health"' in toml and 'sticky = "cookie"' in toml
    status, pong = _websocket_ping(port, "/_stcore/stream")
    assert (status, pong) == (b"HTTP/1.1 101 Switching Protocols", b"kiln")
    assert _streamlit_session(kiln, port) == "rendered"  # rolled back: version 1 runs


SANIC_APP = """\
from sanic import Sanic
from sanic.response import json

app = Sanic("orders")


@app.get("/orders")
async def orders(request):
    return json({"orders": [], "version": 1})


@app.get("/healthz")
async def healthz(request):
    return json({"ok": True})
"""


def test_sanic_on_its_own_server_on_the_first_try(tmp_path: Path) -> None:
    app = tmp_path / "orders"
    app.mkdir()
    (app / "requirements.txt").write_text("sanic>=23.12,<26\n")
    server = app / "server.py"
    server.write_text(SANIC_APP)

    def change() -> None:
        server.write_text(SANIC_APP.replace('"version": 1', '"version": 2'))

    first_try(app, "/orders", change, lambda body: b'"orders":[]' in body)
    toml = (app / "kiln.toml").read_text()
    assert "python3 -m sanic server:app --host $HOST --port $PORT" in toml
    assert 'path = "/healthz"' in toml
