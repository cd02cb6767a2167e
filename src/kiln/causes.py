"""The line of a long output that says what went wrong, kept when its end is shown.

A tail alone loses it: behind `npm start`, npm's dozen error lines pushed Node's
"Cannot find module" out of a 20-line tail; gunicorn's "Worker failed to boot"
traceback did the same to the worker's ModuleNotFoundError; `npm ci` says why
it refuses a lockfile, then prints 60 lines of its usage.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# Node's "Error: Cannot find module 'x'", Python's "ModuleNotFoundError: No module
# named 'x'", a shell's "sh: 1: x: not found", npm's first "npm error" line
CAUSE = re.compile(
    r"^\s*(?:[\w.]*(?:Error|Exception)\b[^\n]*?:\s*\S|\S+: (?:\d+: )?[^\n]*not found$"
    r"|npm (?:error|ERR!) \S)"
)
_NPM = re.compile(r"^\s*npm (?:error|ERR!)(?:\s|$)")
_NPM_USAGE = re.compile(r"^\s*npm (?:error|ERR!) Usage:")
CAUSE_LINES = 12  # at most this many lines of one cause


# what a serial console puts before a line (the kernel's clock, journald's "name[pid]: ")
_CONSOLE = re.compile(r"\[\s*\d+\.\d+\]\s+(?:[^\s\[\]:]+\[\d+\]:\s)?|[^\s\[\]:]+\[\d+\]:\s")


def _said(line: str) -> str:
    """``line`` without a console's prefix."""
    prefix = _CONSOLE.match(line)
    return line[prefix.end() :] if prefix else line


def cause_block(lines: Sequence[str]) -> list[str]:
    """The first line that says what went wrong, and, when it is npm's, the rest of
    npm's error with it: `npm ci` refusing a lockfile names the package it misses
    three lines below its "code EUSAGE", then prints the command's usage, which says
    nothing about this failure and is left out. Empty if no line says."""
    start = next((i for i, line in enumerate(lines) if CAUSE.match(_said(line))), None)
    if start is None:
        return []
    block = [lines[start]]
    if _NPM.match(_said(lines[start])):
        for line in lines[start + 1 : start + CAUSE_LINES]:
            said = _said(line)
            if not _NPM.match(said):
                break
            if _NPM_USAGE.match(said):  # the paragraph above it describes the command
                while len(block) > 1 and _bare(block[-1]):
                    block.pop()
                bare = [i for i, kept in enumerate(block) if i and _bare(kept)]
                block = block[: bare[-1]] if bare else block
                break
            block.append(line)
        while len(block) > 1 and _bare(block[-1]):
            block.pop()
    return block


def _bare(line: str) -> bool:
    """An npm error line that says nothing: the blank between its paragraphs."""
    return _NPM.match(_said(line)) is not None and _said(line).split() in (
        ["npm", "error"],
        ["npm", "ERR!"],
    )


def with_cause(cause: Sequence[str], tail: list[str]) -> list[str]:
    """``tail``, led by ``cause`` (a block of lines) when the tail does not hold it."""
    if not cause or cause[0] in tail:
        return tail
    return [*(line.strip() for line in cause), "…", *tail]


def condensed(text: str, keep: int) -> str:
    """The last ``keep`` lines, after the first lines further up that say what went
    wrong."""
    lines = text.splitlines()
    earlier = lines[:-keep] if len(lines) > keep else []
    return "\n".join(with_cause(cause_block(earlier), lines[-keep:]))
