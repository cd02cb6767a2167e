"""Engine scenarios on the FakeProvider: strategies, gates, rollback, history."""

from __future__ import annotations

import pytest
from deploykit import BAD, FLEET, NEW, OLD, Behavior, World

from kiln.deploy.gates import judge_canary
from kiln.deploy.settings import Settings
from kiln.errors import (
    AgentError,
    DeployError,
    DeployInterrupted,
    FleetNotFound,
    ImageNotFound,
)
from kiln.providers.fake import BAD_START_LOG


def test_first_deploy_launches_the_whole_fleet_at_once(world: World) -> None:
    result = world.engine().deploy(OLD)
    assert result.outcome == "succeeded" and result.ok
    assert [c[0] for c in world.provider.calls if c[0] != "describe"] == ["launch"]
    world.assert_settled(OLD, 2)
    rec = world.db.fleet(FLEET)
    assert rec is not None and rec.current_image == OLD and rec.previous_image is None


def test_rolling_replaces_one_at_a_time_without_losing_capacity(deployed: World) -> None:
    w, t0 = deployed, deployed.clock.now()
    result = w.engine().deploy(NEW, reason="ship it")
    assert result.outcome == "succeeded"
    mutations = [c[0] for c in w.provider.calls if c[0] != "describe" and c[0] != "stats"]
    assert mutations[-4:] == ["launch", "terminate", "launch", "terminate"]
    assert w.min_capacity_after(t0) >= 2
    assert max(n for _t, _f, n in w.provider.capacity) <= 3  # size + max_surge
    w.assert_settled(NEW, 2)
    entry = w.journal().history(FLEET)[0]
    assert (entry.from_image, entry.to_image, entry.outcome) == (OLD, NEW, "succeeded")
    assert (entry.who, entry.commit, entry.reason) == ("alice@ci-runner-1", "abc123", "ship it")
    assert entry.duration is not None and entry.duration > 0
    rec = w.db.fleet(FLEET)
    assert rec is not None and (rec.current_image, rec.previous_image) == (NEW, OLD)


def test_one_instance_fleet_keeps_serving(world: World) -> None:
    world.engine(size=1).deploy(OLD)
    t0 = world.clock.now()
    assert world.engine(size=1).deploy(NEW).outcome == "succeeded"
    assert world.min_capacity_after(t0) >= 1
    world.assert_settled(NEW, 1)


def test_max_unavailable_terminates_first(deployed: World) -> None:
    w, t0 = deployed, deployed.clock.now()
    assert w.engine(max_surge=0, max_unavailable=1).deploy(NEW).outcome == "succeeded"
    mutations = [c[0] for c in w.provider.calls if c[0] in ("launch", "terminate")]
    assert mutations[-4:] == ["terminate", "launch", "terminate", "launch"]
    assert w.min_capacity_after(t0) >= 1
    assert max(n for t, _f, n in w.provider.capacity if t >= t0) <= 2


def test_redeploying_the_current_image_changes_nothing(deployed: World) -> None:
    calls = len(deployed.provider.calls)
    result = deployed.engine().deploy(OLD)
    assert result.outcome == "unchanged" and result.ok
    assert all(c[0] == "describe" for c in deployed.provider.calls[calls:])


def test_settings_applied_without_a_replacement_are_not_nothing_to_do(deployed: World) -> None:
    """Only [fleet] sticky changed: it took effect, and kiln said 'nothing to do'."""
    deployed.provider.settings_changes = ["fleet web is sticky by cookie from now on"]
    result = deployed.engine().deploy(OLD)
    assert result.outcome == "unchanged" and result.ok
    assert result.message == "fleet web is sticky by cookie from now on"
    assert deployed.engine().deploy(OLD).message is None  # a second time: nothing changed


