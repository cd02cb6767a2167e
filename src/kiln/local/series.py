"""Traffic history: each fleet's requests and errors, kept by the agent every few seconds.

The load balancer's counters are totals since it started; a deployment's page
(``kiln ui``) wants "how many requests and errors, when", including for the
deployment an hour ago that nobody was watching. The agent samples the totals,
stores one row of deltas per fleet per interval in its database (on the
database's own thread, never the event loop), and forgets rows older than
``KEEP``. A counter that went down (an instance ended, the balancer restarted)
counts from zero, so a restart never shows as a negative or a spike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

INTERVAL = 5.0  # seconds between two samples of the balancer's counters
KEEP = 24 * 3600.0  # rows older than this are deleted


@dataclass(frozen=True)
class Bucket:
    """What one fleet served in one interval that ended at ``at``."""

    at: float
    seconds: float
    requests: int
    errors: int

    def to_json(self) -> list[float]:
        return [round(self.at, 1), round(self.seconds, 2), self.requests, self.errors]


@dataclass
class Sampler:
    """Turns successive counter totals into per-interval deltas, per fleet."""

    seen: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)
    at: dict[str, float] = field(default_factory=dict)

    def sample(
        self, fleet: str, now: float, counts: Mapping[str, Mapping[str, Any]]
    ) -> Bucket | None:
        """The bucket since the last sample of ``fleet`` (None for its first sample)."""
        totals = {i: (int(c["requests"]), _errors(c)) for i, c in counts.items()}
        before, then = self.seen.get(fleet), self.at.get(fleet)
        self.seen[fleet], self.at[fleet] = totals, now
        if before is None or then is None or now <= then:
            return None
        requests = errors = 0
        for instance, (r, e) in totals.items():
            old_r, old_e = before.get(instance, (0, 0))
            requests += r - old_r if r >= old_r else r
            errors += e - old_e if e >= old_e else e
        return Bucket(now, now - then, requests, errors)

    def forget(self, fleet: str) -> None:
        self.seen.pop(fleet, None)
        self.at.pop(fleet, None)


def _errors(counted: Mapping[str, Any]) -> int:
    """What the page calls errors: 5xx answers and attempts that got no answer at all."""
    return int(counted.get("errors_5xx", 0)) + int(counted.get("failures", 0))
