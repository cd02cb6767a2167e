"""A restarted agent trusts only what it can prove: no duplicate, no stranger adopted."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from localtest import gone, serving, wait_for

from kiln.home import Home
from kiln.local.agent import db_path
from kiln.local.model import AgentDB, FleetSettings, InstanceRecord
from kiln.local.provider import LocalProvider
from kiln.providers.protocol import InstanceState


def sleeper(env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["sleep", "60"], env={**os.environ, **(env or {})}, start_new_session=True
    )


def test_restart_kills_unrecorded_spawn_and_ignores_recycled_pid(
    provider: LocalProvider, image: str, local_home: Home
) -> None:
    # What a previous agent could leave: a record written before its spawn (the
    # process started, the pid never recorded), and a pid since reused by a stranger.
    orphan = sleeper({"KILN_INSTANCE_ID": "i-0000000000aa"})
    stranger = sleeper()
    ended = subprocess.Popen(["true"])
    ended.wait()  # a pid that no longer runs
    try:
        db = AgentDB(db_path(local_home))
        db.save_fleet("web", provider.settings)
        db.save_group("web", image, 2)
        now = time.time()
        for rec in (
            InstanceRecord("i-0000000000aa", "web", image, "pending", now, in_service=True),
            InstanceRecord(
                "i-0000000000bb", "web", image, "healthy", now, in_service=True,
                pid=stranger.pid, pid_start=1, port=1,
            ),
            # being retired (a deploy's terminate) when the agent was killed: it ended
            # as it was told to, which is no failure (it showed as one)
            InstanceRecord(
                "i-0000000000cc", "web", image, "draining", now, pid=ended.pid, pid_start=1,
                port=1, terminating=True,
            ),
        ):  # fmt: skip
            db.save_instance(rec)
        db.close()

        serving(provider, 2)  # starts the agent, which restores and heals
        state = provider.describe("web")
        by_id = {i.id: i for i in state.instances}
        assert by_id["i-0000000000aa"].state is InstanceState.FAILED
        assert (
            by_id["i-0000000000aa"].details["reason"] == "the agent stopped while it was starting"
        )
        assert by_id["i-0000000000bb"].state is InstanceState.FAILED
        assert by_id["i-0000000000bb"].details["reason"] == "exited while the agent was down"
        assert by_id["i-0000000000cc"].state is InstanceState.TERMINATED
        assert len(state.live()) == 2 and state.groups == {image: 2}
        assert all(i.details["replaces"] in by_id for i in state.live())

        wait_for(lambda: orphan.poll() is not None, 60, "the unrecorded spawn to be killed")
        assert orphan.returncode == -signal.SIGKILL
        assert stranger.poll() is None and not gone(stranger.pid)  # never touched
    finally:
        for proc in (orphan, stranger):
            proc.kill()
            proc.wait()


def test_settings_survive_in_the_database(local_home: Home) -> None:
    db = AgentDB(db_path(local_home))
    settings = FleetSettings("127.0.0.1", 8080, secrets={"API_TOKEN": "env:TOKEN"})
    db.save_fleet("web", settings)
    db.save_group("web", "img-1", 3)
    db.save_group("web", "img-2", 0)
    assert db.fleets() == {"web": settings}
    assert db.groups() == {"web": {"img-1": 3}}
    db.close()