def test_blue_green_flips_in_one_call_and_keeps_the_old_fleet_warm(deployed: World) -> None:
    w, t0 = deployed, deployed.clock.now()
    result = w.engine().deploy(NEW, strategy="blue-green")
    assert result.outcome == "succeeded"
    assert "kept warm" in (result.message or "")
    flips = [c for c in w.provider.calls if c[0] == "set_in_service"]
    assert len(flips) == 1 and flips[0][2].count(",") == 1 and flips[0][3].count(",") == 1
    assert w.min_capacity_after(t0) >= 2
    assert w.running() == {NEW: 2, OLD: 2}
    assert w.serving() == {NEW: 2}
    w.assert_settled(NEW, 2)  # the warm standby is recorded, not orphaned

    # rollback from the warm standby: one switch, no launch, about one health check
    before = len(w.provider.calls)
    t1 = w.clock.now()
    back = w.engine().rollback()
    assert back.outcome == "succeeded" and back.kind == "rollback"
    kinds = [c[0] for c in w.provider.calls[before:] if c[0] != "describe"]
    assert kinds == ["set_in_service", "terminate"]
    assert w.clock.now() - t1 <= w.settings.interval * 2
    assert w.min_capacity_after(t1) >= 2
    w.assert_settled(OLD, 2)


def test_warm_standby_is_discarded_once_keep_warm_is_over(deployed: World) -> None:
    w = deployed
    w.engine().deploy(NEW, strategy="blue-green")
    w.clock.sleep(61)
    w.engine().scale(2)  # any later operation reaps it
    assert w.running() == {NEW: 2}
    rec = w.db.fleet(FLEET)
    assert rec is not None and rec.warm_ids == ()


def test_blue_green_without_keep_warm_terminates_the_old_fleet(deployed: World) -> None:
    assert deployed.engine(keep_warm=0).deploy(NEW, strategy="blue-green").ok
    assert deployed.running() == {NEW: 2}
    deployed.assert_settled(NEW, 2)


@pytest.mark.parametrize("strategy", ["rolling", "blue-green", "canary"])
def test_a_failed_deploy_keeps_the_warm_standby_for_rollback(
    deployed: World, strategy: str
) -> None:
    # issue 15: the standby promised for minutes more was discarded by a failed
    # deploy, so the next `kiln rollback` was a cold launch instead of a switch
    w = deployed
    assert w.engine().deploy(NEW, strategy="blue-green").ok  # OLD kept warm
    standby = set(w.db.fleet(FLEET).warm_ids)  # type: ignore[union-attr]
    w.provider.add_image(BAD, Behavior(exit_at_start=True))
    failed = w.engine().deploy(BAD, strategy=strategy)
    assert failed.outcome == "rolled back"
    rec = w.db.fleet(FLEET)
    assert rec is not None and set(rec.warm_ids) == standby and rec.warm_image == OLD
    assert {i.id for i in w.provider.describe(FLEET).live(OLD)} == standby
    w.assert_settled(NEW, 2)

    before = len(w.provider.calls)
    back = w.engine().rollback()
    assert back.outcome == "succeeded"
    kinds = [c[0] for c in w.provider.calls[before:] if c[0] != "describe"]
    assert kinds == ["set_in_service", "terminate"]  # a switch, no launch
    w.assert_settled(OLD, 2)


def test_a_standby_instance_self_healing_replaced_stays_in_the_standby(deployed: World) -> None:
    """A warm standby instance died and was replaced, out of service, under a new id:
    the next deploy took the replacement for a stray and terminated it, and the
    standby shrank by one."""
    w = deployed
    assert w.engine().deploy(NEW, strategy="blue-green").ok  # OLD x2 kept warm
    w.provider.self_heal = True
    dead = sorted(w.db.fleet(FLEET).warm_ids)[0]  # type: ignore[union-attr]
    died = w.provider._instances[dead]
    died.behavior = Behavior(crash_after=w.clock.now() - died.launched_at)
    w.clock.sleep(2.0)
    w.provider.describe(FLEET)  # self-healing replaces it, out of service as it was
    healed = died.replaced_by
    assert healed is not None and not w.provider._instances[healed].in_service
    w.clock.sleep(2.0)  # the replacement is healthy

    assert w.engine().deploy(NEW).outcome == "unchanged"
    assert w.running() == {NEW: 2, OLD: 2}
    before = len(w.provider.calls)
    back = w.engine().rollback()
    assert back.outcome == "succeeded"
    kinds = [c[0] for c in w.provider.calls[before:] if c[0] != "describe"]
    assert kinds == ["set_in_service", "terminate"]  # still a switch to two, no launch
    w.assert_settled(OLD, 2)
    assert healed in {i.id for i in w.provider.describe(FLEET).serving()}


