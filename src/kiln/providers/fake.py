"""A provider that runs on simulated time, records every call, and fails on cue.

It mirrors the local agent's semantics: a group per image with a desired
count, failed instances stay listed (``FAILED``) and may be replaced, and
terminating a failed instance terminates its live replacement. Scripted
behaviours per image cover the bad images a deployment must survive:
exits at start, never becomes healthy, crashes N seconds after start, serves
errors or slowly. ``kill_at`` raises :class:`SimulatedKill` (a BaseException,
like ``kill -9`` nothing catches it) at the n-th mutating call.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from kiln.deploy.clock import Clock
from kiln.errors import InstanceNotFound, ProviderError
from kiln.providers.protocol import (
    CommandResult,
    FleetState,
    Instance,
    InstanceState,
    InstanceStats,
)

INFINITY = float("inf")


class SimulatedKill(BaseException):
    """The deployer was killed (kill -9): nothing below it gets to clean up."""


@dataclass(frozen=True)
class Behavior:
    """How instances of one image behave, in simulated seconds."""

    boot: float = 1.0  # time from launch to healthy
    never_healthy: bool = False  # runs, never passes its checks
    exit_at_start: bool = False  # exits with start_status shortly after launch
    start_status: int = 1  # 0: a run line that returns (a module that serves nothing)
    crash_after: float | None = None  # healthy, then exits this long after launch
    error_rate: float = 0.0  # share of requests answered 5xx
    p99: float = 0.05
    log: str = "listening on $HOST:$PORT"
    release: str | None = None  # the image's release command, if it has one
    release_exit: int = 0  # what that command exits with
    release_seconds: float = 2.0


BAD_START_LOG = (
    "Traceback (most recent call last):\n"
    '  File "app.py", line 3, in <module>\n'
    "ModuleNotFoundError: No module named 'flask'"
)


class FakeClock:
    """Simulated time: ``sleep`` advances it instantly."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += max(0.0, seconds)


@dataclass
class _Inst:
    id: str
    fleet: str
    image: str
    launched_at: float
    behavior: Behavior
    service: list[list[float]] = field(default_factory=list)  # [start, end] in service
    terminated_at: float | None = None
    replaced_by: str | None = None
    launch: dict[str, str] = field(default_factory=dict)

    @property
    def healthy_from(self) -> float:
        if self.behavior.never_healthy or self.behavior.exit_at_start:
            return INFINITY
        return self.launched_at + self.behavior.boot

    @property
    def fails_at(self) -> float:
        if self.behavior.exit_at_start:
            return self.launched_at + min(self.behavior.boot, 0.5)
        if self.behavior.crash_after is not None:
            return self.launched_at + self.behavior.crash_after
        return INFINITY

    def state(self, now: float) -> InstanceState:
        if self.terminated_at is not None:
            return InstanceState.TERMINATED
        if now >= self.fails_at:
            return InstanceState.FAILED
        if now >= self.healthy_from:
            return InstanceState.HEALTHY
        return InstanceState.RUNNING

    @property
    def in_service(self) -> bool:
        return bool(self.service) and self.service[-1][1] == INFINITY

    def set_service(self, wanted: bool, now: float) -> None:
        if wanted and not self.in_service:
            self.service.append([now, INFINITY])
        elif not wanted and self.in_service:
            self.service[-1][1] = now

    def served_seconds(self, now: float) -> float:
        end_of_health = min(self.fails_at, self.terminated_at or INFINITY, now)
        total = 0.0
        for start, end in self.service:
            total += max(0.0, min(end, end_of_health) - max(start, self.healthy_from))
        return total


