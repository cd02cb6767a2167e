"""Health checks with load-balancer semantics (interval, timeout, thresholds, grace).

A check is an HTTP GET of ``[health] path`` (2xx/3xx passes) or, without a
path, a TCP connect, then one GET / when it first passes (a 5xx fails it).
``Tracker`` turns a stream of results into the healthy/unhealthy verdicts the
supervisor acts on.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from kiln.config import HealthSettings


async def probe(
    host: str, port: int, path: str | None, timeout: float, header: str | None = None
) -> str | None:
    """Run one check; None when it passed, else why it failed. ``header``: the Host
    to send ([health] host), else the instance's address."""
    status = await _get(host, port, path, timeout, header)
    if isinstance(status, str):
        return status
    return None if status is None or 200 <= status < 400 else f"GET {path} answered {status}"


# A first request is often the slowest (imports, caches, a 500's debug page): likely
# why, under load, the check's own 2 s timeout let a broken Django app pass.
FIRST_LOOK_TIMEOUT = 15.0


async def first_look(
    host: str, port: int, timeout: float, header: str | None = None
) -> tuple[str | None, str]:
    """One GET / when a TCP check has just passed: why the instance is broken when it
    answers 5xx, else None (any other answer, or none in time, tells nothing); and
    what was seen, for the agent's log.

    A port that accepts says nothing of the pages: a Wagtail site with a database
    nobody had migrated passed every TCP check, deployed green, and answered 500 on
    every page that reads it. The look is once per instance, at its start.
    """
    status = await _get(host, port, "/", timeout, header)
    seen = f"GET / answered {status}" if isinstance(status, int) else str(status)
    if isinstance(status, int) and status >= 500:
        return f"{seen} once its port accepted connections", seen
    return None, seen


async def _get(
    host: str, port: int, path: str | None, timeout: float, header: str | None
) -> int | str | None:
    """The status of GET ``path`` (None: no path, the connect was the check), or why
    there is none."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            if path is None:
                return None
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {header or f'{host}:{port}'}\r\n"
                "User-Agent: kiln-health\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            line = await reader.readline()
    except TimeoutError:
        return f"no answer within {timeout:g}s"
    except OSError as exc:
        return f"cannot connect: {exc.strerror or exc}"
    finally:
        if writer is not None:
            writer.close()
    parts = line.split()
    if len(parts) < 2 or not parts[1].isdigit():
        return f"not an HTTP answer: {line[:60]!r}"
    return int(parts[1])


@dataclass
class Tracker:
    """Consecutive passes and failures of one instance, ALB style."""

    settings: HealthSettings
    started: float  # monotonic-independent wall clock of the instance's start
    healthy: bool = False
    passes: int = 0
    failures: int = 0
    last_error: str | None = None

    def observe(self, error: str | None, now: float) -> str | None:
        """Feed one result; returns 'healthy' or 'unhealthy' when the verdict changes."""
        if error is None:
            self.passes += 1
            self.failures = 0
            if not self.healthy and self.passes >= self.settings.healthy_threshold:
                self.healthy = True
                return "healthy"
            return None
        self.last_error = error
        self.passes = 0
        if now - self.started < self.settings.grace and not self.healthy:
            return None  # still booting: failures do not count yet
        self.failures += 1
        if self.failures >= self.settings.unhealthy_threshold:
            self.healthy = False
            return "unhealthy"
        return None
