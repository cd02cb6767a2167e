"""Start acebook as a real process on a free port, with its own SQLite file."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

APP_DIR = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Running:
    """One acebook process and a tiny HTTP client for it."""

    proc: subprocess.Popen[str]
    port: int
    started_in: float
    env: dict[str, str] = field(default_factory=dict)
    output: str | None = None
    errors: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(
        self, path: str, data: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(self.url + path, data=data, headers=headers or {})
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(req, timeout=5) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read()

    def get_json(self, path: str) -> Any:
        status, _, body = self.request(path)
        assert status == 200, body
        return json.loads(body)

    def post_json(self, path: str, payload: Any) -> tuple[int, Any]:
        data = json.dumps(payload).encode()
        status, _, body = self.request(path, data, {"Content-Type": "application/json"})
        return status, json.loads(body)

    def stop(self) -> int:
        """SIGTERM (as kiln does), wait, and keep what the process printed."""
        if self.output is None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                out, err = self.proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out, err = self.proc.communicate()
            self.output, self.errors = out, err
        return self.proc.returncode


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def start(env: dict[str, str], timeout: float = 10.0) -> Running:
    """Start app.py with HOST/PORT like kiln does; return once /health answers."""
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    full_env |= {"HOST": "127.0.0.1", "PORT": str(port), "PYTHONDONTWRITEBYTECODE": "1"} | env
    began = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, str(APP_DIR / "app.py")],
        cwd=APP_DIR,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    running = Running(proc, port, 0.0, env)
    while time.monotonic() - began < timeout:
        if proc.poll() is not None:
            return running
        try:
            with urllib.request.urlopen(running.url + "/health", timeout=1) as resp:
                if resp.status == 200:
                    running.started_in = time.monotonic() - began
                    return running
        except OSError:
            time.sleep(0.01)
    running.stop()
    raise AssertionError(f"acebook did not answer /health within {timeout}s")


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return "sqlite://" + str(tmp_path / "acebook.db")  # sqlite:///abs/path/acebook.db


@pytest.fixture
def launch(database_url: str) -> Iterator[Callable[..., Running]]:
    """Start as many acebook processes as a test wants; all are stopped after it."""
    started: list[Running] = []

    def run(**env: str) -> Running:
        running = start({"DATABASE_URL": database_url} | env)
        started.append(running)
        return running

    yield run
    for running in started:
        running.stop()


@pytest.fixture
def app(launch: Callable[..., Running]) -> Running:
    return launch(APP_VERSION="v7", KILN_IMAGE="img-0123456789ab", KILN_INSTANCE_ID="i-test1")
