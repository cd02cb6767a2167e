"""The deploy commands wired to a FakeProvider on real time (open_provider patched)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from deploykit import BAD, NEW, OLD

from kiln.config import LoadedConfig
from kiln.deploy import StateDb, SystemClock
from kiln.deploy.lock import DeployLock
from kiln.errors import ProviderError
from kiln.home import Home
from kiln.providers import registry as providers
from kiln.providers.fake import Behavior, FakeProvider

CONFIG = """\
[app]
name = "shop"
run = "python3 app.py"

[health]
interval = "100ms"
timeout = "100ms"
healthy_threshold = 1
grace = 0

[fleet]
size = 2
settle = 0
keep_warm = "1m"
"""


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeProvider:
    provider = FakeProvider(SystemClock())
    provider.add_image(OLD, Behavior(boot=0.05))
    provider.add_image(NEW, Behavior(boot=0.05))
    provider.add_image(BAD, Behavior(boot=0.05, exit_at_start=True))

    def open_fake(name: str, home: Home, loaded: LoadedConfig) -> FakeProvider:
        assert name == "local" and loaded.config.app.name == "shop"
        return provider

    monkeypatch.setattr(providers, "open_provider", open_fake)
    return provider


@pytest.fixture
def app(kiln: Any, fake: FakeProvider) -> Iterator[Any]:
    (kiln.cwd / "kiln.toml").write_text(CONFIG)
    yield kiln


def _json(kiln: Any, *args: str, ok: bool = True) -> dict[str, object]:
    result = kiln(*args, "--json", ok=ok)
    data: dict[str, object] = json.loads(result.stdout)
    return data


def test_deploy_status_history_rollback_scale(app: Any) -> None:
    first = _json(app, "deploy", "--image", OLD)
    assert first["outcome"] == "succeeded" and first["to"] == OLD
    second = app("deploy", "--image", NEW, "--strategy", "blue-green", "--reason", "new menu")
    assert "serves img-0000000000bb on 2 instance(s)" in second.stdout
    assert "switch the load balancer" in second.stderr  # live progress on stderr

    status = _json(app, "status")
    assert status["current_image"] == NEW and status["previous_image"] == OLD
    assert status["desired_size"] == 2 and status["serving"] == 2
    assert status["endpoint"] == "http://127.0.0.1:8080"
    instances = status["instances"]
    assert isinstance(instances, list) and len(instances) == 4
    assert {i["image"] for i in instances if i["warm"]} == {OLD}
    human = app("status").stdout
    assert "warm standby img-0000000000aa x2" in human and "i-0001" in human

    history = json.loads(app("history", "--json").stdout)
    assert [h["outcome"] for h in history] == ["succeeded", "succeeded"]
    assert history[0]["reason"] == "new menu" and history[0]["strategy"] == "blue-green"
    assert "new menu" in app("history").stdout

    back = _json(app, "rollback")
    assert back["outcome"] == "succeeded" and back["to"] == OLD and back["kind"] == "rollback"
    assert _json(app, "scale", "3")["outcome"] == "succeeded"
    assert _json(app, "status")["serving"] == 3


def test_dry_run_prints_the_plan_and_changes_nothing(app: Any, fake: FakeProvider) -> None:
    app("deploy", "--image", OLD)
    calls = len(fake.calls)
    out = app("deploy", "--image", NEW, "--dry-run").stdout
    assert "rolling deployment of shop: img-0000000000aa → img-0000000000bb" in out
    assert "1. launch 1 x img-0000000000bb" in out
    assert "1. launch" in app("deploy", "--image", NEW, "--wait", "--dry-run").stdout
    plan = json.loads(app("deploy", "--image", NEW, "--dry-run", "--json").stdout)
    assert plan["format"] == 1 and plan["steps"][0]["kind"] == "launch"
    assert all(c[0] == "describe" for c in fake.calls[calls:])


def test_a_bad_image_is_rolled_back_with_a_non_zero_exit(app: Any) -> None:
    app("deploy", "--image", OLD)
    result = app("deploy", "--image", BAD, ok=False)
    assert result.exit_code == 4
    assert (
        "boot gate: instance" in result.stderr and "exited at start with status 1" in result.stderr
    )
    assert "ModuleNotFoundError: No module named 'flask'" in result.stderr
    assert "the fleet serves img-0000000000aa again" in result.stderr
    data = _json(app, "deploy", "--image", BAD, ok=False)
    assert data["outcome"] == "rolled back" and data["gate"] == "boot" and data["ok"] is False
    assert _json(app, "status")["current_image"] == OLD


def test_bad_input_is_one_line_and_changes_nothing(app: Any, fake: FakeProvider) -> None:
    result = app("deploy", "--image", "img-000000000404", ok=False)
    assert result.exit_code == 1 and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    result = app("rollback", ok=False)
    assert "has not been deployed yet" in result.stderr
    assert app("deploy", "--resume").stdout.startswith("no interrupted deployment")
    assert [c for c in fake.calls if c[0] != "describe"] == []


def test_lock_contention_and_unlock(app: Any, home: Home) -> None:
    app("deploy", "--image", OLD)
    db = StateDb(home.state_db)
    DeployLock(db, "shop", SystemClock(), user="bob", host="elsewhere", pid=1).acquire()
    result = app("deploy", "--image", NEW, ok=False)
    assert result.exit_code == 5 and "bob@elsewhere (pid 1)" in result.stderr
    result = app("deploy", "--image", NEW, "--wait", "300ms", ok=False)
    assert result.exit_code == 5
    result = app("unlock", ok=False)
    assert "looks alive" in result.stderr and "--force" in result.stderr
    assert "removed the lock of fleet shop held by bob@elsewhere" in app("unlock", "--force").stdout
    assert "is not locked" in app("unlock").stdout
    app("deploy", "--image", NEW)
    db.close()


def test_provider_registry_refuses_unknown_names(tmp_path: Path) -> None:
    with pytest.raises(ProviderError, match="unknown provider 'gcp'") as info:
        providers.open_provider("gcp", Home(tmp_path), None)  # type: ignore[arg-type]
    assert "local, aws" in (info.value.hint or "")
