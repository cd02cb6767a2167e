"""Health gates: each waits on the observed fleet with its own deadline and message.

boot       a new instance is healthy within grace + threshold x interval + slack
stability  new instances stay healthy (they must not exit or turn unhealthy)
progress   the whole deployment finishes within ``[fleet] progress_deadline``
canary     the canaries' 5xx rate and p99 stay close to the old fleet's (with a
           provider that splits traffic by weight: at each share of requests)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kiln.causes import condensed
from kiln.deploy.clock import Clock
from kiln.deploy.settings import Settings
from kiln.errors import KilnError
from kiln.providers.protocol import (
    FleetState,
    Instance,
    InstanceState,
    InstanceStats,
    Provider,
    TrafficSplitter,
)

LOG_LINES = 20
NOT_STARTED = (InstanceState.PENDING, InstanceState.MATERIALIZING)


class Trip(Exception):
    """A gate tripped: the deployment must roll back."""

    def __init__(
        self,
        gate: str,
        message: str,
        *,
        instance: str | None = None,
        log: str | None = None,
        figures: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.gate, self.message = gate, message
        self.instance, self.log = instance, log
        self.figures = dict(figures or {})

    def to_json(self) -> dict[str, Any]:
        return {"gate": self.gate, "message": self.message, "instance": self.instance}


@dataclass
class Gates:
    """Watches one image's instances while the engine waits on the provider."""

    provider: Provider
    clock: Clock
    fleet: str
    settings: Settings
    deadline: float  # progress deadline, absolute
    tick: Callable[[FleetState], None] = lambda _s: None
    warn: Callable[[str], None] = lambda _m: None  # once per image: its instances are alike
    image: str | None = None
    since: float = 0.0  # failures of instances launched before this are history
    seen: set[str] = field(default_factory=set)
    healthy_once: set[str] = field(default_factory=set)
    ours_gone: set[str] = field(default_factory=set)
    warned: set[str] = field(default_factory=set)  # images

    def forget(self, ids: list[str]) -> None:
        """We are terminating these: their disappearance is not a failure."""
        self.ours_gone.update(ids)

    def observe(self) -> FleetState:
        state = self.provider.describe(self.fleet)
        self.tick(state)
        if self.image is not None:
            self._check_instances(state, self.image)
        if self.clock.now() > self.deadline:
            raise Trip(
                "progress",
                f"progress deadline: the deployment did not finish within "
                f"{self.settings.progress_deadline:g}s ([fleet] progress_deadline)",
            )
        return state

    def _check_instances(self, state: FleetState, image: str) -> None:
        present = {i.id for i in state.instances}
        for inst in state.instances:
            if inst.image != image or inst.id in self.ours_gone:
                continue
            if not inst.live and inst.launched_at < self.since:
                continue
            self.seen.add(inst.id)
            if inst.healthy:
                self.healthy_once.add(inst.id)
                warning = inst.details.get("warning")
                if warning and image not in self.warned:
                    self.warned.add(image)
                    self.warn(f"instance {inst.id} of {image} {warning}")
            if inst.state in (InstanceState.FAILED, InstanceState.TERMINATED):
                raise self._trip_failed(inst)
            if inst.state is InstanceState.UNHEALTHY:
                gate = "stability" if inst.id in self.healthy_once else "boot"
                reason = inst.details.get("reason")
                why = f" ({reason})" if reason else ""
                raise self._trip(gate, inst, f"instance {inst.id} of {image} is unhealthy{why}")
        for gone in sorted(self.seen - present - self.ours_gone):
            raise self._trip(
                "stability",
                None,
                f"instance {gone} of {image} exited and was replaced by the provider",
                log_of=gone,
            )

    def _trip_failed(self, inst: Instance) -> Trip:
        age = self.clock.now() - inst.launched_at
        status = f" with status {inst.exit_status}" if inst.exit_status is not None else ""
        reason = inst.details.get("reason")  # the provider's own words, when it has them
        if inst.id in self.healthy_once:
            what = f"crashed{status} {age:.0f}s after start, after passing its health checks"
            what += f": {reason}" if reason else ""
            return self._trip("stability", inst, f"instance {inst.id} of {inst.image} {what}")
        what = f"failed at start: {reason}" if reason else f"exited at start{status}"
        # Panel's `python3 app.py`: it defines, it never serves. Not when the provider
        # stopped it for a reason of its own (a gunicorn stopped after its first GET /
        # answered 500 exits 0 too, and the hint then pointed at Panel).
        # Sails exits 0 when it fails to lift: the log says which it was.
        if inst.exit_status == 0 and (reason is None or reason.startswith("exited")):
            what += (
                "; the run line returned, so nothing serves: it must keep running on "
                "$HOST:$PORT. If the log below shows an error, the app stopped on it (some "
                "exit 0 when they fail to start); if not, the run line only defines the app "
                "and [app] run needs its server's command (e.g. 'python3 -m panel serve "
                "app.py …')"
            )
        return self._trip("boot", inst, f"instance {inst.id} of {inst.image} {what}")

    def _trip(
        self, gate: str, inst: Instance | None, message: str, log_of: str | None = None
    ) -> Trip:
        target = log_of or (inst.id if inst else None)
        log = self._log_tail(target) if target else None
        return Trip(f"{gate}", f"{gate} gate: {message}", instance=target, log=log)

    def _log_tail(self, instance: str) -> str | None:
        try:
            return condensed(self.provider.log_tail(instance, LOG_LINES * 10), LOG_LINES)
        except KilnError:
            return None

    def boot(self, image: str, expect: int) -> FleetState:
        """Wait until ``expect`` instances of ``image`` are live and all of them healthy."""
        self.image = image
        limit = self.settings.boot_deadline
        deadline = self.clock.now() + limit
        while True:
            state = self.observe()
            live = state.live(image)
            waiting = [i for i in live if not i.healthy]
            if len(live) >= expect and not waiting:
                return state
            if any(i.state in NOT_STARTED for i in live):
                # the boot budget starts with the process (as grace does): a big image
                # still being materialized is bounded by the progress deadline only
                deadline = max(deadline, self.clock.now() + limit)
            if self.clock.now() > deadline:
                raise self._boot_timeout(image, expect, live, waiting, limit)
            self.clock.sleep(self.settings.poll)

    def _boot_timeout(
        self, image: str, expect: int, live: list[Instance], waiting: list[Instance], limit: float
    ) -> Trip:
        s = self.settings
        budget = (
            f"{limit:g}s = grace {s.grace:g}s + {s.healthy_threshold} x {s.interval:g}s checks "
            f"+ {s.slack:g}s slack"
        )
        if waiting:
            inst = waiting[0]
            return self._trip(
                "boot",
                inst,
                f"instance {inst.id} of {image} did not become healthy within {budget} "
                f"(state: {inst.state.value})",
            )
        return Trip(
            "boot",
            f"boot gate: only {len(live)} of {expect} instances of {image} came up in {budget}",
        )

    def hold(self, image: str, seconds: float) -> None:
        """Stability: the image's instances stay healthy for ``seconds``."""
        self.image = image
        end = self.clock.now() + seconds
        while self.clock.now() < end:
            self.observe()
            self.clock.sleep(min(self.settings.poll, max(0.0, end - self.clock.now())))
        self.observe()

    def canary(self, image: str, seconds: float) -> dict[str, Any]:
        """Let the canaries take traffic for ``seconds``, then compare them with the fleet."""
        self.image = image
        before = dict(self.provider.stats(self.fleet))
        self.hold(image, seconds)
        state = self.observe()
        after = self.provider.stats(self.fleet)
        canaries = {i.id for i in state.live(image)}
        old = {i.id for i in state.serving() if i.image != image}
        figures = canary_figures(before, after, canaries, old)
        verdict = judge_canary(figures, self.settings)
        if verdict:
            raise Trip("canary", f"canary gate: {verdict}", figures=figures)
        return figures

    def split_canary(self, image: str, seconds: float, traffic: Sequence[int]) -> dict[str, Any]:
        """Give the canaries each share of requests in turn, hold, judge; then serve.

        Each share is judged like the local canary (5xx rate and p99 against the
        fleet's, ``min_requests``) over its own window. Whatever stops the canary
        (a trip, an error, Ctrl-C) first sends every request back to the fleet,
        so the rollback starts from a load balancer serving only the old image.
        """
        splitter = self.provider
        if not isinstance(splitter, TrafficSplitter):
            raise Trip("canary", f"canary gate: {self.provider.name} cannot split traffic")
        self.image = image
        judged: list[dict[str, Any]] = []
        try:
            for percent in traffic:
                splitter.split(self.fleet, image, percent)
                since = self.clock.now()
                self.hold(image, seconds + splitter.metrics_lag())
                canaries, fleet = splitter.split_stats(self.fleet, since)
                figures = {"traffic_percent": percent, **_figures(canaries, fleet)}
                judged.append(figures)
                verdict = judge_canary(figures, self.settings)
                if verdict:
                    raise Trip(
                        "canary",
                        f"canary gate at {percent}% of requests: {verdict}",
                        figures={**figures, "steps": judged},
                    )
            splitter.split(self.fleet, image, 0)
        except BaseException:
            self._end_split(splitter, image)
            raise
        state = self.observe()
        canaries_ids = [i.id for i in state.live(image) if not i.in_service and i.healthy]
        self.provider.set_in_service(self.fleet, canaries_ids, [])
        return {**judged[-1], "steps": judged} if judged else {}

    def _end_split(self, splitter: TrafficSplitter, image: str) -> None:
        """Best effort: a provider that cannot be reached now ends the split next time."""
        with contextlib.suppress(KilnError):
            splitter.split(self.fleet, image, 0)


