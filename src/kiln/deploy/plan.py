"""Plans are data: observed fleet + target image + strategy in, steps out.

A plan is computed once, printed by ``--dry-run``, journaled before the first
step runs, and compared as JSON in tests. Every step is idempotent against
the observed fleet (a launch tops the image up to ``expect`` live instances,
a terminate skips instances already gone), so a deployment killed anywhere
resumes by re-running its first unfinished step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from kiln.errors import DeployError
from kiln.providers.protocol import FleetState, Instance, InstanceState

PLAN_FORMAT = 1
STRATEGIES = ("rolling", "blue-green", "canary")


class StepKind(StrEnum):
    """A plan step's action; the step runner dispatches on it (``_launch``, ...)."""

    LAUNCH = "launch"
    TERMINATE = "terminate"
    SWITCH = "switch"
    CANARY = "canary"
    RETIRE = "retire"


STEP_KINDS = tuple(StepKind)


@dataclass(frozen=True)
class Step:
    """One action on the fleet.

    launch:    top ``image`` up to ``expect`` live instances (``count`` new), wait until
               healthy, then until they have stayed healthy for ``seconds``
    terminate: drain and stop ``instances``
    switch:    put every healthy out-of-service ``image`` instance in service and take
               ``instances`` (or, if empty, every other serving instance) out, in one call
    canary:    judge the new instances against the old fleet for ``seconds``; with
               ``traffic`` (a provider that splits by weight), at each share of
               requests in turn, ``seconds`` each, then put them in service
    retire:    keep the drained old fleet warm for ``seconds`` (0: terminate it now)
    """

    kind: StepKind
    image: str | None = None
    count: int = 0
    expect: int = 0
    in_service: bool = True
    instances: tuple[str, ...] = ()
    seconds: float = 0.0
    why: str = ""
    traffic: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": str(self.kind)}
        defaults = Step(kind=self.kind)
        names = ("image", "count", "expect", "in_service", "instances", "seconds", "why", "traffic")
        for name in names:
            value = getattr(self, name)
            if value != getattr(defaults, name):
                data[name] = list(value) if isinstance(value, tuple) else value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Step:
        if data.get("kind") not in STEP_KINDS:
            raise DeployError(f"unknown step kind {data.get('kind')!r} in a journaled plan")
        values = dict(data)
        values["kind"] = StepKind(values["kind"])
        values["instances"] = tuple(values.get("instances", ()))
        values["traffic"] = tuple(values.get("traffic", ()))
        return cls(**values)

    def describe(self) -> str:
        ids = ", ".join(self.instances)
        if self.kind is StepKind.LAUNCH:
            where = "" if self.in_service else " out of service"
            stable = f", stable for {self.seconds:g}s" if self.seconds else ""
            return f"launch {self.count} x {self.image}{where}, wait until healthy{stable}"
        if self.kind is StepKind.TERMINATE:
            return f"terminate {ids}" + (f" ({self.why})" if self.why else "")
        if self.kind is StepKind.SWITCH:
            out = ids or "the old fleet"
            return f"switch the load balancer: {self.image} in, {out} out (one step)"
        if self.kind is StepKind.CANARY and self.traffic:
            shares = ", ".join(f"{p}%" for p in self.traffic)
            return (
                f"canary: judge {self.count} x {self.image} against the fleet at {shares} "
                f"of requests, {self.seconds:g}s each, then put them in service"
            )
        if self.kind is StepKind.CANARY:
            return (
                f"canary: judge {self.count} x {self.image} against the fleet for {self.seconds:g}s"
            )
        if self.kind is StepKind.RETIRE:
            if self.seconds:
                return f"keep the old fleet warm for {self.seconds:g}s (instant rollback)"
            return "terminate the drained old fleet"
        raise AssertionError(self.kind)


