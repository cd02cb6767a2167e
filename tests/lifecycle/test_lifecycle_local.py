"""Drift, recycle and prune on the real local provider, under real load."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from e2ekit import Load, app_image

from kiln.home import Home
from kiln.image.store import Store
from kilntest import Kiln

pytestmark = pytest.mark.slow


def _json(kiln: Kiln, *args: str, ok: bool = True) -> tuple[int, Any]:
    result = kiln(*args, "--json", ok=ok)
    return result.exit_code, json.loads(result.stdout)


def _live(kiln: Kiln) -> list[dict[str, Any]]:
    _, status = _json(kiln, "status")
    return [i for i in status["instances"] if i["state"] == "healthy"]


def test_tampered_instance_is_found_and_replaced_without_failing_a_request(
    site: tuple[Kiln, int], home: Home
) -> None:
    kiln, port = site
    v1 = app_image(home, "v1")
    assert _json(kiln, "deploy", "--image", v1)[1]["outcome"] == "succeeded"
    code, clean = _json(kiln, "drift")
    assert code == 0 and clean["drifted"] == 0 and len(clean["instances"]) == 2

    victim = _live(kiln)[0]["id"]
    instance_dir = home.instances / victim
    (instance_dir / "app.py").write_text((instance_dir / "app.py").read_text() + "# hotfix\n")
    (instance_dir / "backdoor.py").write_text("print('hi')\n")

    code, report = _json(kiln, "drift", ok=False)
    assert code == 6
    by_id = {i["id"]: i for i in report["instances"]}
    assert by_id[victim]["drifted"] is True
    assert sorted((c["path"], c["kind"]) for c in by_id[victim]["changes"]) == [
        ("app.py", "modified"),
        ("backdoor.py", "added"),
    ]
    assert [i for i in report["instances"] if i["drifted"]] == [by_id[victim]]

    with Load(port) as load:
        code, fixed = _json(kiln, "drift", "--replace")
        time.sleep(0.3)
    assert code == 0 and fixed["replaced"]["outcome"] == "succeeded", fixed
    assert load.sent > 20 and load.failed == 0, load.errors[:5]
    assert victim not in {i["id"] for i in _live(kiln)}
    assert _json(kiln, "drift")[0] == 0
    _, history = _json(kiln, "history")
    assert history[0]["kind"] == "drift" and history[0]["outcome"] == "succeeded"


def test_recycle_replaces_old_instances_under_load(site: tuple[Kiln, int], home: Home) -> None:
    kiln, port = site
    v1 = app_image(home, "v1")
    assert _json(kiln, "deploy", "--image", v1)[1]["outcome"] == "succeeded"
    before = {i["id"] for i in _live(kiln)}
    time.sleep(0.2)
    _, due = _json(kiln, "recycle", "--max-age", "100ms", "--dry-run")
    assert set(due["due"]) == before
    with Load(port) as load:
        code, result = _json(kiln, "recycle", "--max-age", "100ms")
    assert code == 0 and result["outcome"] == "succeeded", result
    assert load.sent > 20 and load.failed == 0, load.errors[:5]
    after = _live(kiln)
    assert len(after) == 2 and not before & {i["id"] for i in after}
    assert {i["image"] for i in after} == {v1}


def test_agent_recycles_past_max_age_on_its_own(site: tuple[Kiln, int], home: Home) -> None:
    kiln, port = site
    config = kiln.cwd / "kiln.toml"
    config.write_text(
        config.read_text().replace('settle = "0.5s"', 'settle = "0.5s"\nmax_age = "4s"')
    )
    v1 = app_image(home, "v1")
    assert _json(kiln, "deploy", "--image", v1)[1]["outcome"] == "succeeded"
    first = {i["id"] for i in _live(kiln)}
    with Load(port) as load:
        deadline = time.monotonic() + 120  # a ceiling: it took 30 s at load 13
        while time.monotonic() < deadline:
            now = {i["id"] for i in _live(kiln)}
            if len(now) == 2 and not now & first:
                break
            time.sleep(0.5)
    assert not {i["id"] for i in _live(kiln)} & first, "the agent never recycled"
    assert load.sent > 50 and load.failed == 0, load.errors[:5]


def test_prune_keeps_what_serves_and_the_rollback_target(
    site: tuple[Kiln, int], home: Home, tmp_path: Path
) -> None:
    kiln, _port = site
    images = [app_image(home, f"v{n}") for n in range(4)]
    for image in images[2:]:
        assert _json(kiln, "deploy", "--image", image)[1]["outcome"] == "succeeded"
    _, dry = _json(kiln, "prune", "--keep", "1", "--dry-run")
    assert set(dry["remove"]) == set(images[:2]) and dry["dry_run"] is True
    assert {images[2], images[3]} <= set(dry["in_use"])
    shown = kiln("prune", "--keep", "1", "--dry-run").stdout
    # the rollback target runs nowhere: "keep (in use)" misled an operator
    assert f"{images[2]}" in shown and "keep (running, warm or a rollback target)" in shown
    _, done = _json(kiln, "prune", "--keep", "1")
    assert done["bytes_freed"] > 0
    left = {r.id for r in Store(home).list_images()}
    assert left == {images[2], images[3]}
    code, rollback = _json(kiln, "rollback")
    assert code == 0 and rollback["outcome"] == "succeeded"


def test_agent_launches_after_prune_repacked_its_objects(
    site: tuple[Kiln, int], home: Home
) -> None:
    """A long-lived agent must not read a pack that a prune has just rewritten."""
    from e2ekit import APP

    kiln, _port = site
    (kiln.cwd / "app.py").write_text(APP)
    for version in ("v1", "v2", "v3"):  # app.py lands in v1's pack, shared by all three
        (kiln.cwd / "version.txt").write_text(version)
        assert _json(kiln, "deploy")[1]["outcome"] == "succeeded"
    _, pruned = _json(kiln, "prune", "--keep", "1")
    assert len(pruned["remove"]) == 1 and pruned["objects_removed"] >= 1
    code, scaled = _json(kiln, "scale", "3")
    assert code == 0 and scaled["outcome"] == "succeeded", scaled
    assert len(_live(kiln)) == 3
