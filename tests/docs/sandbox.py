"""A reader's terminal: run a doc's commands one after another, for real.

Each command runs through bash in the sandbox's current directory, with the
test's private KILN_HOME and this venv's ``kiln`` first on PATH. Placeholders
the doc shows (``img-3f2a9c1d0b7e``, ``i-9a41``) are replaced by the real
values a step recorded in ``values``, so the command is otherwise run as
written.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from docs.doccommands import Command


@dataclass
class Step:
    """What running one documented command needs and must show."""

    prepare: Callable[[Sandbox], None] | None = None  # what the reader did before it
    exit: int = 0  # a documented non-zero exit code
    shows: tuple[str, ...] = ()  # text the output must contain (placeholders replaced)
    then: Callable[[Sandbox], None] | None = None  # checks what the command left behind


@dataclass
class Sandbox:
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)
    values: dict[str, str] = field(default_factory=dict)  # placeholder -> real value
    ran: list[str] = field(default_factory=list)
    aws: Any = None  # what the AWS scenario set up (docs.awsdocs.AwsWorld)

    def __post_init__(self) -> None:
        bin_dir = str(Path(sys.executable).parent)
        wide = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "COLUMNS": "160"}  # a real terminal
        self.env = os.environ | wide | self.env

    def fill(self, text: str) -> str:
        for placeholder, value in self.values.items():
            text = text.replace(placeholder, value)
        return text

    def sh(self, command: str, *, exit: int = 0) -> subprocess.CompletedProcess[str]:
        """Run one command line; it must end with ``exit`` and never with a traceback."""
        proc = subprocess.run(
            ["bash", "-c", command],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        said = f"$ {command}\n(exit {proc.returncode})\n{proc.stdout}\n{proc.stderr}"
        assert proc.returncode == exit, said
        assert "Traceback (most recent call last)" not in proc.stdout + proc.stderr, said
        return proc

    def run(self, command: Command, step: Step) -> subprocess.CompletedProcess[str]:
        for name in re.findall(r"> *([\w./-]+)", command.text):
            (self.cwd / name).touch()  # the shell creates it before the command runs
        if step.prepare is not None:
            step.prepare(self)
        text = self.fill(command.text)
        if re.fullmatch(r"cd \S+", text):
            self.sh(text)
            self.cwd = self.cwd / shlex.split(text)[1]
            self.ran.append(text)
            return subprocess.CompletedProcess(text, 0, "", "")
        if self.aws is not None:
            self.aws.guard(self, text)
        proc = self.sh(text, exit=step.exit)
        output = proc.stdout + proc.stderr
        for expected in step.shows:
            assert self.fill(expected) in output, f"{command}\nshould show {expected!r}:\n{output}"
        if step.then is not None:
            step.then(self)
        self.ran.append(text)
        return proc
