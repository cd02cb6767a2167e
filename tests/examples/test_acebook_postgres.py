"""acebook against a real PostgreSQL server: DATABASE_URL=postgresql://..."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

HARNESS = (
    Path(__file__).resolve().parents[2] / "examples" / "acebook" / "tests" / "acebook_harness.py"
)


def harness() -> ModuleType:
    spec = importlib.util.spec_from_file_location("acebook_harness", HARNESS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("acebook_harness", module)
    spec.loader.exec_module(module)
    return module


def test_instances_share_posts_in_postgresql(postgres_url: str) -> None:
    start = harness().start
    first = start({"DATABASE_URL": postgres_url, "KILN_INSTANCE_ID": "i-1"})
    second = start({"DATABASE_URL": postgres_url, "KILN_INSTANCE_ID": "i-2"})
    try:
        assert first.post_json("/api/posts", {"author": "ann", "body": "in postgres"})[0] == 201
        assert second.post_json("/api/posts", {"author": "bob", "body": "me too"})[0] == 201
        assert first.stop() == 0
        posts = second.get_json("/api/posts")["posts"]
        assert [(p["body"], p["instance"]) for p in posts] == [
            ("me too", "i-2"),
            ("in postgres", "i-1"),
        ]
        assert second.get_json("/api/info")["posts"] == 2
    finally:
        first.stop()
        second.stop()
