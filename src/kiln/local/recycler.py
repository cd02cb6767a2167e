"""Maximum instance lifetime: the agent recycles instances older than ``[fleet] max_age``.

Like an Auto Scaling group's max instance lifetime: one instance at a time,
a fresh one from the same image is launched and proven healthy before the
old one is drained and terminated, so capacity never drops. It stands back
while a deployment holds the fleet's lock, and while anything in the fleet
is not healthy (a deployment or self-healing is already moving things).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from typing import TYPE_CHECKING

from kiln.errors import KilnError
from kiln.home import Home
from kiln.providers.protocol import past_max_age

if TYPE_CHECKING:
    from kiln.local.lifecycle import FleetRuntime
    from kiln.local.supervisor import Supervisor

log = logging.getLogger("kiln.agent")
RETRY_AFTER = 600.0  # a replacement that failed to get healthy: try again this much later


def deployment_holds(home: Home, fleet: str) -> bool:
    """Is a deployment (or ``kiln recycle``) moving this fleet right now?"""
    if not home.state_db.exists():
        return False
    try:
        conn = sqlite3.connect(f"file:{home.state_db}?mode=ro", uri=True, timeout=1)
        try:
            row = conn.execute("SELECT 1 FROM deploy_locks WHERE fleet=?", (fleet,)).fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return True  # cannot tell: do nothing rather than race a deployment
    return row is not None


def due(sup: Supervisor, fleet: FleetRuntime, now: float) -> str | None:
    """The oldest in-service instance past max_age, if the fleet is settled enough."""
    max_age = fleet.settings.max_age
    if not max_age or now < fleet.recycle_after or fleet.recycling:
        return None
    mine = [r for r in sup.instances.values() if r.fleet == fleet.name and r.live]
    if not mine or any(r.state != "healthy" or r.terminating for r in mine):
        return None
    old = past_max_age(mine, max_age, now)
    return old[0].id if old else None


async def recycle(sup: Supervisor, fleet: FleetRuntime, victim_id: str) -> None:
    """Replace one instance: launch, wait healthy, then drain and terminate the old one."""
    victim = sup.instances[victim_id]
    fleet.recycling = True
    try:
        if await asyncio.to_thread(deployment_holds, sup.home, fleet.name):
            return  # a deployment is moving the fleet: its SQLite is not read on the loop
        log.info("recycling %s: older than max_age (%gs)", victim.id, fleet.settings.max_age)
        try:
            (new_id,) = await sup.launch(
                fleet.name, fleet.settings, victim.image, 1, True, fleet.secrets
            )
        except KilnError as exc:
            log.error("recycle of %s could not launch a replacement: %s", victim.id, exc)
            fleet.recycle_after = time.time() + RETRY_AFTER
            return
        if not await _healthy(sup, fleet, new_id):
            log.error("recycle of %s: replacement %s never got healthy", victim.id, new_id)
            await sup.terminate(fleet.name, [new_id])
            fleet.recycle_after = time.time() + RETRY_AFTER
            return
        await sup.terminate(fleet.name, [victim.id])
        log.info("recycled %s: %s serves in its place", victim.id, new_id)
    finally:
        fleet.recycling = False


async def _healthy(sup: Supervisor, fleet: FleetRuntime, instance_id: str) -> bool:
    health = fleet.settings.health_check
    deadline = time.time() + health.grace + health.healthy_threshold * health.interval + 30
    while time.time() < deadline:
        rec = sup.instances.get(instance_id)
        if rec is None or not rec.live:
            return False
        if rec.state == "healthy":
            return True
        await asyncio.sleep(0.2)
    return False
