"""Losing the agent's database orphans nothing (issue 14.5).

Before: ``rm agent/agent.db*`` and a restart gave "no fleets", the endpoint
went down, the instances ran on unmanaged, and the next deploy started a
second fleet beside them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2ekit import app_image, free_port, http_get, kill_everything, write_app_config
from localtest import gone, wait_for

from kiln.config import load_config
from kiln.home import Home
from kiln.local import procs
from kiln.local.agent import db_path, read_pid
from kiln.local.provider import LocalProvider
from kilntest import Kiln

pytestmark = pytest.mark.slow


@pytest.fixture
def site(home: Home, tmp_path: Path) -> Iterator[tuple[Kiln, int]]:
    port = free_port()
    config = write_app_config(tmp_path / "app", port)
    try:
        yield Kiln(config.parent), port
    finally:
        kill_everything(home)


def _status(kiln: Kiln) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(kiln("status", "--json").stdout)
    return data


def _live(kiln: Kiln) -> dict[str, int]:
    """id -> pid of the live instances the agent reports (it is started if need be)."""
    provider = LocalProvider(Home.resolve(), load_config(kiln.cwd / "kiln.toml"))
    return {i.id: int(i.details["pid"]) for i in provider.describe("web").live()}


def _processes(home: Home) -> set[str]:
    """Ids of the instance processes of this home that run, whatever kiln remembers."""
    return {
        env["KILN_INSTANCE_ID"]
        for _pid, env in procs.instance_processes()
        if (home.instances / env["KILN_INSTANCE_ID"]).is_dir()
    }


def test_a_deleted_agent_database_is_rebuilt_from_the_running_instances(
    site: tuple[Kiln, int], home: Home
) -> None:
    kiln, port = site
    v1, v2 = app_image(home, "v1"), app_image(home, "v2")
    deployed = json.loads(kiln("deploy", "--image", v1, "--json").stdout)
    assert deployed["outcome"] == "succeeded"
    before = _live(kiln)
    assert len(before) == 2 and _processes(home) == set(before)

    # an instance of another KILN_HOME on the same host: never ours to adopt or kill
    stranger = subprocess.Popen(
        ["sleep", "120"],
        env={**os.environ, "KILN_INSTANCE_ID": "i-0123456789ab", "KILN_FLEET": "web", "PORT": "1"},
        start_new_session=True,
    )
    agent = read_pid(home)
    assert agent is not None
    os.kill(agent, signal.SIGKILL)
    wait_for(lambda: gone(agent), 60, "the agent to die")
    for suffix in ("", "-wal", "-shm"):
        Path(str(db_path(home)) + suffix).unlink(missing_ok=True)

    status = _status(kiln)  # `kiln status` starts the agent: it finds them again
    assert _live(kiln) == before
    assert stranger.poll() is None
    stranger.kill()
    stranger.wait()
    assert status["serving"] == 2
    assert {i["image"] for i in status["instances"]} == {v1}
    code, body = http_get(port)
    assert code == 200 and body["instance"] in before

    # self-healing works on the recovered group, and does not add to it
    victim, pid = next(iter(before.items()))
    os.killpg(pid, signal.SIGKILL)

    def healed() -> bool:
        serving = [i for i in _status(kiln)["instances"] if i["healthy"] and i["in_service"]]
        return len(serving) == 2 and victim not in {i["id"] for i in serving}

    wait_for(healed, 30, "a replacement serving")
    assert len(_processes(home)) == 2

    # the next deployment replaces them: no duplicates beside them
    rolled = json.loads(kiln("deploy", "--image", v2, "--json").stdout)
    assert rolled["outcome"] == "succeeded", rolled
    live = _live(kiln)
    assert len(live) == 2 and not set(live) & set(before)
    assert {i["image"] for i in _status(kiln)["instances"] if i["id"] in live} == {v2}
    wait_for(lambda: _processes(home) == set(live), 60, "only the new instances to run")
    assert all(gone(p) for p in before.values())
