"""`kiln logs -f` follows an instance's output as it is written."""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import sys
import threading
import time

from localtest import APP, http_get, make_image, serving

from kiln.home import Home
from kiln.local.provider import LocalProvider

CHATTY = APP.replace(
    "def log_message(self, *args):\n        pass",
    "def log_message(self, fmt, *args):\n"
    "        if self.path != '/health':\n"
    "            print('served', self.path, flush=True)",
)


def _reader(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    """Lines of the follower's output as they come (a thread: no select on a buffered pipe)."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(
        target=lambda: [lines.put(line) for line in proc.stdout or []], daemon=True
    ).start()
    return lines


def _read_until(lines: queue.Queue[str], needle: str, timeout: float = 60.0) -> str:
    seen = ""
    deadline = time.monotonic() + timeout
    while needle not in seen and (left := deadline - time.monotonic()) > 0:
        with contextlib.suppress(queue.Empty):
            seen += lines.get(timeout=left)
    return seen


def test_logs_follow_prints_new_lines(
    provider: LocalProvider, local_home: Home, lb_port: int
) -> None:
    """The request is sent as soon as the first lines are shown: a line written
    before the follower watches is printed too (test_logs_follow_start.py)."""
    image = make_image(local_home, files={"app.py": CHATTY})
    provider.launch("web", image, 1)
    (instance,) = serving(provider, 1)
    env = {**os.environ, "KILN_HOME": str(local_home.root)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kiln.cli", "logs", instance, "-f"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        lines = _reader(proc)
        assert "listening on" in _read_until(lines, "listening on")
        assert http_get(lb_port, "/followed-request", timeout=30)[0] == 200
        assert "served /followed-request" in _read_until(lines, "served /followed-request")
    finally:
        proc.kill()
        proc.wait()


def test_logs_follow_ends_when_the_instance_has_ended(
    provider: LocalProvider, local_home: Home, image: str
) -> None:
    provider.launch("web", image, 1)
    (instance,) = serving(provider, 1)
    provider.terminate("web", [instance])
    env = {**os.environ, "KILN_HOME": str(local_home.root)}
    done = subprocess.run(
        [sys.executable, "-m", "kiln.cli", "logs", instance, "-f"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,  # a ceiling: the CLI alone took 10 s to start at load 15
        check=False,
    )
    assert done.returncode == 0 and "listening on" in done.stdout
