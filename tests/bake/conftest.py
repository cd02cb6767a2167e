from __future__ import annotations

from pathlib import Path

import pytest

from bake.apps import write_app


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    return write_app(tmp_path / "app")
