"""The seam between the deploy engine and where instances run.

A fleet is a set of *server groups*, one per image, each with a desired
count: exactly an Auto Scaling group per release on AWS, and the agent's
self-healing target locally. The engine changes those counts and the load
balancer membership; the provider keeps reality matching them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, TypeVar, runtime_checkable

__all__ = [
    "LIVE_STATES",
    "CommandResult",
    "FleetState",
    "Instance",
    "InstanceState",
    "InstanceStats",
    "Provider",
    "Releaser",
    "TrafficSplitter",
    "past_max_age",
]


class InstanceState(StrEnum):
    PENDING = "pending"  # launched, process/VM not up yet
    MATERIALIZING = "materializing"  # its files are being written (local); no process yet
    RUNNING = "running"  # up, not yet proven healthy
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    DRAINING = "draining"  # out of rotation, finishing in-flight requests
    TERMINATED = "terminated"
    FAILED = "failed"  # exited or never became healthy; will not serve


LIVE_STATES = frozenset(
    {
        InstanceState.PENDING,
        InstanceState.MATERIALIZING,
        InstanceState.RUNNING,
        InstanceState.HEALTHY,
        InstanceState.UNHEALTHY,
    }
)


@dataclass(frozen=True)
class Instance:
    id: str
    fleet: str
    image: str
    state: InstanceState
    launched_at: float
    address: str | None = None
    in_service: bool = False  # registered with the load balancer
    exit_status: int | None = None
    # asked to end and not yet ended: already out of its group's count (a failed one
    # stays failed meanwhile, and terminating it again would change nothing)
    terminating: bool = False
    replaced_by: str | None = None  # the instance self-healing started in its place
    details: Mapping[str, Any] = field(default_factory=dict)  # provider-specific (pid, az...)
    # How it was launched: setting -> value, with "secrets" a keyed fingerprint of
    # the secret values (never a value). Empty when the provider does not track it.
    launch: Mapping[str, str] = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        return self.state is InstanceState.HEALTHY

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES


@dataclass(frozen=True)
class FleetState:
    """What a provider observes of one fleet right now."""

    name: str
    endpoint: str | None
    groups: Mapping[str, int]  # image id -> desired instance count
    instances: tuple[Instance, ...]

    def live(self, image: str | None = None) -> list[Instance]:
        return [i for i in self.instances if i.live and (image is None or i.image == image)]

    def serving(self) -> list[Instance]:
        return [i for i in self.instances if i.healthy and i.in_service]

    def older_than(self, max_age: float, now: float) -> list[Instance]:
        """The live instances ``kiln recycle`` replaces, oldest first."""
        return past_max_age(self.live(), max_age, now)


class _Aging(Protocol):
    @property
    def in_service(self) -> bool: ...
    @property
    def launched_at(self) -> float: ...


_A = TypeVar("_A", bound=_Aging)


def past_max_age(instances: Iterable[_A], max_age: float, now: float) -> list[_A]:
    """The age rule, in one place for every recycler: in service and older, oldest first."""
    return sorted(
        (i for i in instances if i.in_service and now - i.launched_at > max_age),
        key=lambda i: i.launched_at,
    )


@dataclass(frozen=True)
class InstanceStats:
    """Load-balancer counters for one instance (or one side of a split), read by the
    canary gate."""

    requests: int = 0
    errors: int = 0  # 5xx answers and failed upstream attempts
    p99_seconds: float | None = None


@runtime_checkable
class Provider(Protocol):
    """Everything the engine needs from a provider; keep it this small."""

    name: str

    def describe(self, fleet: str) -> FleetState:
        """Observe the fleet; an unknown fleet is an empty one."""
        ...

    def launch(self, fleet: str, image: str, count: int, *, in_service: bool = True) -> list[str]:
        """Raise the image's group by ``count``; return the new instance ids.

        ``in_service=False`` keeps them out of the load balancer (blue-green).
        """
        ...

    def set_in_service(self, fleet: str, add: Sequence[str], remove: Sequence[str]) -> None:
        """Change load-balancer membership in one step; removed ones drain."""
        ...

    def terminate(self, fleet: str, ids: Sequence[str]) -> None:
        """Drain, stop and forget these instances, lowering their group's count."""
        ...

    def image_exists(self, image: str) -> bool: ...

    def log_tail(self, instance: str, lines: int = 20) -> str: ...

    def stats(self, fleet: str) -> Mapping[str, InstanceStats]:
        """Per-instance counters since launch."""
        ...

    def launch_print(self) -> Mapping[str, str]:
        """What an instance launched now carries in ``Instance.launch`` ({}: not tracked).

        Resolves what a launch needs (secrets): a missing one fails here, before
        anything changes. Instances whose ``launch`` differs are replaced.
        """
        ...

    def apply_settings(self, fleet: str) -> list[str]:
        """Apply the fleet-wide settings that need no new instance (where the fleet
        listens...); what changed, in words. A setting that cannot be applied
        raises, naming it, with nothing changed."""
        ...


@dataclass(frozen=True)
class CommandResult:
    """A command kiln ran once in a fresh directory of an image (a release)."""

    command: str
    exit_code: int  # negative: killed by that signal
    output: str  # its last lines, stdout and stderr interleaved
    seconds: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@runtime_checkable
class Releaser(Protocol):
    """A provider that runs an image's release command before a deployment acts."""

    def release(self, fleet: str, image: str) -> CommandResult | None:
        """Run the image's ``[app] release`` once; None when the image has none."""
        ...


@runtime_checkable
class TrafficSplitter(Protocol):
    """A provider whose load balancer gives canaries a chosen share of requests by weight.

    Its canaries launch out of the fleet's rotation, behind a target of their
    own (an ALB target group); the canary step then sends them each share of
    ``traffic_steps`` in turn, holds, and judges both sides' counters over that
    window. ``split(fleet, image, 0)`` sends every request to the fleet again.
    Providers without one give canaries their share by instance count.
    """

    def traffic_steps(self) -> tuple[int, ...]:
        """The canaries' share of requests at each step, in percent."""
        ...

    def metrics_lag(self) -> float:
        """How long after a window its counters can be read (CloudWatch: a minute or two)."""
        ...

    def split(self, fleet: str, image: str, percent: int) -> None:
        """Send ``percent`` of requests to ``image``'s canaries, the rest to the fleet."""
        ...

    def split_stats(self, fleet: str, since: float) -> tuple[InstanceStats, InstanceStats]:
        """(canaries, fleet): each side's requests, 5xx and p99 since ``since``."""
        ...
