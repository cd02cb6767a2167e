"""`kiln ui` as a user starts it: a real process, and the address it printed."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def served_ui(cwd: Path) -> Iterator[str]:
    """Run `kiln ui` in ``cwd`` until the block ends; yields the URL (with its token)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "kiln.cli", "ui"],
        cwd=cwd,
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert "http://127.0.0.1:" in first, first + proc.stdout.read(2000)
        yield first.split(" at ", 1)[1].strip()
    finally:
        proc.terminate()
        proc.wait(10)


def deploy_watched_live(
    browser: Any, deploy: Callable[[], object], screenshot: Path, what: str
) -> str:
    """Run ``deploy`` in a thread while the open page must show it running (a
    screenshot then) and then succeeded; the deployment's id."""
    done = threading.Event()
    deploying = threading.Thread(target=lambda: (deploy(), done.set()), daemon=True)
    deploying.start()
    running: str = browser.wait_for(
        "const li = document.querySelector('#deployments > li[data-outcome=running]');"
        "return li && li.querySelector('.seg') ? li.dataset.deployment : null",
        what=what,
    )
    browser.screenshot(screenshot)
    deploying.join(120)
    assert done.is_set()
    browser.wait_for(
        f"const li = document.querySelector('li[data-deployment=\"{running}\"]');"
        "return li && li.dataset.outcome === 'succeeded'",
        what="the deployment succeeded",
    )
    return running
