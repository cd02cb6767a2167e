"""`kiln logs` without an id: every instance of the fleet, interleaved, with times."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from localtest import APP, make_image, serving, wait_for, write_config

from kiln.config import load_config
from kiln.home import Home
from kiln.local.provider import LocalProvider
from kilntest import Kiln

pytestmark = pytest.mark.slow
LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} (i-[0-9a-f]{12})  (.*)$")


def test_fleet_logs_interleave_follow_filter_and_expire(
    local_home: Home, tmp_path: Path, lb_port: int
) -> None:
    config = write_config(tmp_path / "app", lb_port, extra='log_retention = "2s"\n')
    provider = LocalProvider(local_home, load_config(config))
    kiln = Kiln(config.parent)
    image = make_image(local_home, files={"app.py": APP})
    ids = provider.launch("web", image, 2)
    serving(provider, 2)
    time.sleep(1.5)  # the agent notes each log's growth once a second

    shown = [LINE.match(line) for line in kiln("logs").stdout.splitlines()]
    assert all(shown), shown
    assert {m.group(1) for m in shown if m} == set(ids)
    assert all(m.group(2).startswith("listening on") for m in shown if m)
    time.sleep(2.0)
    assert kiln("logs", "--since", "1s").stdout == ""  # both lines are older
    assert len(kiln("logs", "--since", "1m").stdout.splitlines()) == 2

    env = {**os.environ, "KILN_HOME": str(local_home.root)}
    command = [sys.executable, "-m", "kiln.cli", "logs", "-f", "-n", "0"]
    with subprocess.Popen(
        command, cwd=config.parent, env=env, stdout=subprocess.PIPE, text=True
    ) as follower:
        out: list[str] = []
        reader = threading.Thread(target=lambda: out.extend(follower.stdout or []))
        reader.start()
        try:
            time.sleep(5.0)  # -n 0: the follower must be reading before the new instance starts
            (third,) = provider.launch("web", image, 1)  # a new instance joins the stream
            wait_for(lambda: any(third in line for line in out), 90, "the new instance's lines")
            provider.terminate("web", [*ids, third])
            follower.wait(30)  # ends by itself once nothing is live
        finally:  # a failure above must not leave Popen's exit waiting on a live follower
            if follower.poll() is None:
                follower.kill()
        reader.join(10)
    assert follower.returncode == 0
    assert any(LINE.match(line.rstrip("\n")) for line in out if third in line), out

    logs = local_home.agent_dir / "logs"
    wait_for(lambda: not list(logs.glob("*.log")), 20, "ended instances' logs to expire")
    assert kiln("logs").stdout == ""
