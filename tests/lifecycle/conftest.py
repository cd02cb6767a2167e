"""End-to-end fixtures for drift, recycle and prune: the deploy e2e kit, reused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from e2ekit import free_port, kill_everything, write_app_config

from kiln.home import Home
from kilntest import Kiln


@pytest.fixture
def site(home: Home, tmp_path: Path) -> Iterator[tuple[Kiln, int]]:
    port = free_port()
    config = write_app_config(tmp_path / "app", port, settle="0.5s")
    try:
        yield Kiln(config.parent), port
    finally:
        kill_everything(home)
