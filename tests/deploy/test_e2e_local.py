"""Deployments on the real local provider: real processes, real HTTP, real load.

Zero failed requests while rolling, flipping blue-green, and rolling back bad
images; status and history tell the truth afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2ekit import Load, app_image, free_port, kill_everything, write_app_config

from kiln.home import Home
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


def _deploy(kiln: Kiln, image: str, *args: str, ok: bool = True) -> dict[str, Any]:
    result = kiln("deploy", "--image", image, "--json", *args, ok=ok)
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_rollouts_and_rollbacks_under_load(site: tuple[Kiln, int], home: Home) -> None:
    kiln, port = site
    v1, v2 = app_image(home, "v1"), app_image(home, "v2")
    assert _deploy(kiln, v1)["outcome"] == "succeeded"

    with Load(port) as load:
        load.phase = "rolling"
        rolled = _deploy(kiln, v2)
        assert rolled["outcome"] == "succeeded", rolled
        load.phase = "blue-green"
        flipped = _deploy(kiln, v1, "--strategy", "blue-green")
        assert flipped["outcome"] == "succeeded", flipped
        for variant, gate in (
            ("exits-at-start", "boot"),
            ("never-healthy", "boot"),
            ("crashes-later", "stability"),
        ):
            load.phase = variant
            bad = _deploy(kiln, app_image(home, variant), ok=False)
            assert (bad["outcome"], bad["gate"]) == ("rolled back", gate), bad
            assert bad["instance"]
        load.phase = "rollback"
        back = json.loads(kiln("rollback", "--json").stdout)
        assert back["outcome"] == "succeeded" and back["to"] == v2
    assert load.sent > 200
    assert load.failed == 0, load.errors[:5]

    status = json.loads(kiln("status", "--json").stdout)
    assert status["current_image"] == v2 and status["serving"] == 2
    live = [i for i in status["instances"] if i["state"] in ("healthy", "running", "pending")]
    assert {i["image"] for i in live if i["in_service"]} == {v2}
    history = json.loads(kiln("history", "--json").stdout)
    outcomes = [h["outcome"] for h in history]
    assert (
        outcomes == ["succeeded", "rolled back", "rolled back", "rolled back"] + ["succeeded"] * 3
    )
    assert "exited at start" in history[3]["message"]
