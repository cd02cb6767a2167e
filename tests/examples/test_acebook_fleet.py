"""acebook as kiln runs it: baked for real, launched by the local agent with
DATABASE_URL as a secret, served through the agent's load balancer."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from kiln.config import load_config
from kiln.home import Home
from kiln.image.bake import bake
from kiln.local.provider import LocalProvider

TESTS = Path(__file__).resolve().parents[1]
ACEBOOK = TESTS.parent / "examples" / "acebook"
pytestmark = pytest.mark.slow


def localtest() -> ModuleType:
    """tests/local's helpers (agent cleanup, waiting), loaded by path."""
    spec = importlib.util.spec_from_file_location("localtest", TESTS / "local" / "localtest.py")
    assert spec is not None and spec.loader is not None
    module = sys.modules.get("localtest") or importlib.util.module_from_spec(spec)
    if "localtest" not in sys.modules:
        sys.modules["localtest"] = module
        spec.loader.exec_module(module)
    return module


@pytest.fixture
def fleet(
    home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[LocalProvider, str, int]]:
    """acebook's own kiln.toml, on a free load-balancer port, baked and launched x2."""
    helpers = localtest()
    app = tmp_path / "acebook"
    app.mkdir()
    for name in ("app.py", "posts.py", "requirements.txt"):
        shutil.copy(ACEBOOK / name, app / name)
    port = helpers.free_port()
    config = (ACEBOOK / "kiln.toml").read_text()
    (app / "kiln.toml").write_text(config.replace("127.0.0.1:8080", f"127.0.0.1:{port}"))
    monkeypatch.setenv("DATABASE_URL", f"sqlite://{tmp_path}/posts.db")
    loaded = load_config(app / "kiln.toml")
    image = bake(loaded, home).image
    provider = LocalProvider(home, loaded)
    try:
        provider.launch("acebook", image, 2)
        helpers.serving(provider, 2, "acebook")
        yield provider, image, port
    finally:
        helpers.kill_everything(home)


def test_acebook_serves_posts_through_the_fleet(fleet: tuple[LocalProvider, str, int]) -> None:
    provider, image, port = fleet
    base = f"http://127.0.0.1:{port}"
    request = urllib.request.Request(
        base + "/api/posts",
        data=json.dumps({"author": "ann", "body": "via the load balancer"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as resp:
        assert resp.status == 201
        assert json.load(resp)["image"] == image
    seen = set()
    for _ in range(20):
        with urllib.request.urlopen(base + "/api/info", timeout=5) as resp:
            info = json.load(resp)
        assert (info["version"], info["image"], info["posts"]) == ("v1", image, 1)
        seen.add(info["instance"])
    serving = {i.id for i in provider.describe("acebook").serving()}
    assert seen <= serving and len(seen) == 2
