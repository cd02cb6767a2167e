"""An AWS instance's state: Auto Scaling lifecycle, EC2 state, ELB target health, kiln's probe.

ELB judges only targets registered with it (a blue-green standby is not) and
moto calls every registered target healthy, so kiln also probes each instance
it can reach itself, with ALB semantics (interval, consecutive thresholds,
grace). An instance this machine cannot route to is left to ELB and Auto
Scaling; one that refuses or answers badly fails its check.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kiln.aws import groups as g
from kiln.aws import targets as t
from kiln.config import HealthSettings
from kiln.deploy.clock import Clock
from kiln.providers.protocol import InstanceState

UNREACHABLE_BACKOFF = 30.0  # an instance this runner cannot route to is retried this often
GONE = ("Terminating", "Terminating:Wait", "Terminating:Proceed", "Terminated", "Detaching")


@dataclass
class Probe:
    """ALB-like consecutive-check counters for one instance."""

    passes: int = 0
    fails: int = 0
    healthy: bool = False
    last: float = float("-inf")
    reached: bool = False  # ever answered (or refused): from then on, silence is a failure

    def record(self, ok: bool | None, health: HealthSettings, now: float) -> None:
        if ok is None and not self.reached:
            self.last = now + UNREACHABLE_BACKOFF  # not from here: ask ELB, retry later
            return
        self.last, self.reached = now, True
        self.passes, self.fails = (self.passes + 1, 0) if ok else (0, self.fails + 1)
        if self.passes >= health.healthy_threshold:
            self.healthy = True
        elif self.fails >= health.unhealthy_threshold:
            self.healthy = False


@dataclass
class Prober:
    """kiln's own checks of a fleet's instances, at most one per health interval each."""

    health: HealthSettings
    port: int
    clock: Clock
    resolve: t.Resolver = t.private_address
    probes: dict[str, Probe] = field(default_factory=dict)

    def observe(
        self, members: Mapping[str, tuple[g.ServerGroup, g.Member]], raw: Mapping[str, Any]
    ) -> dict[str, Probe]:
        """Probe what is due; the counters of every instance this machine has reached."""
        now = self.clock.now()
        due: dict[str, str] = {}
        for iid, (grp, _member) in members.items():
            ip = raw.get(iid, {}).get("PrivateIpAddress")
            address = self.resolve(t.Target(iid, grp.image, ip, self.port))
            if address is None:
                continue
            probe = self.probes.setdefault(iid, Probe())
            if now - probe.last >= self.health.interval:
                due[iid] = address
        for iid, ok in t.probe_all(due, self.health.path, self.health.timeout).items():
            self.probes[iid].record(ok, self.health, now)
        return {i: p for i, p in self.probes.items() if i in members and p.reached}

    def state(
        self, member: g.Member, raw: Any, target: str | None, probe: Probe | None, since: float
    ) -> InstanceState:
        """One state from every source, the most pessimistic one that applies."""
        ec2_state = raw["State"]["Name"] if raw else "pending"
        if member.lifecycle in GONE or ec2_state in ("shutting-down", "terminated"):
            return InstanceState.TERMINATED
        if ec2_state in ("stopping", "stopped") or member.health == "Unhealthy":
            return InstanceState.FAILED
        if member.lifecycle.startswith("Pending") or ec2_state == "pending":
            return InstanceState.PENDING
        if target == "unhealthy":
            return InstanceState.UNHEALTHY
        if probe is not None:
            if probe.healthy and target != "initial":
                return InstanceState.HEALTHY
            past_grace = self.clock.now() - since > self.health.grace
            if probe.fails >= self.health.unhealthy_threshold and past_grace:
                return InstanceState.UNHEALTHY
            return InstanceState.RUNNING
        if target == "healthy" or (target is None and member.lifecycle == "InService"):
            return InstanceState.HEALTHY  # unreachable from here: trust ELB / Auto Scaling
        return InstanceState.RUNNING