def test_a_newer_standby_replaces_the_older_one(deployed: World) -> None:
    w = deployed
    assert w.engine().deploy(NEW, strategy="blue-green").ok  # OLD warm
    w.provider.add_image(BAD, Behavior())
    assert w.engine().deploy(BAD, strategy="blue-green").ok  # NEW warm, OLD discarded
    rec = w.db.fleet(FLEET)
    assert rec is not None and rec.warm_image == NEW
    assert w.running() == {BAD: 2, NEW: 2}
    w.assert_settled(BAD, 2)


BAD_KINDS = {
    "exits at start": (Behavior(exit_at_start=True), "boot", "exited at start with status 1"),
    "never healthy": (Behavior(never_healthy=True), "boot", "did not become healthy within"),
    "crashes after passing checks": (Behavior(crash_after=3.0), "stability", "crashed"),
}


@pytest.mark.parametrize("strategy", ["rolling", "blue-green", "canary"])
@pytest.mark.parametrize("kind", list(BAD_KINDS))
@pytest.mark.parametrize("self_heal", [False, True])
def test_bad_images_are_rolled_back(
    deployed: World, strategy: str, kind: str, self_heal: bool
) -> None:
    w, t0 = deployed, deployed.clock.now()
    behavior, gate, words = BAD_KINDS[kind]
    w.provider.add_image(BAD, behavior)
    w.provider.self_heal = self_heal
    result = w.engine().deploy(BAD, strategy=strategy)
    assert result.outcome == "rolled back" and not result.ok
    assert result.gate == gate, result
    if not self_heal or gate == "boot":
        assert words in (result.message or ""), result.message
    assert result.instance is not None
    if behavior.exit_at_start:
        assert result.log == BAD_START_LOG
    # a batch proves itself for [fleet] settle before what it replaces goes
    assert w.min_capacity_after(t0) >= 2
    w.assert_settled(OLD, 2)
    entry = w.journal().history(FLEET)[0]
    assert entry.outcome == "rolled back" and entry.figures["gate"] == gate
    rec = w.db.fleet(FLEET)
    assert rec is not None and rec.current_image == OLD


def test_a_run_line_that_returns_is_said_to_serve_nothing(world: World) -> None:
    """Panel's, Bokeh's or Shiny's app.py run as a script defines the app and ends
    with status 0: 'exited at start with status 0' and an empty log said nothing."""
    world.provider.add_image(BAD, Behavior(exit_at_start=True, start_status=0))
    result = world.engine().deploy(BAD)
    assert result.outcome == "rolled back" and result.gate == "boot"
    assert "exited at start with status 0" in (result.message or "")
    assert "the run line returned, so nothing serves" in (result.message or "")


def test_an_automatic_rollback_plan_names_the_image_it_leaves(deployed: World) -> None:
    """Its header read '(nothing) → img-old', as if nothing had been deployed."""
    deployed.provider.add_image(BAD, Behavior(never_healthy=True))
    result = deployed.engine().deploy(BAD)
    assert result.outcome == "rolled back" and result.deployment is not None
    plan = deployed.journal().get(result.deployment).rollback_plan
    assert plan is not None and f"{BAD} → {OLD}" in plan.describe()[0], plan.describe()


def test_a_failed_first_deployment_leaves_nothing_behind(world: World) -> None:
    world.provider.add_image(BAD, Behavior(exit_at_start=True))
    result = world.engine().deploy(BAD)
    assert result.outcome == "rolled back"
    world.assert_settled(None, 0)


def test_no_rollback_loop_when_the_old_image_fails_too(deployed: World) -> None:
    w = deployed
    w.provider.add_image(BAD, Behavior(never_healthy=True))
    w.engine().deploy(BAD)  # rolled back: OLD x2 serve
    # now OLD itself starts failing (say its database went away) and NEW is bad as well
    w.provider.behaviors[OLD] = Behavior(exit_at_start=True)
    w.provider.add_image(NEW, Behavior(exit_at_start=True))
    launches = sum(1 for c in w.provider.calls if c[0] == "launch")
    result = w.engine(max_surge=0, max_unavailable=1).deploy(NEW)
    assert result.outcome == "failed"
    assert "the rollback to" in (result.message or "") and "failed too" in (result.message or "")
    new_launches = sum(1 for c in w.provider.calls if c[0] == "launch") - launches
    assert new_launches == 2  # one forward batch, one rollback attempt: no loop
    assert w.journal().unfinished(FLEET) is None
    assert w.journal().history(FLEET)[0].outcome == "failed"


