"""Fixtures wrapping the real pipeline validators in linters.py."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import ci_linters as linters
import pytest


@pytest.fixture(scope="session")
def actionlint() -> Callable[..., linters.Problems]:
    linters.ensure_actionlint()
    return linters.actionlint


@pytest.fixture(scope="session")
def schema_check() -> Callable[[str, Path], subprocess.CompletedProcess[str]]:
    return linters.check_schema
