"""The CI validators of tests/ci, for the example's committed workflow."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

_LINTERS = Path(__file__).resolve().parents[1] / "ci" / "ci_linters.py"


@pytest.fixture(scope="session")
def linters() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kiln_ci_linters", _LINTERS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.ensure_actionlint()
    return module