class FakeProvider:
    """In-memory provider for engine tests; see the module docstring."""

    name = "fake"

    def __init__(
        self,
        clock: Clock | None = None,
        *,
        self_heal: bool = False,
        rps: float = 20.0,
        endpoint: str = "http://127.0.0.1:8080",
    ) -> None:
        self.clock: Clock = clock or FakeClock()
        self.self_heal, self.rps, self.endpoint = self_heal, rps, endpoint
        self.behaviors: dict[str, Behavior] = {}
        self.calls: list[tuple[str, ...]] = []
        self.capacity: list[tuple[float, str, int]] = []  # (time, fleet, serving) after changes
        self.groups: dict[str, dict[str, int]] = {}
        self._instances: dict[str, _Inst] = {}
        self._ids = itertools.count(1)
        self._mutations = 0
        self._kill: tuple[int, bool] | None = None
        self._kill_on_describe = False
        self._describes = 0
        self._errors: dict[str, Exception] = {}
        self.launch_settings: dict[str, str] = {}  # what new instances carry (launch_print)
        self.settings_changes: list[str] = []  # what the next apply_settings reports

    # scripting -------------------------------------------------------------

    def add_image(self, image: str, behavior: Behavior | None = None) -> None:
        self.behaviors[image] = behavior or Behavior()

    def kill_at(self, call: int, *, after: bool = False, describes: bool = False) -> None:
        """Raise SimulatedKill at the ``call``-th launch/set_in_service/terminate from now.

        ``describes=True`` counts ``describe`` calls too: a kill while the
        deployer waits on health checks.
        """
        self._mutations = 0
        self._describes = 0
        self._kill = (call, after)
        self._kill_on_describe = describes

    @property
    def mutations(self) -> int:
        return self._mutations

    @property
    def describes(self) -> int:
        return self._describes

    def fail_next(self, call: str, error: Exception) -> None:
        """The next ``call`` ('launch', 'terminate', 'set_in_service', 'launch_print')
        raises ``error``."""
        self._errors[call] = error

    def _mutate(self, name: str, *args: str) -> bool:
        """Count a mutating call; kill before it, or report that we must kill after it."""
        error = self._errors.pop(name, None)
        if error is not None:
            raise error
        self._mutations += 1
        self.calls.append((name, *args))
        if self._kill_on_describe:
            return False
        if self._kill is not None and self._kill[0] == self._mutations:
            if not self._kill[1]:
                self._kill = None
                raise SimulatedKill(f"killed before {name} (call {self._mutations})")
            return True
        return False

    def _after(self, kill: bool, fleet: str, name: str) -> None:
        self.capacity.append((self.clock.now(), fleet, len(self._serving(fleet))))
        if kill:
            self._kill = None
            raise SimulatedKill(f"killed after {name} (call {self._mutations})")

    # Provider ---------------------------------------------------------------

    def describe(self, fleet: str) -> FleetState:
        self.calls.append(("describe", fleet))
        self._describes += 1
        if self._kill_on_describe and self._kill and self._kill[0] == self._describes:
            self._kill = None
            raise SimulatedKill(f"killed while observing (describe call {self._describes})")
        now = self.clock.now()
        if self.self_heal:
            self._heal(fleet, now)
        instances = tuple(
            self._public(i, now) for i in self._instances.values() if i.fleet == fleet
        )
        groups = {k: v for k, v in self.groups.get(fleet, {}).items() if v > 0}
        endpoint = self.endpoint if groups else None
        return FleetState(name=fleet, endpoint=endpoint, groups=groups, instances=instances)

    def release(self, fleet: str, image: str) -> CommandResult | None:
        """The image's scripted release: recorded like a mutating call, takes simulated time."""
        behavior = self.behaviors.get(image)
        if behavior is None:
            raise ProviderError(f"no image {image}")
        if behavior.release is None:
            return None
        kill = self._mutate("release", fleet, image)
        self.clock.sleep(behavior.release_seconds)
        output = "Operations to perform: ..." if behavior.release_exit == 0 else BAD_START_LOG
        self._after(kill, fleet, "release")
        return CommandResult(
            behavior.release, behavior.release_exit, output, behavior.release_seconds
        )

    def launch(self, fleet: str, image: str, count: int, *, in_service: bool = True) -> list[str]:
        if image not in self.behaviors:
            raise ProviderError(f"no image {image}")
        if count < 1:
            raise ProviderError(f"cannot launch {count} instances")
        kill = self._mutate("launch", fleet, image, str(count), str(in_service))
        ids = [self._new(fleet, image, in_service).id for _ in range(count)]
        group = self.groups.setdefault(fleet, {})
        group[image] = group.get(image, 0) + count
        self._after(kill, fleet, "launch")
        return ids

    def set_in_service(self, fleet: str, add: Sequence[str], remove: Sequence[str]) -> None:
        targets = [(self._resolve(fleet, i), True) for i in add]
        targets += [(self._resolve(fleet, i), False) for i in remove]
        kill = self._mutate("set_in_service", fleet, ",".join(add), ",".join(remove))
        now = self.clock.now()
        for inst, wanted in targets:
            inst.set_service(wanted, now)
        self._after(kill, fleet, "set_in_service")

    def terminate(self, fleet: str, ids: Sequence[str]) -> None:
        targets = [self._resolve(fleet, i) for i in ids]
        kill = self._mutate("terminate", fleet, ",".join(ids))
        now = self.clock.now()
        for inst in targets:
            if inst.terminated_at is not None:
                continue
            inst.set_service(False, now)
            inst.terminated_at = now
            self.groups[fleet][inst.image] -= 1
        self._after(kill, fleet, "terminate")

    def image_exists(self, image: str) -> bool:
        return image in self.behaviors

    def launch_print(self) -> Mapping[str, str]:
        error = self._errors.pop("launch_print", None)
        if error is not None:  # e.g. a secret that cannot be resolved
            raise error
        return dict(self.launch_settings)

    def apply_settings(self, fleet: str) -> list[str]:
        """What changed in the fleet's settings: scripted by a test (``settings_changes``)."""
        changes, self.settings_changes = self.settings_changes, []
        return changes

    def log_tail(self, instance: str, lines: int = 20) -> str:
        inst = self._instances.get(instance)
        if inst is None:
            raise InstanceNotFound(f"no instance {instance}")
        text = BAD_START_LOG if inst.behavior.exit_at_start else inst.behavior.log
        return "\n".join(text.splitlines()[-lines:])

    def stats(self, fleet: str) -> Mapping[str, InstanceStats]:
        now = self.clock.now()
        out: dict[str, InstanceStats] = {}
        for inst in self._instances.values():
            if inst.fleet != fleet:
                continue
            requests = int(self.rps * inst.served_seconds(now))
            errors = round(requests * inst.behavior.error_rate)
            p99 = inst.behavior.p99 if requests else None
            out[inst.id] = InstanceStats(requests=requests, errors=errors, p99_seconds=p99)
        return out

    # helpers ------------------------------------------------------------------

    def _new(self, fleet: str, image: str, in_service: bool) -> _Inst:
        now = self.clock.now()
        inst = _Inst(f"i-{next(self._ids):04d}", fleet, image, now, self.behaviors[image])
        inst.launch = dict(self.launch_settings)
        if in_service:
            inst.set_service(True, now)
        self._instances[inst.id] = inst
        return inst

    def _resolve(self, fleet: str, instance: str) -> _Inst:
        inst = self._instances.get(instance)
        if inst is None or inst.fleet != fleet:
            raise InstanceNotFound(f"no instance {instance} in fleet {fleet}")
        while inst.replaced_by is not None:
            inst = self._instances[inst.replaced_by]
        return inst

    def _heal(self, fleet: str, now: float) -> None:
        """Replace failed instances (one second after they fail), like the agent."""
        for inst in list(self._instances.values()):
            failed = inst.state(now) is InstanceState.FAILED
            due = now >= inst.fails_at + 1.0
            if inst.fleet == fleet and failed and due and inst.replaced_by is None:
                inst.replaced_by = self._new(fleet, inst.image, inst.in_service).id

    def _serving(self, fleet: str) -> list[_Inst]:
        now = self.clock.now()
        return [
            i
            for i in self._instances.values()
            if i.fleet == fleet and i.in_service and i.state(now) is InstanceState.HEALTHY
        ]

    def _public(self, inst: _Inst, now: float) -> Instance:
        state = inst.state(now)
        exit_status = None
        if state is InstanceState.FAILED:
            exit_status = inst.behavior.start_status if inst.behavior.exit_at_start else 137
        return Instance(
            id=inst.id,
            fleet=inst.fleet,
            image=inst.image,
            state=state,
            launched_at=inst.launched_at,
            address=f"127.0.0.1:{20000 + int(inst.id[2:])}",
            in_service=inst.in_service and state is not InstanceState.TERMINATED,
            exit_status=exit_status,
            replaced_by=inst.replaced_by,
            launch=inst.launch,
        )
