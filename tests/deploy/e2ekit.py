"""Helpers for end-to-end deployments on the real local provider under real load.

The image/agent helpers come from tests/local/localtest.py (the local provider's
own test kit); this adds app variants and a load generator.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from localtest import APP, free_port, http_get, kill_everything, make_image

from kiln.config import load_config
from kiln.home import Home
from kiln.loadgen import LoadLoop
from kiln.local.provider import LocalProvider

EXIT_AT_START = "import sys\nprint('boom: missing DATABASE_URL', flush=True)\nsys.exit(3)\n"
CRASH_LATER = (
    "import os, threading\n"
    "threading.Timer(1.0, lambda: (print('fatal: out of memory', flush=True), os._exit(9)))"
    ".start()\n" + APP
)


def write_app_config(
    directory: Path, port: int, size: int = 2, settle: str = "1.5s", grace: str = "20s"
) -> Path:
    """kiln.toml for the test app (app name 'web', as images from make_image).

    Its health timings are ceilings, generous for a busy machine (the suite runs
    4 workers and a VM on 2 cores): a healthy app passes its checks as soon as it
    answers, whatever ``grace`` and ``timeout`` allow. So is the canary's latency slack:
    at load 10 a fresh canary's p99 can be tens of milliseconds above the warm fleet's
    (the latency gate's own tests use a slow app, far beyond it). Only an app that never
    turns healthy waits out the grace: a test of one passes a short ``grace``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "kiln.toml"
    path.write_text(
        f"""
[app]
name = "web"
run = "python3 app.py"

[health]
path = "/health"
interval = "100ms"
timeout = "5s"
healthy_threshold = 2
unhealthy_threshold = 2
grace = "{grace}"

[fleet]
size = {size}
drain = "5s"
settle = "{settle}"
keep_warm = "1m"

[canary]
duration = "2s"
min_requests = 5
p99_slack = "500ms"

[provider.local]
listen = "127.0.0.1:{port}"
stop_timeout = "2s"
"""
    )
    return path


def app_image(home: Home, variant: str) -> str:
    """An image of the test app; ``variant`` makes the digest (and the behaviour) differ."""
    files = {"app.py": APP + f"\n# {variant}\n"}
    if variant == "never-healthy":
        files["unhealthy"] = "health checks answer 500 while this file exists\n"
    elif variant == "exits-at-start":
        files = {"app.py": EXIT_AT_START}
    elif variant == "crashes-later":
        files = {"app.py": CRASH_LATER}
    return make_image(home, files=files)


def Load(port: int, workers: int = 4) -> LoadLoop:
    """Keep-alive GETs through the fleet's load balancer, flat out; anything but a
    200 is a failure, and every failure is kept, labelled with ``load.phase``."""
    return LoadLoop(
        "127.0.0.1",
        port,
        workers=workers,
        pause=0.0,
        accept=lambda status: status == 200,
        max_errors=None,
        max_seconds=600.0,
        phase="steady",
    )


class Capacity:
    """Samples how many instances serve (healthy, in service) while a test runs."""

    def __init__(self, home: Home, config: Path, fleet: str = "web") -> None:
        self.provider = LocalProvider(home, load_config(config))
        self.fleet = fleet
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Capacity:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(len(self.provider.describe(self.fleet).serving()))
            time.sleep(0.02)

    @property
    def minimum(self) -> int:
        return min(self.samples)


__all__ = [
    "APP",
    "Capacity",
    "Load",
    "app_image",
    "free_port",
    "http_get",
    "kill_everything",
    "write_app_config",
]