def test_progress_deadline_trips_with_its_own_message(deployed: World) -> None:
    w = deployed
    w.provider.add_image(BAD, Behavior(boot=20.0))  # slow, but within the boot gate
    result = w.engine(grace=30.0, progress_deadline=25.0).deploy(BAD)
    assert result.outcome == "rolled back" and result.gate == "progress"
    assert "progress_deadline" in (result.message or "")
    w.assert_settled(OLD, 2)


def test_canary_passes_then_rolls_on(deployed: World) -> None:
    w, t0 = deployed, deployed.clock.now()
    result = w.engine(size=4).deploy(NEW, strategy="canary")
    assert result.outcome == "succeeded"
    canary = result.figures["canary"]
    assert canary["canary_requests"] >= 20 and canary["canary_error_rate"] == 0.0
    assert w.min_capacity_after(t0) >= 2
    w.assert_settled(NEW, 4)


@pytest.mark.parametrize(
    ("behavior", "words"),
    [
        (Behavior(error_rate=0.2), "5xx rate 20.00% on the canaries vs 0.00% on the fleet"),
        (Behavior(p99=0.5), "p99 latency 500ms on the canaries vs 50ms on the fleet"),
    ],
)
def test_canary_fails_on_errors_or_latency(deployed: World, behavior: Behavior, words: str) -> None:
    w = deployed
    w.provider.add_image(BAD, behavior)
    result = w.engine().deploy(BAD, strategy="canary")
    assert result.outcome == "rolled back" and result.gate == "canary"
    assert words in (result.message or ""), result.message
    entry = w.journal().history(FLEET)[0]
    assert entry.figures["canary_requests"] > 0 and "canary_p99" in entry.figures
    w.assert_settled(OLD, 2)


@pytest.mark.parametrize(
    ("canary_ms", "fleet_ms", "fails"),
    [
        (3.0, 1.0, False),  # 3x, but 2 ms: a busy machine's noise, not a regression
        (21.0, 0.5, True),  # past the ratio and the slack
        (140.0, 100.0, False),  # 40 ms more, but within the ratio
        (160.0, 100.0, True),
    ],
)
def test_canary_latency_needs_both_the_ratio_and_the_slack(
    canary_ms: float, fleet_ms: float, fails: bool
) -> None:
    figures = {
        "canary_requests": 100,
        "canary_error_rate": 0.0,
        "canary_p99": canary_ms / 1000,
        "fleet_error_rate": 0.0,
        "fleet_p99": fleet_ms / 1000,
    }
    why = judge_canary(figures, Settings())
    assert (why is not None) == fails, why
    if fails:
        assert why is not None and "p99_slack" in why


def test_canary_without_traffic_cannot_be_judged(deployed: World) -> None:
    deployed.provider.rps = 0
    result = deployed.engine().deploy(NEW, strategy="canary")
    assert result.gate == "canary" and "min_requests" in (result.message or "")


def test_scale_up_and_down(deployed: World) -> None:
    w = deployed
    assert w.engine().scale(4).outcome == "succeeded"
    assert w.serving() == {OLD: 4}
    assert w.engine().scale(1).outcome == "succeeded"
    w.assert_settled(OLD, 1)
    # the scaled size sticks for the next deployment
    assert w.engine().deploy(NEW).ok
    w.assert_settled(NEW, 1)
    assert w.engine(size=3).deploy(OLD).ok  # ... until kiln.toml's size changes
    w.assert_settled(OLD, 3)


def test_rollback_goes_to_the_previous_image(deployed: World) -> None:
    w = deployed
    w.engine().deploy(NEW)
    result = w.engine().rollback(reason="bad numbers")
    assert result.outcome == "succeeded" and result.to_image == OLD
    w.assert_settled(OLD, 2)
    assert w.journal().history(FLEET)[0].reason == "bad numbers"


def test_bad_input_is_refused_before_anything_changes(world: World) -> None:
    with pytest.raises(ImageNotFound, match="img-missing"):
        world.engine().deploy("img-missing")
    with pytest.raises(DeployError, match="unknown strategy"):
        world.engine().deploy(OLD, strategy="yolo")
    with pytest.raises(FleetNotFound, match="has not been deployed"):
        world.engine().rollback()
    with pytest.raises(FleetNotFound):
        world.engine().scale(3)
    assert world.provider.calls == [] or all(c[0] == "describe" for c in world.provider.calls)
    assert world.journal().history(FLEET) == []


