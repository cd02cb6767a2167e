"""Helpers for the local provider tests: a tiny stdlib HTTP app, images of it, waiting.

Import them from here (never from conftest, whose name other test dirs share).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kiln.home import Home
from kiln.image.store import FileEntry, Manifest, Store
from kiln.local import lbproc, procs
from kiln.local.agent import db_path, read_pid
from kiln.local.client import stop_agent
from kiln.local.lblink import BalancerLink
from kiln.local.provider import LocalProvider
from kiln.providers.protocol import InstanceState
from kilntest import Kiln

APP = r"""
import hashlib, json, os, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 1 << 16  # head and body in one segment: no Nagle/delayed-ACK stall

    def log_message(self, *args):
        pass

    def send(self, code, doc):
        data = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        path, _, query = self.path.partition("?")
        if path == "/health":
            return self.send(500 if os.path.exists("unhealthy") else 200, {"ok": True})
        if path == "/slow":
            time.sleep(float(query.partition("=")[2] or 1))
        if path == "/secret":
            digest = hashlib.sha256(os.environ.get("API_TOKEN", "").encode()).hexdigest()
            return self.send(200, {"sha256": digest, "file": os.environ.get("DB_PASSWORD")})
        self.send(200, {
            "instance": os.environ["KILN_INSTANCE_ID"],
            "image": os.environ["KILN_IMAGE"],
            "xff": self.headers.get("X-Forwarded-For"),
            "proto": self.headers.get("X-Forwarded-Proto"),
            "greeting": os.environ.get("GREETING"),
        })

    def do_POST(self):
        if self.headers.get("Transfer-Encoding", "").endswith("chunked"):
            body = b""
            while (size := int(self.rfile.readline().split(b";")[0], 16)):
                body += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send(200, {"instance": os.environ["KILN_INSTANCE_ID"], "size": len(body),
                        "sha256": hashlib.sha256(body).hexdigest()})

