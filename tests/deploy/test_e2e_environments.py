"""Staging and production on the real local provider: two fleets, two listen addresses.

Bake once, prove it in staging, promote the same code to production under
load in both (0 failed requests); code never healthy in staging is refused
for production, and forcing it is written in production's history.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2ekit import APP, Load, free_port, http_get, kill_everything

from kiln.home import Home
from kilntest import Kiln

pytestmark = pytest.mark.slow

CONFIG = """
[app]
name = "web"
run = "python3 app.py"

[env]
GREETING = "base"

[health]
path = "/health"
interval = "100ms"
timeout = "5s"
healthy_threshold = 2
unhealthy_threshold = 2
grace = "20s"

[fleet]
size = 2
drain = "5s"
settle = "1s"
keep_warm = "1m"

[provider.local]
stop_timeout = "2s"

[environments.staging]
env = {{ GREETING = "from staging" }}
fleet = {{ size = 1 }}
provider.local = {{ listen = "127.0.0.1:{staging}" }}

[environments.production]
require = "staging"
env = {{ GREETING = "from production" }}
provider.local = {{ listen = "127.0.0.1:{production}" }}
"""


@pytest.fixture
def site(home: Home, tmp_path: Path) -> Iterator[tuple[Kiln, int, int]]:
    staging, production = free_port(), free_port()
    app = tmp_path / "app"
    app.mkdir()
    (app / "kiln.toml").write_text(CONFIG.format(staging=staging, production=production))
    _code(app, "v1")
    try:
        yield Kiln(app), staging, production
    finally:
        kill_everything(home)


def _code(app: Path, version: str) -> None:
    (app / "app.py").write_text(APP + f"\n# {version}\n")


def _json(kiln: Kiln, *args: str, ok: bool = True) -> Any:
    return json.loads(kiln(*args, "--json", ok=ok).stdout)


def test_bake_once_prove_in_staging_promote_under_load(
    site: tuple[Kiln, int, int], home: Home
) -> None:
    kiln, staging_port, production_port = site
    staging = _json(kiln, "deploy", "--env", "staging")
    assert staging["outcome"] == "succeeded", staging
    # production bakes its own image (its own [env]) of the same code: allowed
    production = _json(kiln, "deploy", "--env", "production")
    assert production["outcome"] == "succeeded", production
    assert production["to"] != staging["to"]
    assert http_get(staging_port)[1]["greeting"] == "from staging"
    assert http_get(production_port)[1]["greeting"] == "from production"

    # new code, never deployed to staging: refused for production, in one line
    _code(kiln.cwd, "v2")
    refused = kiln("deploy", "--env", "production", ok=False)
    assert refused.exit_code == 7
    assert "was never healthy in staging: production requires = 'staging'" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert http_get(production_port)[1]["image"] == production["to"]

    with Load(staging_port) as staging_load, Load(production_port) as production_load:
        staging_load.phase = production_load.phase = "deploy v2 to staging"
        v2 = _json(kiln, "deploy", "--env", "staging")
        assert v2["outcome"] == "succeeded", v2
        staging_load.phase = production_load.phase = "promote v2 to production"
        dry = _json(kiln, "promote", "staging", "production", "--dry-run")
        assert dry["promoted"] == v2["to"] and dry["image"] != v2["to"]
        assert [a["action"] for a in dry["actions"]] == ["record"]  # a manifest, nothing run
        assert dry["plan"] is not None and http_get(production_port)[1]["image"] == production["to"]
        promoted = _json(kiln, "promote", "staging", "production")
        assert promoted["to"] == dry["image"]
        assert promoted["outcome"] == "succeeded", promoted
    for load in (staging_load, production_load):
        assert load.sent > 100, load.phase
        assert load.failed == 0, load.errors[:5]

    served = http_get(production_port)[1]
    assert served["image"] == promoted["to"] and served["greeting"] == "from production"
    images = {i["image"]: i for i in _json(kiln, "images")}
    assert images[promoted["to"]]["code"] == images[v2["to"]]["code"]
    assert images[promoted["to"]]["digest"] != images[v2["to"]]["digest"]

    everywhere = {row["environment"]: row for row in _json(kiln, "status", "--all-envs")}
    assert everywhere["staging"]["image"] == v2["to"]
    assert everywhere["production"]["image"] == promoted["to"]
    assert everywhere["staging"]["code"] == everywhere["production"]["code"]
    assert everywhere["production"]["healthy"] and everywhere["production"]["age"] is not None

    history = _json(kiln, "history", "--env", "production")
    assert [h["fleet"] for h in history] == ["web-production"] * 2
    assert history[0]["reason"].startswith(f"promoted from staging ({v2['to']}, code-")
    assert [h["fleet"] for h in _json(kiln, "history", "--env", "staging")] == ["web-staging"] * 2

    # forcing code past staging works, and production's history says it was forced
    _code(kiln.cwd, "v3")
    forced = _json(
        kiln, "deploy", "--env", "production", "--override-require", "--reason", "hotfix"
    )
    assert forced["outcome"] == "succeeded", forced
    latest = _json(kiln, "history", "--env", "production")[0]
    assert latest["reason"].startswith("override-require: ")
    assert latest["reason"].endswith("never healthy in staging; hotfix")


def test_promotion_needs_a_healthy_source(site: tuple[Kiln, int, int]) -> None:
    kiln, _staging, _production = site
    refused = kiln("promote", "staging", "production", ok=False)
    assert refused.exit_code == 7
    assert "staging (web-staging) serves no single healthy image now" in refused.stderr
    assert "kiln.toml has production, staging: see 'kiln status --all-envs'" in kiln(
        "status"
    ).stdout.replace("\n", " ")
    unknown = kiln("promote", "staging", "prod", ok=False)
    assert "no environment 'prod' in kiln.toml" in unknown.stderr