def _delta(
    before: Mapping[str, InstanceStats], after: Mapping[str, InstanceStats], ids: set[str]
) -> tuple[int, int, float | None]:
    requests = errors = 0
    p99s: list[float] = []
    for iid in ids:
        now = after.get(iid)
        if now is None:
            continue
        then = before.get(iid, InstanceStats())
        requests += max(0, now.requests - then.requests)
        errors += max(0, now.errors - then.errors)
        if now.p99_seconds is not None:
            p99s.append(now.p99_seconds)
    return requests, errors, max(p99s) if p99s else None


def canary_figures(
    before: Mapping[str, InstanceStats],
    after: Mapping[str, InstanceStats],
    canaries: set[str],
    old: set[str],
) -> dict[str, Any]:
    c_req, c_err, c_p99 = _delta(before, after, canaries)
    o_req, o_err, o_p99 = _delta(before, after, old)
    return _figures(InstanceStats(c_req, c_err, c_p99), InstanceStats(o_req, o_err, o_p99))


def _figures(canaries: InstanceStats, fleet: InstanceStats) -> dict[str, Any]:
    """The gate's figures from each side's counters over one window."""
    c_req, c_err, c_p99 = canaries.requests, canaries.errors, canaries.p99_seconds
    o_req, o_err, o_p99 = fleet.requests, fleet.errors, fleet.p99_seconds
    return {
        "canary_requests": c_req,
        "canary_errors": c_err,
        "canary_error_rate": round(c_err / c_req, 4) if c_req else None,
        "canary_p99": c_p99,
        "fleet_requests": o_req,
        "fleet_errors": o_err,
        "fleet_error_rate": round(o_err / o_req, 4) if o_req else 0.0,
        "fleet_p99": o_p99,
    }


