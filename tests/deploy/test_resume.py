"""kill -9 at every step, then resume with a fresh engine: the invariants hold."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from deploykit import BAD, FLEET, NEW, OLD, Behavior, World, dead_pid

from kiln.deploy import Engine, Result, StateDb
from kiln.deploy.plan import Plan
from kiln.deploy.state import SCHEMA_VERSION
from kiln.errors import DeployError
from kiln.providers.fake import SimulatedKill

# name: (image, behavior of that image, strategy, size, expected outcome)
# strategy "rollback": the operation is 'kiln rollback' from a blue-green warm standby
SCENARIOS: dict[str, tuple[str, Behavior | None, str, int, str]] = {
    "rollback from warm standby": (OLD, None, "rollback", 2, "succeeded"),
    "rolling": (NEW, None, "rolling", 3, "succeeded"),
    "blue-green": (NEW, None, "blue-green", 2, "succeeded"),
    "canary": (NEW, None, "canary", 3, "succeeded"),
    "rolling, bad image": (BAD, Behavior(never_healthy=True), "rolling", 2, "rolled back"),
    "blue-green, crash after flip": (
        BAD,
        Behavior(crash_after=2.0),
        "blue-green",
        2,
        "rolled back",
    ),
}


def _world(path: Path, scenario: str) -> tuple[World, dict[str, Any]]:
    image, behavior, _strategy, size, _outcome = SCENARIOS[scenario]
    world = World(StateDb(path))
    if behavior is not None:
        world.provider.add_image(image, behavior)
    assert world.engine(size=size).deploy(OLD).ok
    if _strategy == "rollback":
        assert world.engine(size=size).deploy(NEW, strategy="blue-green").ok
    return world, {"size": size}


def _operate(engine: Engine, image: str, strategy: str) -> Result:
    """The operation under test: a deployment, or 'kiln rollback'."""
    if strategy == "rollback":
        return engine.rollback()
    return engine.deploy(image, strategy=strategy)


def _calls(tmp_path: Path, scenario: str) -> tuple[int, int]:
    """How many mutating calls and describe calls the uninterrupted deployment makes."""
    world, knobs = _world(tmp_path / "count.db", scenario)
    image, _b, strategy, _size, outcome = SCENARIOS[scenario]
    world.provider.kill_at(0)  # reset the counters, kill nothing
    assert _operate(world.engine(**knobs), image, strategy).outcome == outcome
    world.db.close()
    return world.provider.mutations, world.provider.describes


@pytest.mark.slow
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_kill_at_every_step_then_resume(tmp_path: Path, scenario: str) -> None:
    image, _b, strategy, size, outcome = SCENARIOS[scenario]
    mutations, describes = _calls(tmp_path, scenario)
    assert mutations >= 2 and describes > mutations
    kills = [(k, after, False) for k in range(1, mutations + 1) for after in (False, True)]
    kills += [(k, False, True) for k in range(1, describes + 1)]  # while waiting
    for k, after, waiting in kills:
        world, knobs = _world(tmp_path / f"{k}-{after}-{waiting}.db", scenario)
        t0 = world.clock.now()
        world.provider.kill_at(k, after=after, describes=waiting)  # counts from now
        with pytest.raises(SimulatedKill):
            _operate(world.engine(pid=dead_pid(), **knobs), image, strategy)
        killed = world.journal().unfinished(FLEET)
        survivor = world.engine(**knobs)
        if killed is None:  # killed while planning: nothing was touched yet
            assert world.serving() == {NEW if strategy == "rollback" else OLD: size}
            finished = _operate(survivor, image, strategy)
        elif after:  # the next 'kiln deploy' finishes it...
            result = _operate(survivor, image, strategy)
            assert killed.outcome == "running"
            finished = result.resumed or result
            assert finished.deployment == killed.id
        else:  # ... and so does 'kiln deploy --resume'
            resumed = survivor.resume()
            assert resumed is not None
            finished = resumed
        where = f"{scenario}: killed {'after' if after else 'before'} call {k} {waiting}"
        assert finished.outcome == outcome, (where, finished)
        assert any("taking over the lock" in e.message for e in world.events), where
        current = image if outcome == "succeeded" else OLD
        world.assert_settled(current, size)
        assert world.min_capacity_after(t0) >= size, where
        history = world.journal().history(FLEET)
        before = ["succeeded"] * (2 if strategy == "rollback" else 1)
        assert [h.outcome for h in history] == [outcome, *before], where
        assert killed is None or history[0].id == killed.id
        rec = world.db.fleet(FLEET)
        assert rec is not None and rec.current_image == current
        world.db.close()


def test_a_journal_from_another_plan_format_is_refused_unchanged(deployed: World) -> None:
    w = deployed
    plan = w.engine().plan(NEW)
    data = plan.to_json() | {"format": 99}
    from kiln.deploy.journal import Who

    dep = w.journal().create(Plan.from_json(plan.to_json()), "deploy", Who("a", "b"), None, 0.0)
    w.db.conn.execute(
        "UPDATE deploy_deployments SET plan=? WHERE id=?", (__import__("json").dumps(data), dep.id)
    )
    calls = len(w.provider.calls)
    with pytest.raises(DeployError, match="format 99, this kiln understands 1"):
        w.engine().deploy(NEW)
    with pytest.raises(DeployError, match="format 99"):
        w.engine().resume()
    assert all(c[0] == "describe" for c in w.provider.calls[calls:])
    assert w.serving() == {OLD: 2}
    assert w.db.conn.execute("SELECT COUNT(*) FROM deploy_locks").fetchone()[0] == 0


def test_a_state_file_of_another_schema_is_refused(tmp_path: Path) -> None:
    """Say, written by a newer kiln: refused, and the file is left byte for byte."""
    path = tmp_path / "state.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE deploy_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute("INSERT INTO deploy_meta VALUES ('schema', '7')")
        conn.execute("CREATE TABLE deploy_future (x)")
        conn.commit()
    before = path.read_bytes()
    message = f"schema version 7; this kiln understands version {SCHEMA_VERSION}"
    with pytest.raises(DeployError, match=message):
        StateDb(path)
    assert path.read_bytes() == before
    assert not (tmp_path / "state.db-wal").exists()


def test_a_resumed_deployment_does_not_pin_the_size_kiln_toml_had_then(tmp_path: Path) -> None:
    """Killed while deploying 3, [fleet] size edited to 2, resumed: the next deploy plans 2.

    Before, finishing the old plan stamped today's [fleet] size next to the
    plan's size, which reads as a `kiln scale 3` and pinned 3 for good.
    """
    world = World(StateDb(tmp_path / "state.db"))
    assert world.engine(size=2).deploy(OLD).ok
    world.provider.kill_at(1, after=True)
    with pytest.raises(SimulatedKill):
        world.engine(pid=dead_pid(), size=3).deploy(NEW)
    resumed = world.engine(size=2).resume()
    assert resumed is not None and resumed.ok
    assert world.engine(size=2).plan(NEW).size == 2
    world.db.close()


def test_kiln_scale_still_holds_across_deployments_until_kiln_toml_changes(
    deployed: World,
) -> None:
    w = deployed
    assert w.engine().scale(4).ok
    assert w.engine().deploy(NEW).ok
    assert w.engine().plan(OLD).size == 4  # the scale holds while [fleet] size is unchanged
    assert w.engine(size=3).plan(OLD).size == 3  # an edit of [fleet] size wins
