"""Replacing chosen instances from their own image: recycle and drift repair."""

from __future__ import annotations

from deploykit import FLEET, NEW, OLD, Behavior, World


def test_replacing_instances_keeps_image_capacity_and_rollback_target(deployed: World) -> None:
    w = deployed
    assert w.engine().deploy(NEW).outcome == "succeeded"
    old_ids = [i.id for i in w.provider.describe(FLEET).live()]
    t0 = w.clock.now()
    result = w.engine().replace_instances(old_ids, kind="recycle", why="older than 7d")
    assert result.outcome == "succeeded", result
    after = w.provider.describe(FLEET).live()
    assert {i.image for i in after} == {NEW} and not {i.id for i in after} & set(old_ids)
    assert w.min_capacity_after(t0) >= 2, "never below the desired healthy capacity"
    assert max(n for at, _f, n in w.provider.capacity if at >= t0) <= 3  # size + max_surge
    w.assert_settled(NEW, 2)
    rec = w.db.fleet(FLEET)
    assert rec is not None and (rec.current_image, rec.previous_image) == (NEW, OLD)
    entry = w.journal().history(FLEET)[0]
    assert (entry.kind, entry.from_image, entry.to_image) == ("recycle", NEW, NEW)


def test_a_replacement_that_fails_leaves_the_old_instances_serving(deployed: World) -> None:
    w = deployed
    before = {i.id for i in w.provider.describe(FLEET).live()}
    w.provider.add_image(OLD, Behavior(never_healthy=True))  # new ones never get healthy
    result = w.engine().replace_instances(sorted(before)[:1], kind="drift", why="drifted")
    assert result.outcome == "rolled back"
    assert {i.id for i in w.provider.describe(FLEET).serving()} == before
    w.assert_settled(OLD, 2)


def test_nothing_to_replace_is_unchanged(deployed: World) -> None:
    result = deployed.engine().replace_instances(["i-gone"], kind="recycle", why="old")
    assert result.outcome == "unchanged"
