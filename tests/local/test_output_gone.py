"""A deployment whose output goes away finishes, and says how it ended.

A new operator ran `kiln deploy 2>&1 | head -5`: once head exited, rich's
answer to the broken pipe (SystemExit(1)) stopped the deployment half-way,
and it stayed journaled as "running" with nobody running it. A closed CI log
or a dropped ssh session does the same to a deploy's output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from localtest import APP, free_port, write_config

from kiln.home import Home


def _kiln(app: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kiln.cli", *args],
        cwd=app,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_a_deploy_piped_into_head_finishes(local_home: Home, tmp_path: Path) -> None:
    app = tmp_path / "app"
    write_config(app, free_port())
    (app / "app.py").write_text(APP)
    read, write = os.pipe()
    deploy = subprocess.Popen(
        [sys.executable, "-m", "kiln.cli", "deploy"], cwd=app, stdout=write, stderr=write
    )
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        first = pipe.readline()  # `| head -1`: then the reader is gone
    assert first, "the deploy printed nothing"
    assert deploy.wait(timeout=300) == 0
    history = json.loads(_kiln(app, "history", "--json").stdout)
    assert [d["outcome"] for d in history] == ["succeeded"], history
