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
from kiln.local.logtimes import times_path
from kiln.local.provider import LocalProvider
from kilntest import Kiln

pytestmark = pytest.mark.slow
LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} (i-[0-9a-f]{12})  (.*)$")


def _noted(home: Home, instance: str) -> bool:
    """The agent has noted when the instance's log reached its present size."""
    log = home.agent_dir / "logs" / f"{instance}.log"
    try:
        notes = times_path(log).read_text().split()
        return bool(notes) and int(notes[-2]) >= log.stat().st_size > 0
    except OSError:
        return False


def test_fleet_logs_interleave_follow_filter_and_expire(
    local_home: Home, tmp_path: Path, lb_port: int
) -> None:
    config = write_config(tmp_path / "app", lb_port, extra='log_retention = "2s"\n')
    provider = LocalProvider(local_home, load_config(config))
    kiln = Kiln(config.parent)
    image = make_image(local_home, files={"app.py": APP})
    ids = provider.launch("web", image, 2)
    serving(provider, 2)
    # the agent notes each log's growth once a second: wait for the notes, then age them
    wait_for(lambda: all(_noted(local_home, i) for i in ids), 60, "the logs' time notes")

    shown = [LINE.match(line) for line in kiln("logs").stdout.splitlines()]
    assert all(shown), shown
    assert {m.group(1) for m in shown if m} == set(ids)
    assert all(m.group(2).startswith("listening on") for m in shown if m)
    time.sleep(2.0)
    assert kiln("logs", "--since", "1s").stdout == ""  # both lines are older
    assert len(kiln("logs", "--since", "1m").stdout.splitlines()) == 2

    env = {**os.environ, "KILN_HOME": str(local_home.root)}
    command = [sys.executable, "-m", "kiln.cli", "logs", "-f", "-n", "1"]
    with subprocess.Popen(
        command, cwd=config.parent, env=env, stdout=subprocess.PIPE, text=True
    ) as follower:
        out: list[str] = []
        reader = threading.Thread(target=lambda: out.extend(follower.stdout or []))
        reader.start()
        try:
            # the follower is following once its first line is out (a sleep was too short
            # for a CLI starting on a busy machine): the new instance starts after that
            wait_for(lambda: out, 90, "the follower's first line")
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
