"""What a bake answers and the hooks it reports progress through.

Its own small module, so the CLI and the no-change fast path (kiln.image.quick)
use them without importing the bake and its config models."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class BakeResult:
    image: str
    digest: str
    app: str
    files: int
    bytes: int
    reused: bool
    seconds: float
    commit: str | None = None
    dirty: bool | None = None
    code: str | None = None  # short code digest: the image minus its env layer

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class BakeProgress:
    """Hooks the CLI overrides to show progress; the library stays silent."""

    shows_output = False  # ``output`` shows each line: a failure need not repeat them

    def step(self, index: int, total: int, command: str) -> None: ...

    def cached(self, index: int, total: int, command: str) -> None:
        """A step whose inputs are unchanged: its outputs were restored, it did not run."""

    def output(self, line: str) -> None: ...

    def files(self, done: int, total: int) -> None: ...


# a multi-line python3 -c program in a build step, a user's own: printed whole at
# every bake otherwise
_PROGRAM = re.compile(r"python3 -c '([^'\n]*)\n[^']*'")


def shown_command(command: str) -> str:
    """A build command as progress and errors show it: such a program by its first line."""
    return _PROGRAM.sub(lambda m: f"python3 -c '{m.group(1)} …'", command)
