"""Fixtures for the local provider tests.

Every test that starts an agent gets it (and every instance it ran) stopped
and killed at teardown, so nothing outlives the test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from localtest import free_port, kill_everything, make_image, write_config

from kiln.config import load_config
from kiln.home import Home
from kiln.local.provider import LocalProvider


@pytest.fixture
def local_home(home: Home) -> Iterator[Home]:
    """A KILN_HOME whose agent and instances die with the test."""
    yield home
    kill_everything(home)


@pytest.fixture
def image(local_home: Home) -> str:
    return make_image(local_home)


@pytest.fixture
def lb_port() -> int:
    return free_port()


@pytest.fixture
def provider(local_home: Home, tmp_path: Path, lb_port: int) -> LocalProvider:
    return LocalProvider(local_home, load_config(write_config(tmp_path / "app", lb_port)))