ThreadingHTTPServer.daemon_threads = True
server = ThreadingHTTPServer((os.environ["HOST"], int(os.environ["PORT"])), Handler)
print("listening on", os.environ["HOST"], os.environ["PORT"], flush=True)
server.serve_forever()
"""


# The suite's own limit per test is 300 s (pyproject.toml): the subprocess gets less,
# and each test in it less again, so a stuck test is named by the inner run's
# timeout (with its stack) instead of the outer one killing a run whose output is lost.
PURE_LIMIT = 240.0
PURE_TEST_LIMIT = 180.0


def pytest_pure(*args: str, timeout: float = PURE_LIMIT) -> subprocess.CompletedProcess[str]:
    """pytest on ``args`` in a fresh interpreter that imports the Python source of
    every compiled module (``KILN_PURE=1``, kiln.local.compiled): the fallback form
    of the balancer, tested beside the compiled one the suite itself runs.

    Its output (stderr folded into stdout) is kept in a file, so a run killed at
    ``timeout`` still shows how far it got."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}  # not a worker
    limit = min(PURE_TEST_LIMIT, timeout * 0.75)  # the inner timeout fires first
    argv = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider"]
    argv += [f"--timeout={limit:.0f}", "--durations=5", *args]
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(
            argv,
            cwd=Path(__file__).resolve().parents[2],
            env={**env, "KILN_PURE": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
            out.write(f"\n[pytest_pure: killed after {timeout:.0f} s]\n")
        out.seek(0)
        return subprocess.CompletedProcess(argv, code, out.read(), "")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def make_image(
    home: Home,
    run: str | None = None,
    files: dict[str, str] | None = None,
    app: str = "web",
    env: dict[str, str] | None = None,
    packed: bool = False,
) -> str:
    """Store an image straight from file contents (bake is another area's job).

    ``packed``: small objects go into one pack, as a bake stores them (fast for
    images of thousands of files).
    """
    store = Store(home)
    files = {"app.py": APP} if files is None else files
    source = home.tmp / f"src-{os.urandom(4).hex()}"
    entries = []
    with store.objects.batch() if packed else contextlib.nullcontext():
        for name, text in sorted(files.items()):
            path = source / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            digest, size = store.put_file(path)
            entries.append(FileEntry(name, 0o644, size, digest))
    manifest = Manifest(
        app=app,
        run=run or f"{sys.executable} app.py",
        env={"GREETING": "hello", **(env or {})},
        python=sys.executable,
        files=tuple(entries),
    )
    return store.add_image(manifest, {"created": time.time()}).id


def many_files(count: int, size: int = 2048, app: str = APP) -> dict[str, str]:
    """An app of ``count`` more files in 50 packages, like a framework's site-packages."""
    body = "#" * size + "\n"
    return {f"lib/pkg{i % 50}/mod{i}.py": body for i in range(count)} | {"app.py": app}


def write_config(directory: Path, port: int, extra: str = "", name: str = "web") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "kiln.toml"
    path.write_text(
        f"""
[app]
name = "{name}"
run = "python3 app.py"

[health]
path = "/health"
interval = "100ms"
timeout = "5s"
healthy_threshold = 1
unhealthy_threshold = 2
grace = "10s"

[fleet]
drain = "5s"

[provider.local]
listen = "127.0.0.1:{port}"
stop_timeout = "2s"
{extra}
"""
    )
    return path


def http_get(
    port: int, path: str = "/", timeout: float = 30.0, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    """GET through the balancer; ``timeout`` is a ceiling for a busy machine."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(raw)
    except ValueError:
        return response.status, {"text": raw.decode(errors="replace")}


def _recorded_pids(home: Home) -> list[tuple[int, int | None]]:
    """Each recorded instance's pid with its /proc start time (None if unrecorded)."""
    path = db_path(home)
    if not path.exists():
        return []
    with contextlib.closing(sqlite3.connect(path)) as conn:
        rows = conn.execute("SELECT data FROM agent_instances").fetchall()
    records = [json.loads(raw) for (raw,) in rows]
    return [(r["pid"], r.get("pid_start")) for r in records if r.get("pid")]


def _still_ours(pid: int, started: int | None, home: Home) -> bool:
    """Whether ``pid`` is still the process kiln recorded, not a later one given its number.

    pid_max is 32768 on many machines, and a full run starts thousands of processes:
    a pid recorded minutes ago may be an unrelated process now (another test's, or a
    pytest-xdist worker's), which SIGKILL must not touch.
    """
    if started is not None:
        return procs.alive(pid, started)
    return procs.environ_of(pid, None).get("KILN_HOME") == str(home.root)


def kill_everything(home: Home) -> None:
    """Stop the agent, its balancer and its instances however they are doing."""
    with contextlib.suppress(Exception):
        stop_agent(home, stop_instances=True, timeout=30)
    agent_pid = read_pid(home)
    balancer_pid = lbproc.read_pid(home)
    pids = [
        *_recorded_pids(home),
        *((p, None) for p in (agent_pid, balancer_pid) if p),
    ]
    for pid, started in pids:
        if procs.start_time(pid) is None:
            # the leader is gone; its group may not be (no pid is reused while its group lives)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        elif _still_ours(pid, started, home):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def serving(provider: LocalProvider, n: int, fleet: str = "web") -> list[str]:
    """Wait until ``n`` instances are healthy and in service; their ids."""

    def check() -> list[str] | None:
        ids = [i.id for i in provider.describe(fleet).serving()]
        return ids if len(ids) >= n else None

    result: list[str] = wait_for(check, 90, f"{n} instances serving")  # a ceiling: busy machine
    return result


def in_flight(home: Home, instance: str, fleet: str = "web") -> int:
    """Requests the balancer has sent the instance and not yet seen answered."""
    link = BalancerLink(home, dict)

    async def ask() -> int:
        try:
            return await link.outstanding(fleet, instance)
        finally:
            link.close()

    return asyncio.run(ask())


def gone(pid: int) -> bool:
    """The process is gone or a zombie (nobody reaped it yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


__all__ = ["APP", "InstanceState", "Kiln"]
