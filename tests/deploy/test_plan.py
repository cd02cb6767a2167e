"""Plans are data: fixture scenarios in, expected steps out (tests/deploy/fixtures/plans)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kiln.deploy.plan import Knobs, Plan, Step, make_plan, rollback_plan
from kiln.errors import DeployError
from kiln.providers.protocol import FleetState, Instance, InstanceState

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "plans").glob("*.json"))


def _state(fleet: dict[str, Any]) -> FleetState:
    instances = tuple(
        Instance(
            id=i["id"],
            fleet=fleet["name"],
            image=i["image"],
            state=InstanceState(i["state"]),
            launched_at=i["launched_at"],
            in_service=i["in_service"],
            launch=i.get("launch", {}),
        )
        for i in fleet["instances"]
    )
    return FleetState(fleet["name"], None, fleet["groups"], instances)


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_plan_fixture(path: Path) -> None:
    case = json.loads(path.read_text())
    state = _state(case["fleet"])
    if case.get("rollback"):
        plan = rollback_plan(state, case["image"], case["size"], case["strategy"])
    else:
        knobs = Knobs(**case["knobs"])
        plan = make_plan(
            state, case["image"], case["strategy"], case["size"], knobs, launch=case.get("launch")
        )
    assert [s.to_json() for s in plan.steps] == case["expect"], case["description"]
    assert list(plan.changed) == case.get("expect_changed", [])
    assert list(plan.relaunch) == case.get("expect_relaunch", [])
    assert Plan.from_json(plan.to_json()) == plan  # what the journal stores comes back intact


def test_fixtures_exist() -> None:
    assert len(FIXTURES) >= 10


def test_plans_print_for_dry_run() -> None:
    case = json.loads((FIXTURES[0].parent / "blue-green.json").read_text())
    plan = make_plan(_state(case["fleet"]), case["image"], "blue-green", 2, Knobs())
    text = "\n".join(plan.describe())
    assert text.startswith("blue-green deployment of shop: (nothing) → img-bbbbbbbbbbbb")
    assert "launch 2 x img-bbbbbbbbbbbb out of service" in text
    assert "keep the old fleet warm for 300s" in text


def test_unknown_plan_format_and_step_kind_are_refused() -> None:
    with pytest.raises(DeployError, match="format 2, this kiln understands 1"):
        Plan.from_json({"format": 2})
    with pytest.raises(DeployError, match="unknown step kind 'reboot'"):
        Step.from_json({"kind": "reboot"})
    with pytest.raises(DeployError, match="unknown strategy"):
        make_plan(FleetState("shop", None, {}, ()), "img-a", "yolo", 1, Knobs())


def test_a_failure_already_terminated_is_not_planned_again() -> None:
    """A warm standby instance that died: terminating it took it out of its group's
    count, but it stays failed, and each later deploy planned to terminate it again, a
    step that changed nothing (every unchanged `kiln deploy` journaled a deployment)."""

    def failed(terminating: bool) -> Instance:
        return Instance(
            "i-dead",
            "web",
            "img-old",
            InstanceState.FAILED,
            1.0,
            terminating=terminating,
        )

    serving = Instance("i-new", "web", "img-new", InstanceState.HEALTHY, 2.0, in_service=True)
    for terminating, planned in ((False, True), (True, False)):
        state = FleetState(
            "web", None, {"img-new": 1, "img-old": 1}, (serving, failed(terminating))
        )
        plan = make_plan(state, "img-new", "rolling", 1, Knobs())
        doomed = [i for s in plan.steps for i in s.instances]
        assert ("i-dead" in doomed) == planned, plan.describe()