@dataclass(frozen=True)
class Plan:
    fleet: str
    strategy: str
    image: str | None  # target; None when a first deployment is rolled back to nothing
    from_image: str | None
    size: int
    steps: tuple[Step, ...]
    format: int = PLAN_FORMAT
    changed: tuple[str, ...] = ()  # launch settings that changed ("secrets", "isolate"...)
    relaunch: tuple[str, ...] = ()  # the instances replaced because of them

    @property
    def empty(self) -> bool:
        return not self.steps

    def to_json(self) -> dict[str, Any]:
        data = {
            "format": self.format,
            "fleet": self.fleet,
            "strategy": self.strategy,
            "image": self.image,
            "from_image": self.from_image,
            "size": self.size,
            "steps": [s.to_json() for s in self.steps],
        }
        if self.relaunch:
            data |= {"changed": list(self.changed), "relaunch": list(self.relaunch)}
        return data

    @property
    def relaunch_note(self) -> str:
        """'secrets changed: replacing 3 instances', or '' when no setting changed."""
        if not self.relaunch:
            return ""
        n = len(self.relaunch)
        return f"{', '.join(self.changed)} changed: replacing {n} instance{'s' * (n != 1)}"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        version = data.get("format")
        if version != PLAN_FORMAT:
            raise DeployError(
                f"the journaled plan has format {version!r}, this kiln understands {PLAN_FORMAT}",
                hint="finish or roll back that deployment with the kiln version that started it",
            )
        return cls(
            fleet=data["fleet"],
            strategy=data["strategy"],
            image=data["image"],
            from_image=data["from_image"],
            size=int(data["size"]),
            steps=tuple(Step.from_json(s) for s in data["steps"]),
            changed=tuple(data.get("changed", ())),
            relaunch=tuple(data.get("relaunch", ())),
        )

    def describe(self) -> list[str]:
        head = (
            f"{self.strategy} deployment of {self.fleet}: "
            f"{span(self.from_image, self.image)}, {self.size} instance(s)"
        )
        if self.empty:
            return [head, "  nothing to do: the fleet already serves this image"]
        note = [f"  {self.relaunch_note}"] if self.relaunch else []
        return [head, *note] + [f"  {n}. {s.describe()}" for n, s in enumerate(self.steps, 1)]


def span(from_image: str | None, to_image: str | None) -> str:
    """``from → to`` of a deployment; a first one comes from nothing (not "None")."""
    return f"{from_image or '(nothing)'} → {to_image or '(nothing)'}"


@dataclass(frozen=True)
class Knobs:
    """The planner's inputs besides the fleet: plain numbers, easy to fixture."""

    max_surge: int = 1
    max_unavailable: int = 0
    keep_warm: float = 300.0
    settle: float = 5.0
    canary_count: int = 1
    canary_seconds: float = 30.0
    canary_traffic: tuple[int, ...] = ()  # shares of requests, when the provider splits


@dataclass
class _Fleet:
    """The fleet split the way the planners think about it."""

    target: str
    ready: list[Instance] = field(default_factory=list)  # target, in service
    standby: list[Instance] = field(default_factory=list)  # target, healthy, out of service
    old: list[Instance] = field(default_factory=list)  # other images, in service
    idle: list[Instance] = field(default_factory=list)  # anything else not serving

    @classmethod
    def split(cls, state: FleetState, target: str) -> _Fleet:
        view = cls(target)
        for inst in sorted(state.live(), key=_retire_order):
            if inst.image == target and inst.in_service:
                view.ready.append(inst)
            elif inst.image == target and inst.healthy:
                view.standby.append(inst)
            elif inst.image != target and inst.in_service:
                view.old.append(inst)
            else:
                view.idle.append(inst)
        view.idle += unreplaced_failures(state, exclude=target)
        return view


def unreplaced_failures(state: FleetState, exclude: str | None = None) -> list[Instance]:
    """Failed instances still counted in their group: terminating them lowers the count.

    A provider replaces failed instances to keep each group at its count; when
    the count is above the live instances, these failures are what holds it up.
    """
    found: list[Instance] = []
    for image, desired in sorted(state.groups.items()):
        if image == exclude:
            continue
        excess = desired - len(state.live(image))
        # one already terminated left its group's count then: terminating it again
        # changes nothing, and planned each time it made every deploy a step that
        # never ended (a warm standby instance that died)
        failed = [
            i
            for i in state.instances
            if i.image == image and i.state is InstanceState.FAILED and not i.terminating
        ]
        failed.sort(key=lambda i: (i.launched_at, i.id), reverse=True)
        found += failed[: max(0, excess)]
    return found


def _retire_order(inst: Instance) -> tuple[bool, float, str]:
    """Unhealthy first, then oldest: the instances least worth keeping go first."""
    return (inst.healthy, inst.launched_at, inst.id)


