"""Helpers shared by test modules: import them from here, never from conftest."""

from __future__ import annotations

import os
from pathlib import Path

from click.testing import CliRunner, Result

from kiln.cli import cli

REPO = Path(__file__).resolve().parents[1]


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
