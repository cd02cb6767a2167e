"""Every `kiln ci` and `check-jsonschema` command shown in docs/ci.md, run for real."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "ci.md"
RUNNABLE = ("kiln ci ", "check-jsonschema ")
APP = '[app]\nname = "shop"\nrun = "python3 app.py"\n[provider.aws]\n'


def console_blocks() -> list[list[str]]:
    blocks = re.findall(r"```console\n(.*?)```", DOC.read_text(), flags=re.S)
    commands = [
        [line[2:] for line in block.splitlines() if line.startswith("$ ")] for block in blocks
    ]
    return [cmds for cmds in commands if any(c.startswith(RUNNABLE) for c in cmds)]


def test_the_doc_shows_runnable_commands() -> None:
    assert len(console_blocks()) >= 3


@pytest.mark.parametrize("commands", console_blocks(), ids=lambda c: c[0][:40])
def test_doc_commands_run(tmp_path: Path, commands: list[str]) -> None:
    """Each console block runs in a fresh checkout of an app, as a reader would."""
    (tmp_path / ".git").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "kiln.toml").write_text(APP)
    (tmp_path / "bake.json").write_text(json.dumps({"image": "img-0123456789ab"}))
    (tmp_path / "deploy.json").write_text(json.dumps({"outcome": "succeeded"}))
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    if any(c.startswith("check-jsonschema") for c in commands):
        for system in ("github", "gitlab"):
            subprocess.run(["kiln", "ci", "init", system], cwd=tmp_path, env=env, check=True)
    for command in commands:
        if not command.startswith(RUNNABLE):
            continue
        proc = subprocess.run(
            ["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert proc.returncode == 0, f"{command}\n{proc.stdout}\n{proc.stderr}"
