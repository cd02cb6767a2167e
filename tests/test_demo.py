"""`kiln demo` is the README's main-job command: run it for real, end to end."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_demo_tells_the_whole_story_without_a_failed_request() -> None:
    env = {**os.environ, "COLUMNS": "120"}
    env.pop("KILN_HOME", None)  # the demo makes its own private home
    proc = subprocess.run(
        [sys.executable, "-m", "kiln.cli", "demo"],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    for step in ("1. bake v1", "4. change the code", "6. a broken v3", "7. tamper", "summary"):
        assert step in out, step
    assert "failed: 0" in out
    assert "rolled back" in out and "drifted" in out
    assert "posts created at the start, still there: 3/3" in out
