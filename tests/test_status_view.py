"""`kiln status` stays readable when a release crash-loops."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kiln.cli import fleetviews
from kiln.deploy.state import StateDb
from kiln.deploy.status import fleet_status
from kiln.providers.protocol import FleetState, Instance, InstanceState


def _instance(n: int, state: str) -> dict[str, Any]:
    return {
        "id": f"i-{n:012x}",
        "image": "img-000000000001",
        "state": state,
        "in_service": state == "healthy",
        "age": float(100 - n),
        "address": f"127.0.0.1:{40000 + n}",
    }


def test_older_failed_instances_are_summarised_not_listed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    failed = [_instance(n, "failed") for n in range(1, 12)]  # launch order: oldest first
    live = [_instance(50, "healthy"), _instance(51, "healthy")]
    fleetviews._print_instances(failed + live)
    out = capsys.readouterr().out
    assert all(i["id"] in out for i in live)
    assert all(i["id"] in out for i in failed[-fleetviews.SHOWN_ENDED :])  # the newest ones
    assert not any(i["id"] in out for i in failed[: -fleetviews.SHOWN_ENDED])
    assert "8 older failed instance(s) not shown" in out and "kiln status --json" in out


def test_a_few_failed_instances_are_all_listed(capsys: pytest.CaptureFixture[str]) -> None:
    fleetviews._print_instances([_instance(1, "failed"), _instance(2, "healthy")])
    out = capsys.readouterr().out
    assert "i-000000000001" in out and "not shown" not in out


def test_an_unfinished_deployment_says_what_to_do() -> None:
    """A first deployment read `(None → img-…)`, and one still running was told to be
    resumed or rolled back, which only met its lock."""
    dep = {"id": "dep-1", "from": None, "to": "img-2", "strategy": "rolling"}
    stopped = fleetviews.deployment_line({**dep, "outcome": "interrupted"}, None, 100.0)
    assert "((nothing) → img-2, rolling)" in stopped and "--resume" in stopped
    lock = {"holder": "me", "expires": 130.0}
    running = fleetviews.deployment_line({**dep, "outcome": "running"}, lock, 100.0)
    assert "wait for it" in running and "--resume" not in running
    expired = fleetviews.deployment_line({**dep, "outcome": "running"}, lock, 200.0)
    assert "--resume" in expired  # its holder is gone: the lock ran out


def test_an_ended_instance_is_never_in_service_in_json(tmp_path: Path) -> None:
    """One that exited while the agent was down kept in_service true in `--json`, though
    the table said IN LB no: scripts counted a dead instance as serving."""
    dead = Instance("i-dead", "web", "img-1", InstanceState.FAILED, 1.0, in_service=True)
    live = Instance("i-live", "web", "img-1", InstanceState.HEALTHY, 2.0, in_service=True)

    class Provider:
        name = "fake"

        def describe(self, fleet: str) -> FleetState:
            return FleetState(fleet, None, {"img-1": 2}, (dead, live))

    doc = fleet_status(Provider(), StateDb(tmp_path / "state.db"), "web", 2, 10.0)
    serving = {i["id"]: i["in_service"] for i in doc["instances"]}
    assert serving == {"i-dead": False, "i-live": True}


def test_a_lock_whose_process_is_gone_is_said_to_be_taken_over(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """After the deploy command was kill -9'd, status said "locked by root@vm,
    heartbeat 9.1s ago", as if somebody still deployed."""
    import socket
    import subprocess

    from kiln.deploy.lock import DeployLock
    from kiln.providers.fake import FakeClock

    ended = subprocess.Popen(["true"])
    ended.wait()
    db = StateDb(tmp_path / "state.db")
    host = socket.gethostname()
    DeployLock(db, "web", FakeClock(), user="root", host=host, pid=ended.pid).acquire()

    class Provider:
        name = "fake"

        def describe(self, fleet: str) -> FleetState:
            return FleetState(fleet, None, {}, ())

    doc = fleet_status(Provider(), db, "web", 2, 10.0)
    assert doc["lock"]["stale"] == f"its process {ended.pid} on this host is gone"
    fleetviews.print_status(doc)
    out = " ".join(capsys.readouterr().out.split())
    assert "is gone, so the next command takes the lock over" in out
