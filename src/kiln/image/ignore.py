"""Which files of an app directory make up its source."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pathspec

from kiln.errors import BuildError

# kiln.toml stays out: fleet settings (size, strategy) must not change the image.
ALWAYS_EXCLUDED = (".git/", ".kiln/", ".hg/", ".svn/", "/kiln.toml", "/.kilnignore")
IGNORE_FILE = ".kilnignore"


@dataclass(frozen=True, slots=True)
class SourceEntry:
    """One path of the tree, with the stat data the bake cache keys on."""

    path: str  # relative, '/'-separated
    kind: str  # "file" | "link" | "dir"
    mode: int
    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    target: str = ""  # for links


def build_spec() -> pathspec.PathSpec[Any]:
    """What never enters an image, even when a build step makes it (VCS and kiln dirs).

    ``[app] exclude`` and ``.kilnignore`` select the *source*: applied to build
    outputs, ``exclude = ["deps/"]`` (keep a local install out) would strip
    the dependencies the build installs, and an unanchored ``staticfiles/``
    would strip ``deps/django/contrib/staticfiles``.
    """
    return pathspec.GitIgnoreSpec.from_lines(ALWAYS_EXCLUDED)


def load_spec(root: Path, patterns: Sequence[str]) -> pathspec.PathSpec[Any]:
    """The source's exclusions: gitignore semantics, as git applies them."""
    lines = list(ALWAYS_EXCLUDED)
    ignore_file = root / IGNORE_FILE
    if ignore_file.is_file():
        lines += ignore_file.read_text(encoding="utf-8").splitlines()
    lines += list(patterns)
    return pathspec.GitIgnoreSpec.from_lines(lines)


def matcher(spec: pathspec.PathSpec[Any]) -> Callable[[str], bool]:
    """A fast equivalent of ``spec.match_file``.

    Without negated patterns, gitignore semantics reduce to "any pattern
    matches", which one combined regex answers in a single pass: this is
    most of the cost of recognising an unchanged app.
    """
    patterns = [p for p in spec.patterns if getattr(p, "include", None) is not None]
    regexes = [getattr(p, "regex", None) for p in patterns]
    if not patterns or any(not p.include for p in patterns) or None in regexes:
        return lambda path: bool(spec.match_file(path))
    combined = re.compile(
        "|".join(f"(?:{_NAMED_GROUP.sub('(?:', r.pattern)})" for r in regexes if r is not None)
    )
    return lambda path: combined.search(path) is not None


_NAMED_GROUP = re.compile(r"\(\?P<\w+>")


def walk(root: Path, spec: pathspec.PathSpec[Any] | None = None) -> Iterator[SourceEntry]:
    """Every file, symlink and empty directory under root not matched by spec.

    Nothing is dropped silently: a FIFO, socket or device raises BuildError,
    and a directory that cannot be read raises its OSError.

    Directories are pruned as soon as they match, so a huge excluded
    node_modules costs nothing.
    """
    excluded = matcher(spec) if spec is not None else (lambda path: False)
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        base = root / rel_dir if rel_dir else root
        entries = list(os.scandir(base))  # unreadable: the caller says so, never skips it
        kept = 0
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                if excluded(rel + "/"):
                    continue
                stack.append(rel)
                kept += 1
                continue
            if excluded(rel):
                continue
            kept += 1
            if stat.S_ISLNK(st.st_mode):
                yield SourceEntry(
                    rel,
                    "link",
                    0o777,
                    0,
                    st.st_mtime_ns,
                    st.st_ctime_ns,
                    st.st_ino,
                    str(Path(entry.path).readlink()),
                )
            elif stat.S_ISREG(st.st_mode):
                yield SourceEntry(
                    rel,
                    "file",
                    _normal_mode(st.st_mode),
                    st.st_size,
                    st.st_mtime_ns,
                    st.st_ctime_ns,
                    st.st_ino,
                )
            else:
                raise BuildError(
                    f"{rel} is a {_special_kind(st.st_mode)}: an image holds only files, "
                    "symlinks and directories",
                    hint="exclude it in [app] exclude or .kilnignore",
                )
        if kept == 0 and rel_dir:
            yield SourceEntry(rel_dir, "dir", 0o755, 0, 0, 0, 0)


def _special_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device node"
    return "special file"


def _normal_mode(mode: int) -> int:
    """Only the executable bit matters; umask differences must not change digests."""
    return 0o755 if mode & 0o111 else 0o644
