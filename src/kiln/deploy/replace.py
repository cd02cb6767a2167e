"""Replacing chosen instances from their own image: recycling and drift repair.

The same immutable move as a deployment, only the image stays: launch a
fresh instance, prove it healthy, then drain and terminate the one it
replaces, batch by batch (``max_surge`` at a time, never below capacity).
Expressed as an ordinary plan, it gets the engine's lock, journal, gates,
resume and rollback for free.
"""

from __future__ import annotations

from collections.abc import Sequence

from kiln.deploy.plan import Knobs, Plan, Step, StepKind
from kiln.providers.protocol import FleetState, Instance


def replacement_plan(
    state: FleetState, doomed: Sequence[Instance], size: int, knobs: Knobs, why: str
) -> Plan:
    """Launch-then-terminate batches replacing ``doomed``, each from its own image."""
    steps: list[Step] = []
    batch = max(1, knobs.max_surge)
    images = sorted({i.image for i in doomed})
    for image in images:
        mine = sorted((i for i in doomed if i.image == image), key=lambda i: i.launched_at)
        live = len(state.live(image))
        for start in range(0, len(mine), batch):
            chunk = mine[start : start + batch]
            steps.append(
                Step(
                    StepKind.LAUNCH,
                    image=image,
                    count=len(chunk),
                    expect=live + len(chunk),
                    seconds=knobs.settle,
                )
            )
            steps.append(Step(StepKind.TERMINATE, instances=tuple(i.id for i in chunk), why=why))
    target = images[0] if len(images) == 1 else _serving_image(state)
    return Plan(state.name, "rolling", target, target, size, tuple(steps))


def _serving_image(state: FleetState) -> str | None:
    counts: dict[str, int] = {}
    for inst in state.serving():
        counts[inst.image] = counts.get(inst.image, 0) + 1
    return max(counts, key=lambda image: counts[image]) if counts else None
