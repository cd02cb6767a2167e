from __future__ import annotations

import threading
from pathlib import Path

import pytest

from bake.apps import write_app
from kiln.config import load_config
from kiln.home import Home
from kiln.image.bake import BakeResult, bake
from kiln.image.prune import plan_prune, prune
from kiln.image.store import Store


def _versions(app: Path, home: Home, count: int) -> list[BakeResult]:
    results = []
    for n in range(count):
        (app / "static" / "version.txt").write_text(f"v{n}\n" * 1000)
        (app / "big.bin").write_bytes(bytes([n]) * (2 << 20))  # a loose object per version
        results.append(bake(load_config(app), home))
    return results


def test_keeps_newest_and_in_use_and_frees_the_rest(tmp_path: Path, home: Home) -> None:
    app = write_app(tmp_path / "app")
    v = _versions(app, home, 5)
    store = Store(home)
    plan = plan_prune(store, keep=2, in_use=[v[0].image])
    assert {r.id for r in plan.remove} == {v[1].image, v[2].image}
    dry = prune(store, plan, dry_run=True)
    assert dry.bytes_freed >= 2 * (2 << 20) and len(store.list_images()) == 5
    result = prune(Store(home), plan)
    assert result.bytes_freed == dry.bytes_freed
    fresh = Store(home)
    assert {r.id for r in fresh.list_images()} == {v[0].image, v[3].image, v[4].image}
    for kept in (v[0], v[3], v[4]):
        assert fresh.verify(kept.image) == []
    again = prune(fresh, plan_prune(fresh, keep=2, in_use=[v[0].image]))
    assert again.bytes_freed == 0 and again.objects_removed == 0


def test_pruned_app_bakes_again_from_its_index(tmp_path: Path, home: Home) -> None:
    app = write_app(tmp_path / "app")
    v = _versions(app, home, 2)
    store = Store(home)
    prune(store, plan_prune(store, keep=1, in_use=[]))
    (app / "static" / "version.txt").write_text("v0\n" * 1000)
    (app / "big.bin").write_bytes(bytes([0]) * (2 << 20))
    again = bake(load_config(app), home)
    assert again.image == v[0].image and not again.reused
    assert Store(home).verify(again.image) == []


@pytest.mark.slow
def test_prune_racing_a_bake_leaves_both_correct(tmp_path: Path, home: Home) -> None:
    app = write_app(tmp_path / "app", files=400)
    _versions(app, home, 3)
    other = write_app(tmp_path / "other", name="other", files=2000)
    errors: list[BaseException] = []
    results: list[BakeResult] = []

    def bake_other() -> None:
        try:
            results.append(bake(load_config(other), home))
        except BaseException as exc:
            errors.append(exc)

    for _ in range(3):
        (other / "static" / "f0.txt").write_text(f"round {_}")
        thread = threading.Thread(target=bake_other)
        thread.start()
        store = Store(home)
        prune(store, plan_prune(store, keep=1, in_use=[], app="shop"))
        thread.join()
    assert not errors
    store = Store(home)
    assert results[-1].image in {r.id for r in store.list_images()}
    for record in store.list_images():
        assert store.verify(record.id) == [], record.id


def test_an_image_taken_into_use_after_planning_is_kept(tmp_path: Path, home: Home) -> None:
    app = write_app(tmp_path / "app")
    v = _versions(app, home, 3)
    store = Store(home)
    plan = plan_prune(store, keep=1, in_use=[])
    assert {r.id for r in plan.remove} == {v[0].image, v[1].image}
    result = prune(store, plan, still_in_use=lambda: [v[0].digest])  # a rollback started
    assert {r.id for r in result.plan.remove} == {v[1].image}
    assert {r.id for r in Store(home).list_images()} == {v[0].image, v[2].image}
    assert Store(home).verify(v[0].image) == []
