"""The line of a long output that says what went wrong, kept when its end is shown.

A tail alone loses it: behind `npm start`, npm's dozen error lines pushed Node's
"Cannot find module" out of a 20-line tail; gunicorn's "Worker failed to boot"
traceback did the same to the worker's ModuleNotFoundError; `npm ci` says why
it refuses a lockfile, then prints 60 lines of its usage.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# Node's "Error: Cannot find module 'x'", Python's "ModuleNotFoundError: No module
# named 'x'", a shell's "sh: 1: x: not found", npm's first "npm error" line
CAUSE = re.compile(
    r"^\s*(?:[\w.]*(?:Error|Exception)\b[^\n]*?:\s*\S|\S+: (?:\d+: )?[^\n]*not found$"
    r"|npm (?:error|ERR!) \S)"
)


# what a serial console puts before a line (the kernel's clock, journald's "name[pid]: ")
_CONSOLE = re.compile(r"\[\s*\d+\.\d+\]\s+(?:[^\s\[\]:]+\[\d+\]:\s)?|[^\s\[\]:]+\[\d+\]:\s")


def _said(line: str) -> str:
    """``line`` without a console's prefix."""
    prefix = _CONSOLE.match(line)
    return line[prefix.end() :] if prefix else line


def first_cause(lines: Iterable[str]) -> str | None:
    """The first line that says what went wrong, if one does."""
    return next((line for line in lines if CAUSE.match(_said(line))), None)


def with_cause(cause: str | None, tail: list[str]) -> list[str]:
    """``tail``, led by ``cause`` when the tail does not hold it."""
    return [cause.strip(), "…", *tail] if cause is not None and cause not in tail else tail


def condensed(text: str, keep: int) -> str:
    """The last ``keep`` lines, after the first line further up that says what went
    wrong."""
    lines = text.splitlines()
    earlier = lines[:-keep] if len(lines) > keep else []
    return "\n".join(with_cause(first_cause(earlier), lines[-keep:]))
