"""`kiln logs -f` follows an instance's output as it is written."""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
import time

from localtest import APP, http_get, make_image, serving

from kiln.home import Home
from kiln.local.provider import LocalProvider

CHATTY = APP.replace(
    "def log_message(self, *args):\n        pass",
    "def log_message(self, fmt, *args):\n        print('served', self.path, flush=True)",
)


def _read_until(proc: subprocess.Popen[str], needle: str, timeout: float = 60.0) -> str:
    assert proc.stdout is not None
    seen = ""
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while needle not in seen and time.monotonic() < deadline:
        if selector.select(timeout=0.2):
            line = proc.stdout.readline()
            if not line:
                break
            seen += line
    return seen


def test_logs_follow_prints_new_lines(
    provider: LocalProvider, local_home: Home, lb_port: int
) -> None:
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
        assert "listening on" in _read_until(proc, "listening on")
        http_get(lb_port, "/followed-request")
        assert "served /followed-request" in _read_until(proc, "served /followed-request")
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
        timeout=20,
        check=False,
    )
    assert done.returncode == 0 and "listening on" in done.stdout
