"""Shared package caches (pip, npm) for every real app, and nothing left running."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
from realkit import CACHE

from kiln.home import Home


@pytest.fixture(autouse=True)
def _package_caches(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed (scripts/test-deps.sh installs it)")
    CACHE.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("PIP_CACHE_DIR", str(CACHE / "pip"))
    monkeypatch.setenv("npm_config_cache", str(CACHE / "npm"))
    monkeypatch.setenv("npm_config_update_notifier", "false")
    yield
    from localtest import kill_everything

    kill_everything(Home.resolve(os.environ["KILN_HOME"]))
