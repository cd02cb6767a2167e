"""When each log line was written: a sparse time index beside each instance log.

Instances write their output straight to ``<id>.log`` (O_APPEND, so they
outlive the agent and need nothing from it). To interleave a fleet's logs
by time and filter them with ``--since``, the agent notes every second how
far each live log has grown: ``<id>.log.times`` holds ``offset time`` lines,
so a line's time is that of the first note at or past its end (accurate to
the note interval). Capping a log moves its newer half to ``.1``; its notes
move with it. File work: the agent calls these from a thread.
"""

from __future__ import annotations

import bisect
import contextlib
import time
from pathlib import Path

from kiln.local import procs

Line = tuple[float, str]  # (when it was written, the line without its newline)


def times_path(log: Path) -> Path:
    return log.with_name(log.name + ".times")


def note(log: Path, last: dict[str, int], cap: int) -> None:
    """Record the log's size now (if it grew), capping it first when it is too big."""
    try:
        size = log.stat().st_size
    except OSError:
        return
    if size > cap // 2:
        _cap(log, size, cap)
        size = 0
    if size > last.get(str(log), 0):
        with times_path(log).open("a") as f:
            f.write(f"{size} {time.time():.3f}\n")
    last[str(log)] = size


def _cap(log: Path, size: int, cap: int) -> None:
    """procs.cap_log, and the notes of the half that moved to ``.1`` moved too."""
    cut = size - cap // 2
    procs.cap_log(log, cap)
    moved = [(off - cut, at) for off, at in _notes(log) if off > cut]
    times_path(log.with_name(log.name + ".1")).write_text(
        "".join(f"{off} {at:.3f}\n" for off, at in moved)
    )
    times_path(log).unlink(missing_ok=True)


def _notes(log: Path) -> list[tuple[int, float]]:
    out = []
    with contextlib.suppress(OSError):
        for raw in times_path(log).read_text().splitlines():
            off, _, at = raw.partition(" ")
            with contextlib.suppress(ValueError):
                out.append((int(off), float(at)))
    return out


def timed_lines(log: Path, end: int | None = None) -> list[Line]:
    """Every line of a log (its capped older half first) up to byte ``end`` of it,
    each with when it was written."""
    out: list[Line] = []
    for part, upto in ((log.with_name(log.name + ".1"), None), (log, end)):
        try:
            data = part.read_bytes()[:upto]
            fallback = part.stat().st_mtime
        except OSError:
            continue
        notes = _notes(part)
        offsets = [off for off, _ in notes]
        end = 0
        for raw in data.splitlines(keepends=True):
            end += len(raw)
            k = bisect.bisect_left(offsets, end)
            at = notes[k][1] if k < len(notes) else fallback
            out.append((at, raw.rstrip(b"\r\n").decode("utf-8", "replace")))
    return out


def remove(log: Path) -> None:
    for part in (log, log.with_name(log.name + ".1")):
        part.unlink(missing_ok=True)
        times_path(part).unlink(missing_ok=True)