def _ids(instances: Sequence[Instance]) -> tuple[str, ...]:
    return tuple(i.id for i in instances)


def make_plan(
    state: FleetState,
    image: str,
    strategy: str,
    size: int,
    knobs: Knobs,
    from_image: str | None = None,
    launch: Mapping[str, str] | None = None,
) -> Plan:
    """The steps that move ``state`` to ``size`` healthy instances of ``image``.

    With ``launch`` (what a new instance carries, see ``Instance.launch``),
    instances of ``image`` launched with other settings or secrets are replaced
    too, after the strategy's own steps.
    """
    if strategy not in STRATEGIES:
        raise DeployError(f"unknown strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    view = _Fleet.split(state, image)
    stale = _stale(view.ready + view.standby, launch or {})
    if strategy == "blue-green":
        steps = _blue_green(view, size, knobs)
    elif strategy == "canary":
        steps = _canary(view, size, knobs)
    else:
        steps = _rolling(view, size, knobs)
    gone = {i for s in steps if s.kind is StepKind.TERMINATE for i in s.instances}
    stale = [i for i in stale if i.id not in gone]
    steps += _relaunch(image, stale, size, knobs, launch or {})
    if knobs.settle > 0:  # a batch proves itself before what it replaces goes
        steps = [
            replace(s, seconds=knobs.settle) if s.kind is StepKind.LAUNCH else s for s in steps
        ]
    changed = _changed(stale, launch or {})
    return Plan(
        state.name, strategy, image, from_image, size, tuple(steps), changed=changed,
        relaunch=_ids(stale),
    )  # fmt: skip


def _stale(instances: Sequence[Instance], launch: Mapping[str, str]) -> list[Instance]:
    """Those launched with settings other than ``launch`` (unknown counts as current)."""
    return [
        i for i in instances if i.launch and any(i.launch.get(k) != v for k, v in launch.items())
    ]


def _changed(stale: Sequence[Instance], launch: Mapping[str, str]) -> tuple[str, ...]:
    keys = {k for i in stale for k, v in launch.items() if i.launch.get(k) != v}
    return tuple(sorted(keys, key=lambda k: (k != "secrets", k)))  # secrets first


def _relaunch(
    image: str, stale: Sequence[Instance], size: int, knobs: Knobs, launch: Mapping[str, str]
) -> list[Step]:
    """Replace instances of the right image launched the wrong way, ``max_surge`` at a time.

    Whatever the strategy: canary and blue-green compare and switch images, and
    here the image stays. The strategy's own steps leave ``size`` instances of
    ``image``, so each batch tops that up and then retires the stale ones.
    """
    why = f"{', '.join(_changed(stale, launch))} changed"
    steps: list[Step] = []
    batch = max(1, knobs.max_surge)
    for start in range(0, len(stale), batch):
        chunk = stale[start : start + batch]
        steps.append(Step(StepKind.LAUNCH, image=image, count=len(chunk), expect=size + len(chunk)))
        steps.append(Step(StepKind.TERMINATE, instances=_ids(chunk), why=why))
    return steps


def rollback_plan(
    state: FleetState, image: str | None, size: int, strategy: str, leaving: str | None = None
) -> Plan:
    """Back to ``image`` as fast as is safe: warm standbys first, then launch all at once.
    ``leaving``: the image rolled back from (the plan's header names it)."""
    if image is None:
        doomed = _ids(state.live() + unreplaced_failures(state))
        steps = (Step(StepKind.TERMINATE, instances=doomed, why="first deployment failed"),)
        return Plan(state.name, strategy, None, leaving, size, steps if doomed else ())
    knobs = Knobs(max_surge=size, max_unavailable=0, settle=0)
    plan = make_plan(state, image, "rolling", size, knobs)
    return replace(plan, strategy=strategy, from_image=leaving)


def _rolling(view: _Fleet, size: int, knobs: Knobs) -> list[Step]:
    steps = _switch_in_standby(view, size)  # a warm standby serves first, then tidy up
    steps += _discard_idle(view)
    steps += _batches(view.target, len(view.ready), view.old, size, knobs)
    if len(view.ready) > size:
        surplus = view.ready[: len(view.ready) - size]
        steps.append(Step(StepKind.TERMINATE, instances=_ids(surplus), why="scaled down"))
    return steps


def _discard_idle(view: _Fleet) -> list[Step]:
    if not view.idle:
        return []
    doomed, view.idle = view.idle, []
    return [Step(StepKind.TERMINATE, instances=_ids(doomed), why="not serving")]


def _switch_in_standby(view: _Fleet, size: int) -> list[Step]:
    """Healthy out-of-service target instances (a warm standby) go in with one switch."""
    if not view.standby:
        return []
    take = view.standby[: max(0, size - len(view.ready))]
    extra = view.standby[len(take) :]
    remove = view.old[: len(take)]
    steps = [Step(StepKind.SWITCH, image=view.target, instances=_ids(remove))] if take else []
    doomed = remove + extra
    if doomed:
        steps.append(Step(StepKind.TERMINATE, instances=_ids(doomed), why="replaced"))
    view.ready += take
    view.old = view.old[len(remove) :]
    view.standby = []
    return steps


def _batches(target: str, new: int, old: Sequence[Instance], size: int, knobs: Knobs) -> list[Step]:
    """Surge/unavailable batches: never above size+surge, never below size-unavailable.

    ``new`` target instances already serve; ``old`` are replaced in retire order.
    """
    steps: list[Step] = []
    old = list(old)
    while new < size or old:
        live = new + len(old)
        first = min(len(old), max(0, live - (size - knobs.max_unavailable)))
        if first:
            steps.append(Step(StepKind.TERMINATE, instances=_ids(old[:first]), why="replaced"))
            old, live = old[first:], live - first
        count = min(size - new, size + knobs.max_surge - live)
        if count > 0:
            new += count
            steps.append(Step(StepKind.LAUNCH, image=target, count=count, expect=new))
            live += count
        after = min(len(old), max(0, live - size))
        if after:
            steps.append(Step(StepKind.TERMINATE, instances=_ids(old[:after]), why="replaced"))
            old = old[after:]
        if not first and count <= 0 and not after:
            break
    return steps


def _blue_green(view: _Fleet, size: int, knobs: Knobs) -> list[Step]:
    steps = _discard_idle(view)
    have = len(view.ready) + len(view.standby)
    if have < size:
        steps.append(
            Step(
                StepKind.LAUNCH, image=view.target, count=size - have, expect=size, in_service=False
            )
        )
    if view.old or have < size or view.standby:
        steps.append(Step(StepKind.SWITCH, image=view.target))
    if view.old:
        steps.append(Step(StepKind.RETIRE, seconds=knobs.keep_warm))
    return steps


def _canary(view: _Fleet, size: int, knobs: Knobs) -> list[Step]:
    steps = _discard_idle(view)
    if not view.old:  # nothing to compare against: a plain rollout
        return steps + _rolling(view, size, knobs)
    if knobs.canary_traffic:
        return steps + _split_canary(view, size, knobs)
    steps += _switch_in_standby(view, size)
    count = max(min(knobs.canary_count, size), len(view.ready))
    if len(view.ready) < count:
        launch = count - len(view.ready)
        steps.append(Step(StepKind.LAUNCH, image=view.target, count=launch, expect=count))
    steps.append(
        Step(StepKind.CANARY, image=view.target, count=count, seconds=knobs.canary_seconds)
    )
    return steps + _batches(view.target, count, view.old, size, knobs)


def _split_canary(view: _Fleet, size: int, knobs: Knobs) -> list[Step]:
    """Canaries out of the fleet's rotation, given shares of requests by weight.

    A standby of the target image is a canary not yet judged (a split killed
    half-way leaves one): it is judged with the others, never switched in as is.
    """
    count = max(min(knobs.canary_count, size), len(view.ready) + len(view.standby))
    have = len(view.ready) + len(view.standby)
    steps = []
    if have < count:
        launch = Step(
            StepKind.LAUNCH, image=view.target, count=count - have, expect=count, in_service=False
        )
        steps.append(launch)
    steps.append(
        Step(
            StepKind.CANARY, image=view.target, count=count, seconds=knobs.canary_seconds,
            traffic=tuple(knobs.canary_traffic),
        )
    )  # fmt: skip
    return steps + _batches(view.target, count, view.old, size, knobs)
