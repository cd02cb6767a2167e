"""What a fleet looks like right now: the provider's view plus kiln's memory."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any, Protocol

from kiln.deploy.journal import Journal
from kiln.deploy.lock import HEARTBEAT_TTL, read_holder, stale_reason
from kiln.deploy.records import standby
from kiln.deploy.state import StateDb
from kiln.providers.protocol import FleetState, Instance


class Describes(Protocol):
    """All status needs of a provider: a read-only view suffices (the agent's page)."""

    @property
    def name(self) -> str: ...

    def describe(self, fleet: str) -> FleetState: ...


def fleet_status(
    provider: Describes,
    db: StateDb,
    fleet: str,
    configured_size: int,
    now: float,
    annotate: Callable[[Instance], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One fleet, as ``kiln status --json`` prints it; ``annotate`` adds per-instance facts."""
    state = provider.describe(fleet)
    rec = db.fleet(fleet)
    unfinished = Journal(db).unfinished(fleet)
    holder = read_holder(db, fleet)
    warm = standby(rec, state)
    instances = [
        {
            "id": i.id,
            "image": i.image,
            "state": i.state.value,
            "healthy": i.healthy,
            # an ended instance serves nothing, whatever its record last said (one that
            # exited while the agent was down kept in_service true in --json)
            "in_service": i.in_service and i.live,
            "age": round(max(0.0, now - i.launched_at), 1),
            "address": i.address,
            "warm": i.id in warm and i.live,
            **(annotate(i) if annotate else {}),
        }
        for i in state.instances
        if i.state.value != "terminated"
    ]
    return {
        "fleet": fleet,
        "provider": provider.name,
        "endpoint": state.endpoint,
        "desired_size": rec.desired_size(configured_size) if rec else configured_size,
        "current_image": rec.current_image if rec else None,
        "previous_image": rec.previous_image if rec else None,
        "warm_standby": (
            {
                "image": rec.warm_image,
                "instances": sorted(i.id for i in state.live() if i.id in warm),
                "until": rec.warm_until,
            }
            if rec and rec.warm_ids
            else None
        ),
        "serving": len(state.serving()),
        "instances": instances,
        "deployment_in_progress": (
            {
                "id": unfinished.id,
                "from": unfinished.from_image,
                "to": unfinished.to_image,
                "strategy": unfinished.strategy,
                "phase": unfinished.phase,
                "outcome": unfinished.outcome,
                "who": unfinished.who,
                "started": unfinished.started,
            }
            if unfinished
            else None
        ),
        "lock": (
            {
                "holder": f"{holder.user}@{holder.host}",
                "pid": holder.pid,
                "deployment": holder.deployment,
                "started": holder.started,
                "heartbeat": holder.heartbeat,
                # its process gone (a kill -9 of the deploy): the next command takes it over
                "stale": stale_reason(holder, time.time(), socket.gethostname(), HEARTBEAT_TTL),
            }
            if holder
            else None
        ),
    }
