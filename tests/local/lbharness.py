"""Real backends behind the in-process load balancer, and a raw-socket client.

Each backend records every request line it parses to a log, and answers with
an echo of it (``ECHO <method> <target> host=<Host>``), so a test can match
what the backend saw against what every client received.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httptools

from kiln.local.lb import Balancer

T = TypeVar("T")

RECORDING_APP = r"""
import os, sys

LOG = os.environ["RECORD_LOG"]


def record(line):
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode("latin-1"))
    finally:
        os.close(fd)


def echo(method, target, host):
    line = f"{method} {target}"
    record(line)
    return f"ECHO {line} host={host}".encode("latin-1")


def app(environ, start_response):
    target = environ.get("RAW_URI") or environ.get("REQUEST_URI") or environ["PATH_INFO"]
    body = echo(environ["REQUEST_METHOD"], target, environ.get("HTTP_HOST"))
    if environ.get("wsgi.input_terminated"):  # chunked, de-chunked by the server
        environ["wsgi.input"].read()
    else:
        environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def stdlib(port):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def answer(self):
            body = echo(self.command, self.path, self.headers.get("Host"))
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                while size := int(self.rfile.readline().split(b";")[0], 16):  # as apps do
                    self.rfile.read(size + 2)
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
            else:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = do_OPTIONS = do_PATCH = answer

    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    kind, port = sys.argv[1], int(sys.argv[2])
    if kind == "stdlib":
        stdlib(port)
    else:
        from werkzeug.serving import run_simple

        run_simple("127.0.0.1", port, app, threaded=True)
"""

BACKENDS = ("stdlib", "werkzeug", "gunicorn")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port} after {timeout}s")


class Backend:
    """One recording backend process: its port and what it saw."""

    def __init__(self, kind: str, directory: Path, threads: int = 8) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "recording_app.py").write_text(RECORDING_APP)
        self.kind = kind
        self.log = directory / f"{kind}.log"
        self.log.touch()
        self.port = free_port()
        env = {**os.environ, "RECORD_LOG": str(self.log)}
        if kind == "gunicorn":
            cmd = [sys.executable, "-m", "gunicorn", "-k", "gthread", "--threads", str(threads)]
            cmd += ["-w", "1", "--keep-alive", "75", "-b", f"127.0.0.1:{self.port}"]
            cmd += ["recording_app:app"]
        else:
            cmd = [sys.executable, "recording_app.py", kind, str(self.port)]
        self.proc = subprocess.Popen(
            cmd, cwd=directory, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self._seen = 0
        try:
            wait_port(self.port)
        except AssertionError:
            self.stop()
            raise

    def seen(self) -> list[str]:
        """Request lines recorded since the last call."""
        lines = self.log.read_text("latin-1").splitlines()
        new, self._seen = lines[self._seen :], len(lines)
        return new

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


class LoopThread:
    """An event loop in a thread, for servers the blocking test code talks to."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@contextlib.contextmanager
def balancer(loop: LoopThread, *ports: int, **options: Any) -> Iterator[tuple[Balancer, int]]:
    """A Balancer on ``loop`` in front of instances on ``ports``; (balancer, its port)."""
    lb = Balancer("t", "round-robin", **options)
    port = free_port()

    async def start() -> None:
        await lb.start("127.0.0.1", port)
        for n, backend_port in enumerate(ports):
            lb.add(f"i{n}", "127.0.0.1", backend_port)
        lb.set_routable([f"i{n}" for n in range(len(ports))])

    loop.run(start())
    try:
        yield lb, port
    finally:
        loop.run(lb.close())


class _Responses:
    """Splits bytes from the balancer into responses (status, body) with httptools."""

    def __init__(self) -> None:
        self.done: list[tuple[int, bytes]] = []
        self._body = b""
        self._parser = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        self._body = b""

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        self.done.append((self._parser.get_status_code(), self._body))

    def feed(self, data: bytes) -> None:
        self._parser.feed_data(data)


def exchange(
    port: int, raw: bytes, *, then: bytes | None = None, timeout: float = 5.0
) -> list[tuple[int, bytes]]:
    """Send ``raw``; once an answer came, send ``then`` (if the connection is still open).

    Reads until the balancer closes the connection (``then`` should ask it
    to), or ``timeout``; returns every complete response, in order.
    """
    responses = _Responses()
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        sent_then = then is None
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                break
            if not data:
                break
            try:
                responses.feed(data)
            except httptools.HttpParserError:
                responses.done.append((0, data))
                break
            if not sent_then and responses.done and then is not None:
                sent_then = True
                with contextlib.suppress(OSError):
                    sock.sendall(then)
    return responses.done


class BalancerProcess:
    """The real balancer process (``python -m kiln.local.lbproc``, on uvloop when
    installed), serving one fleet per listen port, configured over its control
    socket as the agent does."""

    def __init__(self, home: Path) -> None:
        from kiln.home import Home
        from kiln.local import lbproc

        self.home = Home(home)
        self.log = lbproc.log_path(self.home)
        self.home.agent_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "kiln.local.lbproc", "--home", str(home)]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        self.socket = lbproc.socket_path(self.home)
        self.fleets: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + 30.0
        # until it answers: a predecessor in the same home leaves its socket file behind,
        # so the file existing says nothing (a loaded CI run connected to it, refused)
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"the balancer did not start: {self.log.read_text()}")
            time.sleep(0.05)

    def _answers(self) -> bool:
        try:
            self.call("hello")
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        return True

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        """One control request, answered."""
        import json

        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(30.0)
            sock.connect(str(self.socket))
            sock.sendall(json.dumps({"op": op, **fields}).encode() + b"\n")
            answer = b""
            while not answer.endswith(b"\n"):
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
        reply: dict[str, Any] = json.loads(answer)
        assert reply.pop("ok"), reply
        return reply

    def serve(self, *ports: int, limits: dict[str, float] | None = None) -> int:
        """A fleet of the instances on ``ports`` on a port of its own; that port."""
        name = f"f{len(self.fleets)}"
        port = free_port()
        ids = [f"{name}i{n}" for n in range(len(ports))]
        self.fleets[name] = {
            "listen": ["127.0.0.1", port],
            "policy": "round-robin",
            "known": ids,
            "backends": {i: ["127.0.0.1", p] for i, p in zip(ids, ports, strict=True)},
            "routable": ids,
            "limits": limits or {},
        }
        answer = self.call("configure", fleets=self.fleets)
        assert answer["listening"][name], answer
        wait_port(port)
        return port

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@contextlib.contextmanager
def balancer_process(home: Path) -> Iterator[BalancerProcess]:
    process = BalancerProcess(home)
    try:
        yield process
    finally:
        process.stop()
