"""Rebuilding what the agent lost from what still runs: a deleted or damaged database.

Every instance carries ``KILN_INSTANCE_ID``, ``KILN_IMAGE``, ``KILN_FLEET`` and
``PORT`` in its environment and runs as the leader of its own session in
``KILN_HOME/instances/<id>``. A restarted agent scans ``/proc`` for such
processes that it has no record of, and adopts each one whose directory is in
its own home (an id is 48 random bits: another home's instances never match):

* the fleet's settings come from the copy kept beside the database
  (``agent/fleets/<name>.json``), the secret values from the instance's own
  environment, its load-balancer membership from the deploy state (a warm
  blue-green standby stays out of service);
* each server group counts what runs, so self-healing keeps it and nothing is
  started twice; the next ``kiln deploy`` replaces these instances like any.

A fleet whose settings copy is lost too is left running, unmanaged, and said
so in the agent's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from kiln.errors import KilnError
from kiln.home import Home
from kiln.local import procs, uids
from kiln.local.health import probe
from kiln.local.launchprint import launch_print
from kiln.local.model import InstanceRecord
from kiln.providers.protocol import InstanceState

if TYPE_CHECKING:
    from kiln.local.lifecycle import FleetRuntime
    from kiln.local.supervisor import Supervisor

log = logging.getLogger("kiln.agent")


@dataclass(frozen=True)
class Found:
    """An instance process nobody has a record of."""

    id: str
    pid: int
    started: int | None
    env: dict[str, str]
    directory: Path
    uid: int | None


def unrecorded(home: Home, known: set[str]) -> list[Found]:
    """This home's instance processes missing from ``known`` (blocking: a thread)."""
    found = []
    for pid, env in procs.instance_processes():
        instance_id = env["KILN_INSTANCE_ID"]
        directory = home.instances / instance_id
        if instance_id in known or "/" in instance_id or not directory.is_dir():
            continue
        owners = uids.owners(Path(f"/proc/{pid}"))
        uid = next((u for u in owners if uids.FIRST <= u < uids.LAST), None)
        found.append(Found(instance_id, pid, procs.start_time(pid), env, directory, uid))
    return found


def warm_standby(home: Home, fleet: str) -> set[str]:
    """The instances the deploy state keeps warm, out of service (blue-green)."""
    if not home.state_db.exists():
        return set()
    try:
        conn = sqlite3.connect(f"file:{home.state_db}?mode=ro", uri=True, timeout=1)
        try:
            row = conn.execute(
                "SELECT warm_ids FROM deploy_fleets WHERE fleet=?", (fleet,)
            ).fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return set()
    return set(json.loads(row[0])) if row and row[0] else set()


def _launched_at(pid: int, started: int | None) -> float:
    """When the process started, in epoch seconds (now, if that cannot be told)."""
    if started is None:
        return time.time()
    with contextlib.suppress(OSError, ValueError, StopIteration):
        stat = Path("/proc/stat").read_text().splitlines()
        boot = float(next(x for x in stat if x.startswith("btime")).split()[1])
        return boot + started / os.sysconf("SC_CLK_TCK")
    return time.time()


async def adopt_unrecorded(sup: Supervisor) -> list[str]:
    """Adopt every running instance of this home the agent has no record of; their ids."""
    found = await asyncio.to_thread(unrecorded, sup.home, set(sup.instances))
    adopted = []
    for item in found:
        fleet = await _fleet_of(sup, item)
        if fleet is None:
            continue
        rec = await _record(sup, fleet, item)
        sup.instances[rec.id] = rec
        sup.save(rec)
        fleet.groups[rec.image] = fleet.groups.get(rec.image, 0) + 1
        sup.db.save_group(fleet.name, rec.image, fleet.groups[rec.image])
        sup.watch_health(fleet, rec, healthy=rec.state == "healthy")
        log.warning(
            "recovered instance %s of fleet %s (pid %s, %s) from its process: "
            "the agent had no record of it",
            rec.id,
            fleet.name,
            rec.pid,
            rec.state,
        )
        adopted.append(rec.id)
    return adopted


async def _fleet_of(sup: Supervisor, item: Found) -> FleetRuntime | None:
    from kiln.local.lifecycle import FleetRuntime

    name = item.env.get("KILN_FLEET")
    if not name:  # launched before instances carried their fleet: the image's app
        try:
            name = (await asyncio.to_thread(sup.store.get, item.env["KILN_IMAGE"])).app
        except (KilnError, KeyError):
            name = None
    fleet = sup.fleets.get(name) if name else None
    if fleet is not None or not name:
        if fleet is None:
            log.error("instance %s (pid %s) runs, but its fleet is unknown", item.id, item.pid)
        return fleet
    settings = await asyncio.to_thread(sup.db.settings_copy, name)
    if settings is None:
        log.error(
            "instance %s of fleet %s (pid %s) runs, but the fleet's settings are lost: "
            "left running, unmanaged; 'kiln deploy' from its app directory takes it over",
            item.id,
            name,
            item.pid,
        )
        return None
    fleet = sup.fleets[name] = FleetRuntime(name, settings)
    sup.db.save_fleet(name, settings)
    return fleet


async def _record(sup: Supervisor, fleet: FleetRuntime, item: Found) -> InstanceRecord:
    settings = fleet.settings
    warm = await asyncio.to_thread(warm_standby, sup.home, fleet.name)
    rec = InstanceRecord(
        id=item.id,
        fleet=fleet.name,
        image=item.env.get("KILN_IMAGE", ""),
        state="running",
        launched_at=_launched_at(item.pid, item.started),
        in_service=item.id not in warm,
        port=int(item.env.get("PORT", "0") or 0),
        pid=item.pid,
        pid_start=item.started,
        dir=str(item.directory),
        log=str(sup.logs / f"{item.id}.log"),
        uid=item.uid,
    )
    rec.set_state(InstanceState.RUNNING)
    secrets = {name: item.env[name] for name in settings.secrets if name in item.env}
    if len(secrets) == len(settings.secrets):
        as_run = replace(settings, isolate=item.uid is not None)  # what it really runs with
        rec.launch = launch_print(sup.launch_key, as_run, secrets)
        if not fleet.secrets:
            fleet.secrets = secrets
    check = settings.health_check
    if await probe("127.0.0.1", rec.port or 0, check.path, check.timeout, check.host) is None:
        rec.set_state(InstanceState.HEALTHY)  # it served before: it serves on at once
    return rec
