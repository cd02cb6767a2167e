"""The release phase: once per deployment, in the new image, before anything changes."""

from __future__ import annotations

import pytest
from deploykit import FLEET, NEW, OLD, Behavior, World

from kiln.providers.fake import BAD_START_LOG, SimulatedKill

MIGRATE = "python3 manage.py migrate --noinput"


def _mutations(w: World) -> list[str]:
    return [c[0] for c in w.provider.calls if c[0] in ("release", "launch", "terminate")]


def test_release_runs_once_before_any_instance_launches(deployed: World) -> None:
    w = deployed
    w.provider.add_image(NEW, Behavior(release=MIGRATE))
    before = len(_mutations(w))
    result = w.engine().deploy(NEW)
    assert result.outcome == "succeeded"
    assert _mutations(w)[before:][:2] == ["release", "launch"]
    assert _mutations(w).count("release") == 1
    assert result.figures["release"] == {"command": MIGRATE, "exit_code": 0, "seconds": 2.0}
    entry = w.journal().history(FLEET)[0]
    assert entry.figures["release"]["command"] == MIGRATE  # in `kiln history --json`


def test_a_failed_release_stops_the_deployment_with_nothing_changed(deployed: World) -> None:
    w = deployed
    w.provider.add_image(NEW, Behavior(release=MIGRATE, release_exit=1))
    before = w.provider.describe(FLEET)
    result = w.engine().deploy(NEW)
    assert result.outcome == "failed" and not result.ok
    assert result.gate == "release" and result.log == BAD_START_LOG
    assert "release command exited with status 1" in (result.message or "")
    assert "nothing changed" in (result.message or "")
    assert _mutations(w)[-1] == "release"  # no launch, no terminate after it
    assert w.provider.describe(FLEET) == before
    rec = w.db.fleet(FLEET)
    assert rec is not None and rec.current_image == OLD
    assert w.journal().history(FLEET)[0].outcome == "failed"
    assert w.journal().unfinished(FLEET) is None


def test_rollback_and_scale_do_not_run_a_release(deployed: World) -> None:
    w = deployed
    w.provider.add_image(NEW, Behavior(release=MIGRATE))
    w.provider.add_image(OLD, Behavior(release=MIGRATE))
    assert w.engine().deploy(NEW).outcome == "succeeded"
    assert w.engine().rollback().outcome == "succeeded"
    assert w.engine().scale(3).outcome == "succeeded"
    assert _mutations(w).count("release") == 1


def test_a_resumed_deployment_does_not_release_again(deployed: World) -> None:
    w = deployed
    w.provider.add_image(NEW, Behavior(release=MIGRATE))
    w.provider.kill_at(2)  # the release is call 1; killed before the first launch
    with pytest.raises(SimulatedKill):
        w.engine(pid=111).deploy(NEW)
    result = w.engine().resume()
    assert result is not None and result.outcome == "succeeded"
    assert _mutations(w).count("release") == 1
