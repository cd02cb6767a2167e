"""`kiln ui` as a user starts it: a real process, and the address it printed."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path


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