def test_dry_run_plan_touches_nothing(deployed: World) -> None:
    calls = len(deployed.provider.calls)
    plan = deployed.engine().plan(NEW, "blue-green")
    assert [s.kind for s in plan.steps] == ["launch", "switch", "retire"]
    assert "switch the load balancer" in "\n".join(plan.describe())
    assert all(c[0] == "describe" for c in deployed.provider.calls[calls:])
    assert len(deployed.journal().history(FLEET)) == 1


class _CtrlC:
    """A clock whose n-th sleep is interrupted by Ctrl-C."""

    def __init__(self, world: World, at: int) -> None:
        self.world, self.left = world, at

    def now(self) -> float:
        return self.world.clock.now()

    def sleep(self, seconds: float) -> None:
        self.left -= 1
        if self.left == 0:
            raise KeyboardInterrupt
        self.world.clock.sleep(seconds)


def test_ctrl_c_stops_and_says_how_to_finish(deployed: World) -> None:
    w = deployed
    engine = w.engine()
    engine.clock = _CtrlC(w, at=3)
    with pytest.raises(DeployInterrupted) as info:
        engine.deploy(NEW)
    message = str(info.value)
    assert "kiln deploy --resume" in message and "kiln rollback" in message
    assert "stopped at step 1 of 4 (launch 1 x" in message and OLD in message
    dep = w.journal().unfinished(FLEET)
    assert dep is not None and dep.outcome == "interrupted"
    assert w.db.conn.execute("SELECT COUNT(*) FROM deploy_locks").fetchone()[0] == 0
    w.engine().plan(NEW)
    assert any("is unfinished: 'kiln deploy' finishes it first" in e.message for e in w.events)
    result = w.engine().resume()
    assert result is not None and result.outcome == "succeeded"
    w.assert_settled(NEW, 2)


def test_rollback_of_an_interrupted_deployment(deployed: World) -> None:
    w = deployed
    engine = w.engine()
    engine.clock = _CtrlC(w, at=3)
    with pytest.raises(DeployInterrupted):
        engine.deploy(NEW)
    result = w.engine().rollback()
    assert result.outcome == "rolled back" and result.gate == "user"
    assert result.ok and result.to_json()["ok"]  # done as asked: `kiln rollback` exits 0
    w.assert_settled(OLD, 2)


def test_a_provider_failure_stops_without_rolling_back(deployed: World) -> None:
    """An unreachable agent says nothing about the image: stop, journal, resume later."""
    w = deployed
    w.provider.fail_next("terminate", AgentError("the agent is not running"))
    with pytest.raises(DeployError) as info:
        w.engine().deploy(NEW)
    message = str(info.value)
    assert message.startswith("the agent is not running; deployment dep-")
    assert "kiln deploy --resume" in message
    dep = w.journal().unfinished(FLEET)
    assert dep is not None and dep.outcome == "interrupted"
    assert w.db.conn.execute("SELECT COUNT(*) FROM deploy_locks").fetchone()[0] == 0
    result = w.engine().resume()
    assert result is not None and result.outcome == "succeeded"
    w.assert_settled(NEW, 2)


def test_scale_to_zero_keeps_the_fleet_and_comes_back(deployed: World) -> None:
    w = deployed
    result = w.engine().scale(0)
    assert result.ok and "scaled to 0" in (result.message or "")
    assert any(f"scaling {FLEET} to 0" in e.message for e in w.events if e.kind == "warning")
    assert w.running() == {}
    assert w.engine().scale(2).ok
    w.assert_settled(OLD, 2)


def test_destroy_stops_everything_forgets_the_fleet_and_keeps_history(deployed: World) -> None:
    w = deployed
    assert w.engine().deploy(NEW, strategy="blue-green").ok  # a warm standby goes too
    result = w.engine().destroy(reason="retired")
    assert result.ok and result.kind == "destroy", result
    assert w.provider.describe(FLEET).live() == []
    assert w.db.fleet(FLEET) is None
    kinds = [e.kind for e in w.journal().history(FLEET)]
    assert kinds[0] == "destroy" and kinds.count("deploy") == 2
    again = w.engine().deploy(NEW)  # a fresh first deployment of the same app
    assert again.ok
    w.assert_settled(NEW, 2)
    rec = w.db.fleet(FLEET)
    assert rec is not None and rec.previous_image is None
