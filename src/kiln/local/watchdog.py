"""Loop-lag watchdog: tells when something blocked the agent's event loop.

Health checks, self-healing, the balancer's configuration and the control
API share one event loop, so a single blocking call (a directory removed, a
file tree hashed, a locked database) stalls them all. The watchdog sleeps a fixed
interval and measures how late it wakes up; lateness is the time the loop
could not run anything. It is exported on ``/metrics`` and a late tick
(over ``WARN_AFTER``) is logged, at most once a second so a stall cannot
flood the log.
"""

from __future__ import annotations

import asyncio
import logging
import time

from kiln.local.metrics import BUCKETS, Histogram

log = logging.getLogger("kiln.agent")
INTERVAL = 0.1  # seconds between two looks at the clock
WARN_AFTER = 0.05  # a tick later than this is a stall worth a log line
WARN_EVERY = 1.0  # at most one warning per this many seconds


class LoopWatchdog:
    def __init__(self, interval: float = INTERVAL, warn_after: float = WARN_AFTER) -> None:
        self.interval = interval
        self.warn_after = warn_after
        self.lag = Histogram()
        self.worst = 0.0
        self.stalls = 0  # ticks later than warn_after
        self._unreported = 0
        self._unreported_worst = 0.0
        self._last_warning = 0.0

    async def run(self) -> None:
        """Forever: sleep, measure how late the wake-up was, record it."""
        while True:
            before = time.monotonic()
            await asyncio.sleep(self.interval)
            self.observe(time.monotonic() - before - self.interval)

    def observe(self, late: float) -> None:
        late = max(0.0, late)
        self.lag.observe(late)
        self.worst = max(self.worst, late)
        if late <= self.warn_after:
            return
        self.stalls += 1
        self._unreported += 1
        self._unreported_worst = max(self._unreported_worst, late)
        now = time.monotonic()
        if now - self._last_warning < WARN_EVERY:
            return
        n = self._unreported
        more = f" ({n} late ticks since the last warning)" if n > 1 else ""
        log.warning(
            "event loop stalled: a tick was %.0f ms late%s; health checks, self-healing "
            "and the control API waited that long",
            self._unreported_worst * 1000,
            more,
        )
        self._last_warning = now
        self._unreported = 0
        self._unreported_worst = 0.0

    def metrics(self) -> list[str]:
        """Prometheus text lines."""
        name = "kiln_agent_loop_lag_seconds"
        lines = [
            f"# HELP {name} How late the agent's event-loop watchdog woke up (time blocked).",
            f"# TYPE {name} histogram",
        ]
        cumulative = 0
        bounds = (*BUCKETS, float("inf"))
        for bound, n in zip(bounds, self.lag.counts, strict=True):
            cumulative += n
            le = "+Inf" if bound == float("inf") else repr(bound)
            lines.append(f'{name}_bucket{{le="{le}"}} {cumulative}')
        lines += [f"{name}_sum {self.lag.sum:.6f}", f"{name}_count {cumulative}"]
        lines += [
            "# HELP kiln_agent_loop_lag_max_seconds The worst event-loop lag since the start.",
            "# TYPE kiln_agent_loop_lag_max_seconds gauge",
            f"kiln_agent_loop_lag_max_seconds {self.worst:.6f}",
            f"# HELP kiln_agent_loop_stalls_total Watchdog ticks later than {self.warn_after:g}s.",
            "# TYPE kiln_agent_loop_stalls_total counter",
            f"kiln_agent_loop_stalls_total {self.stalls}",
        ]
        return lines
