"""Shared fixtures: every test gets its own KILN_HOME, never the real one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from kiln.cli import cli
from kiln.home import Home

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Point KILN_HOME (and HOME) somewhere private so no test touches ~/.kiln."""
    base = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("KILN_HOME", str(base / "kiln"))
    monkeypatch.setenv("HOME", str(base))
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def home() -> Home:
    return Home.resolve(os.environ["KILN_HOME"]).ensure()


class Kiln:
    """Runs the real CLI in-process, from a chosen directory."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.runner = CliRunner()

    def __call__(self, *args: str, ok: bool = True, input: str | None = None) -> Result:
        old = Path.cwd()
        os.chdir(self.cwd)
        try:
            result = self.runner.invoke(cli, list(args), input=input, catch_exceptions=False)
        finally:
            os.chdir(old)
        if ok and result.exit_code != 0:
            raise AssertionError(
                f"kiln {' '.join(args)} exited {result.exit_code}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result


@pytest.fixture
def kiln(tmp_path: Path) -> Iterator[Kiln]:
    yield Kiln(tmp_path)
