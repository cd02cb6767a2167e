"""Find the shell commands and relative links that README.md and docs/*.md show.

A command is a line a reader would type: ``$ ``-prompted lines of a
``console`` block (every line of one that has no prompt at all), every line
of a ``sh``/``bash`` block, and lines of an untagged block that start with
``kiln ``, ``$ `` or ``NAME=value``. Lines ending in ``\\`` continue on the next line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GENERATED = ("cli.md", "config.md")  # checked against the code by their own tests
FENCE = re.compile(r"^( *)```([\w-]*)[^\n]*\n(.*?)^\1```", re.S | re.M)
UNTAGGED = re.compile(r"kiln |[A-Z][A-Z0-9_]*=\S")  # a command in an untagged block
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


@dataclass(frozen=True)
class Command:
    doc: str  # path relative to the repository
    line: int
    text: str  # the command, comment and prompt removed, continuations joined

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.text}"


def doc_files() -> list[Path]:
    docs = sorted(p for p in (REPO / "docs").glob("*.md") if p.name not in GENERATED)
    return [REPO / "README.md", *docs]


def _strip_comment(line: str) -> str:
    """Drop a trailing ``# comment`` (two spaces before it, as the docs write them)."""
    return re.split(r"\s{2,}#\s", line, maxsplit=1)[0].rstrip()


def _commands_in_block(lang: str, body: str) -> list[tuple[int, str]]:
    lines = body.splitlines()
    prompted = any(line.lstrip().startswith("$ ") for line in lines)
    found: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for n, raw in enumerate(lines):
        line = raw.strip()
        if pending is not None:
            start, text = pending
            text = f"{text} {line.rstrip(chr(92)).strip()}"
            pending = (start, text) if line.endswith("\\") else None
            if pending is None:
                found.append((start, text))
            continue
        if line.startswith("$ "):
            line = line[2:]
        elif prompted:
            continue
        elif lang in ("sh", "bash", "shell") or (lang == "console" and not prompted):
            if not line or line.startswith("#"):
                continue
        elif not (lang in ("", "text") and UNTAGGED.match(raw)):
            continue
        if line.endswith("\\"):
            pending = (n, line.rstrip("\\").strip())
        else:
            found.append((n, _strip_comment(line)))
    return found


def extract(path: Path) -> list[Command]:
    text = path.read_text(encoding="utf-8")
    doc = str(path.relative_to(REPO))
    commands = []
    for match in FENCE.finditer(text):
        lang = match.group(2)
        if lang not in ("", "text", "console", "sh", "bash", "shell"):
            continue
        first = text.count("\n", 0, match.start(3)) + 1
        for offset, command in _commands_in_block(lang, match.group(3)):
            commands.append(Command(doc, first + offset, command))
    return commands


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return {slug(m) for m in re.findall(r"^#{1,6} +(.+?) *#*$", text, flags=re.M)}


def relative_links(path: Path) -> list[str]:
    """Every link target that is not a URL, outside code blocks."""
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    text = re.sub(r"`[^`\n]*`", "", text)
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def inline_commands(path: Path) -> list[str]:
    """``kiln ...`` spans in the prose (outside code blocks)."""
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return re.findall(r"`(kiln [^`\n]+)`", text)