def judge_canary(f: Mapping[str, Any], s: Settings) -> str | None:
    """Why the canaries fail, with the figures, or None when they pass."""
    if f["canary_requests"] < s.min_requests:
        return (
            f"canaries served {f['canary_requests']} requests, fewer than "
            f"[canary] min_requests = {s.min_requests}: not enough traffic to judge them"
        )
    rate, base = f["canary_error_rate"] or 0.0, f["fleet_error_rate"] or 0.0
    if rate - base > s.max_error_rate:
        return (
            f"5xx rate {rate:.2%} on the canaries vs {base:.2%} on the fleet "
            f"({f['canary_errors']}/{f['canary_requests']} requests); "
            f"allowed: {s.max_error_rate:.2%} above the fleet ([canary] max_error_rate)"
        )
    c_p99, o_p99 = f["canary_p99"], f["fleet_p99"]
    slower = c_p99 is not None and o_p99 and c_p99 - o_p99 > s.p99_slack
    if slower and c_p99 > s.max_p99_ratio * o_p99:
        return (
            f"p99 latency {c_p99 * 1000:.0f}ms on the canaries vs {o_p99 * 1000:.0f}ms on the "
            f"fleet ({c_p99 / o_p99:.1f}x); allowed: {s.max_p99_ratio:g}x "
            f"([canary] max_p99_ratio), or {s.p99_slack * 1000:.0f}ms more ([canary] p99_slack)"
        )
    return None
