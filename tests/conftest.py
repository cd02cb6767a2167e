"""Shared fixtures: every test gets its own KILN_HOME, never the real one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.home import Home
from kilntest import Kiln

# Longest test files first on xdist workers (make test); see tests/suiteorder.py.
pytest_plugins = ["suiteorder"]


@pytest.fixture(autouse=True)
def _isolated_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Point KILN_HOME (and HOME) somewhere private so no test touches ~/.kiln."""
    base = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("KILN_HOME", str(base / "kiln"))
    monkeypatch.setenv("HOME", str(base))
    # kiln ci init: this checkout has no address a runner could install it from
    monkeypatch.setenv("KILN_CI_INSTALL", "kiln-deploy @ git+https://example.org/kiln.git@0123abc")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def home() -> Home:
    return Home.resolve(os.environ["KILN_HOME"]).ensure()


@pytest.fixture
def kiln(tmp_path: Path) -> Iterator[Kiln]:
    yield Kiln(tmp_path)


# Suites whose every test starts real processes (agents, instances, servers):
# marked slow here so `make test-fast` leaves them out without a marker per test.
_PROCESS_SUITES = ("local", "lifecycle", "examples", "realapps", "vm", "ui")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = Path(__file__).parent
    for item in items:
        parts = Path(item.fspath).relative_to(root).parts
        if parts and parts[0] in _PROCESS_SUITES:
            item.add_marker(pytest.mark.slow)
