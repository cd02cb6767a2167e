"""What a finished operation leaves behind: the fleet record and the result.

Pure functions of the observed fleet and the previous record, so the rules
(what counts as previous, when a warm standby survives) read in one place.
"""

from __future__ import annotations

from collections import Counter

from kiln.deploy.history import Result
from kiln.deploy.journal import Deployment
from kiln.deploy.state import FleetRecord
from kiln.providers.protocol import FleetState


def next_record(
    state: FleetState,
    rec: FleetRecord | None,
    *,
    fleet: str,
    current: str | None,
    from_image: str | None,
    size: int,
    config_size: int,
    warm: list[str],
    warm_until: float | None,
    keep_previous: bool = False,
) -> FleetRecord:
    """The fleet record after an operation ending with ``current`` serving.

    ``previous`` becomes ``from_image`` when the image changed (or when told to
    keep it, for rollbacks). A new standby (``warm``) replaces any older one;
    otherwise an older standby survives only while its instances are still warm.
    """
    previous = rec.previous_image if rec else None
    if keep_previous or (from_image and from_image != current):
        previous = from_image
    warm_image, until = (from_image, warm_until) if warm else (None, None)
    if not warm and rec and rec.warm_ids:
        idle = {i.id for i in state.live() if not i.in_service}
        warm = sorted(i for i in standby(rec, state) if i in idle)
        warm_image, until = (rec.warm_image, rec.warm_until) if warm else (None, None)
    return FleetRecord(
        fleet,
        size=size,
        config_size=config_size,
        current_image=current,
        previous_image=previous,
        warm_image=warm_image,
        warm_ids=tuple(warm),
        warm_until=until,
    )


def standby(rec: FleetRecord | None, state: FleetState) -> set[str]:
    """The warm standby's instances as they are now: those recorded, and whatever
    self-healing started in place of one that died (out of service, as it was, under
    a new id: the next deploy took it for a stray and the standby shrank by one)."""
    found = set(rec.warm_ids) if rec else set()
    replaced = {i.id: i.replaced_by for i in state.instances if i.replaced_by}
    todo = list(found)
    while todo:
        successor = replaced.get(todo.pop())
        if successor is not None and successor not in found:
            found.add(successor)
            todo.append(successor)
    return found


def result_of(dep: Deployment, log: str | None = None) -> Result:
    figures = dict(dep.figures)
    return Result(
        fleet=dep.fleet,
        outcome=dep.outcome,
        deployment=dep.id,
        kind=dep.kind,
        strategy=dep.strategy,
        from_image=dep.from_image,
        to_image=dep.to_image,
        duration=dep.duration,
        message=dep.message,
        gate=figures.get("gate"),
        instance=figures.get("instance"),
        log=log or figures.get("log_tail"),
        figures=figures,
    )


def majority(state: FleetState) -> str | None:
    """The image most serving instances run: the current one when kiln has no record."""
    images = Counter(i.image for i in state.serving())
    return images.most_common(1)[0][0] if images else None


def summary(state: FleetState) -> str:
    """'img-a x2 (2 healthy, 2 in service), img-b x1 (...)': what runs right now."""
    live = state.live()
    if not live:
        return "no instances"
    parts = []
    for image, count in sorted(Counter(i.image for i in live).items()):
        healthy = sum(1 for i in live if i.image == image and i.healthy)
        serving = sum(1 for i in live if i.image == image and i.in_service)
        parts.append(f"{image} x{count} ({healthy} healthy, {serving} in service)")
    return ", ".join(parts)
