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
# named 'x'", a shell's "sh: 1: x: not found", npm's first "npm error" line, a
# logger's "error: Failed to lift app: Error:" (Sails: its message on the next line)
CAUSE = re.compile(
    r"^\s*(?:[\w.]*(?:Error|Exception)\b[^\n]*?:(?:\s*\S|\s*$)"
    r"|\S+: (?:\d+: )?[^\n]*not found$|npm (?:error|ERR!) \S|(?:error|ERROR|FATAL):\s*\S)"
)
_NPM = re.compile(r"^\s*npm (?:error|ERR!)(?:\s|$)")
_NPM_USAGE = re.compile(r"^\s*npm (?:error|ERR!) Usage:")
_NPM_HELP = re.compile(r"^\s*npm (?:error|ERR!) Run \"npm help ")
CAUSE_LINES = 12  # at most this many lines of one cause
# A line is shown up to this many characters: Node quotes the source line of a throw,
# and a minified bundle's is one line of 20 KB (and its caret line 1,000 spaces)
LINE_MAX = 300


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
    if _said(lines[start]).rstrip().endswith(":"):  # its message is on the next line
        block += [line for line in lines[start + 1 : start + 2] if line.strip()]
    elif _NPM.match(_said(lines[start])):
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
    """``tail``, led by ``cause`` (a block of lines) when the tail does not hold it;
    npm's usage text left out, and every line clipped to LINE_MAX."""
    shown = tail if not cause or cause[0] in tail else [*(c.strip() for c in cause), "…", *tail]
    return [clip(line) for line in _without_npm_usage(shown)]


def clip(line: str) -> str:
    if len(line) <= LINE_MAX:
        return line
    return f"{line[:LINE_MAX]}… ({len(line) - LINE_MAX:,} more characters)"


def _without_npm_usage(lines: list[str]) -> list[str]:
    """npm's usage of a command (from "npm error Usage:" to its "Run \"npm help …\"")
    says nothing about why it failed: one line says it was there."""
    start = next((i for i, line in enumerate(lines) if _NPM_USAGE.match(_said(line))), None)
    if start is None:
        return lines
    end = next(
        (i for i in range(start + 1, len(lines)) if _NPM_HELP.match(_said(lines[i]))), len(lines)
    )
    return [*lines[:start], "(npm's usage of the command, left out)", *lines[end:]]


def condensed(text: str, keep: int) -> str:
    """The last ``keep`` lines, after the first lines further up that say what went
    wrong."""
    lines = text.splitlines()
    earlier = lines[:-keep] if len(lines) > keep else []
    return "\n".join(with_cause(cause_block(earlier), lines[-keep:]))
