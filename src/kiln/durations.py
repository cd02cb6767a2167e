"""Human durations ("500ms", "2s", "5m", "7d") as seconds."""

from __future__ import annotations

import math
import re

MAX_SECONDS = 366 * 86400.0  # the longest duration kiln accepts anywhere: a year
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(value: object) -> float:
    """Parse a duration; numbers are seconds, strings may chain parts ("1m30s").

    Bounded: nothing kiln waits for takes more than a year, and a huge value
    (``"99999999999d"``) would overflow timers and timestamps downstream.
    """
    seconds = _parse(value)
    if not math.isfinite(seconds):
        raise ValueError(f"{value!r} is not a duration: use e.g. '500ms', '2s', '5m' or seconds")
    if seconds > MAX_SECONDS:
        raise ValueError(f"{value!r} is longer than 366d, the longest duration kiln accepts")
    return seconds


def _parse(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a duration like '500ms', '2s', '5m', '7d' or seconds")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if not isinstance(value, str):
        raise ValueError("expected a duration like '500ms', '2s', '5m', '7d' or seconds")
    text = value.strip().lower().replace(" ", "")
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if seconds < 0:
            raise ValueError("a duration cannot be negative")
        return seconds
    pos, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(
            f"{value!r} is not a duration: use e.g. '500ms', '2s', '5m', '1h', '7d' or seconds"
        )
    return total


def format_duration(seconds: float) -> str:
    """Short human form, the inverse of ``parse_duration`` for display."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds < 60:
        return f"{seconds:.1f}s".replace(".0s", "s")
    parts = []
    remaining = round(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if remaining >= size:
            parts.append(f"{remaining // size}{unit}")
            remaining %= size
    return "".join(parts[:2])


def format_size(n: int) -> str:
    """Bytes the way people read them: ``936 B``, ``95.4 MiB``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def format_time(ts: float) -> str:
    """A UTC timestamp, or ``-`` for none."""
    if not ts:
        return "-"
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
