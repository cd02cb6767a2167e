"""Load-balancer counters and latency histograms, rendered as Prometheus text."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable

# Upper bounds (seconds) of the latency buckets; fine at the low end, where a
# proxy's own cost shows.
BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class Histogram:
    """A cumulative-on-render latency histogram, cheap to observe."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0

    @property
    def count(self) -> int:
        return sum(self.counts)

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds

    def quantile(self, q: float) -> float | None:
        """Estimate a quantile by linear interpolation inside its bucket."""
        total = self.count
        if total == 0:
            return None
        rank = q * total
        seen = 0
        for index, n in enumerate(self.counts):
            if n and seen + n >= rank:
                low = BUCKETS[index - 1] if index > 0 else 0.0
                high = BUCKETS[index] if index < len(BUCKETS) else BUCKETS[-1] * 2
                return low + (high - low) * ((rank - seen) / n)
            seen += n
        return BUCKETS[-1]


class Counters:
    """What the load balancer saw of one instance (or of a whole fleet)."""

    __slots__ = ("errors", "failures", "latency", "requests")

    def __init__(self) -> None:
        self.requests = 0  # answered requests, the balancer's own 502, 503 and 504 included
        self.errors = 0  # answered with 5xx
        self.failures = 0  # attempts that failed and were retried, or were cut off mid-answer
        self.latency = Histogram()

    def record(self, status: int, seconds: float) -> None:
        self.requests += 1
        if status >= 500:
            self.errors += 1
        latency = self.latency  # observe(), inlined: this runs twice per request
        latency.counts[bisect_left(BUCKETS, seconds)] += 1
        latency.sum += seconds

    def record_with(self, fleet: Counters, status: int, seconds: float) -> None:
        """``record`` here and in ``fleet``'s totals, in one call (once per request)."""
        bucket = 0  # bisect_left(BUCKETS, seconds): most requests end within the first
        bounds = BUCKETS  # few bounds, and compiled, walking them costs less than a call
        for bound in bounds:
            if bound >= seconds:
                break
            bucket += 1
        self.requests += 1
        fleet.requests += 1
        if status >= 500:
            self.errors += 1
            fleet.errors += 1
        latency = self.latency
        latency.counts[bucket] += 1
        latency.sum += seconds
        latency = fleet.latency
        latency.counts[bucket] += 1
        latency.sum += seconds

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "requests": self.requests,
            "errors_5xx": self.errors,
            "failures": self.failures,
            "p50_seconds": self.latency.quantile(0.5),
            "p99_seconds": self.latency.quantile(0.99),
        }


def _labels(labels: dict[str, str]) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + inner + "}" if inner else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_counters(prefix: str, series: Iterable[tuple[dict[str, str], Counters]]) -> list[str]:
    """Prometheus text lines (TYPE headers included) for a family of counters."""
    rows = list(series)
    out = [
        f"# HELP {prefix}_requests_total Requests answered through the load balancer.",
        f"# TYPE {prefix}_requests_total counter",
    ]
    out += [f"{prefix}_requests_total{_labels(lb)} {c.requests}" for lb, c in rows]
    out += [
        f"# HELP {prefix}_responses_5xx_total Requests answered with a 5xx status.",
        f"# TYPE {prefix}_responses_5xx_total counter",
    ]
    out += [f"{prefix}_responses_5xx_total{_labels(lb)} {c.errors}" for lb, c in rows]
    out += [
        f"# HELP {prefix}_upstream_failures_total Attempts that failed and were retried,"
        " or cut off mid-answer (a failure the client got a 502 or 504 for is that 5xx).",
        f"# TYPE {prefix}_upstream_failures_total counter",
    ]
    out += [f"{prefix}_upstream_failures_total{_labels(lb)} {c.failures}" for lb, c in rows]
    name = f"{prefix}_request_duration_seconds"
    out += [f"# HELP {name} Time to answer a request.", f"# TYPE {name} histogram"]
    for labels, c in rows:
        cumulative = 0
        for bound, n in zip((*BUCKETS, float("inf")), c.latency.counts, strict=True):
            cumulative += n
            le = "+Inf" if bound == float("inf") else repr(bound)
            out.append(f"{name}_bucket{_labels({**labels, 'le': le})} {cumulative}")
        out.append(f"{name}_sum{_labels(labels)} {c.latency.sum:.6f}")
        out.append(f"{name}_count{_labels(labels)} {cumulative}")
    return out
