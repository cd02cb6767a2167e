"""Run the real CLI where file permissions apply, even when the tests run as root.

Root reads a mode-000 file anyway (CAP_DAC_OVERRIDE); dropping that and
CAP_DAC_READ_SEARCH from the bounding set with setpriv makes the kernel check
permissions as it would for any user, without needing another account.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DROP = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]


def run_kiln(cwd: Path, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    prefix: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: permissions cannot be tested")
        prefix = DROP
    env = {**os.environ, "KILN_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run(
        [*prefix, sys.executable, "-m", "kiln.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=120,
        check=False,
    )
