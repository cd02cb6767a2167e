"""One deployment per fleet at a time, with a heartbeat so dead holders lose it.

The lock is a row in ``deploy_locks`` taken inside ``BEGIN IMMEDIATE``. A holder
whose process is gone (same host) or whose heartbeat is older than the TTL
is taken over with a warning, so a killed CI job never blocks the next one
for long; ``kiln unlock`` handles the rest.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

from kiln.deploy.clock import Clock
from kiln.deploy.state import StateDb
from kiln.durations import format_duration
from kiln.errors import LockHeld
from kiln.pids import pid_alive

HEARTBEAT_TTL = 60.0


@dataclass(frozen=True)
class Holder:
    fleet: str
    host: str
    pid: int
    user: str
    deployment: str | None
    started: float
    heartbeat: float

    def describe(self, now: float) -> str:
        dep = f", deployment {self.deployment}" if self.deployment else ""
        return (
            f"{self.user}@{self.host} (pid {self.pid}{dep}), started "
            f"{format_duration(max(0.0, now - self.started))} ago, last heartbeat "
            f"{format_duration(max(0.0, now - self.heartbeat))} ago"
        )


def stale_reason(holder: Holder, now: float, host: str, ttl: float) -> str | None:
    """Why a holder no longer counts, or None when it may still be deploying."""
    if holder.host == host and not pid_alive(holder.pid):
        return f"its process {holder.pid} on this host is gone"
    if now - holder.heartbeat > ttl:
        return f"no heartbeat for {format_duration(now - holder.heartbeat)}"
    return None


def read_holder(db: StateDb, fleet: str) -> Holder | None:
    row = db.conn.execute("SELECT * FROM deploy_locks WHERE fleet=?", (fleet,)).fetchone()
    if row is None:
        return None
    return Holder(
        fleet=row["fleet"],
        host=row["host"],
        pid=row["pid"],
        user=row["user"],
        deployment=row["deployment"],
        started=row["started"],
        heartbeat=row["heartbeat"],
    )


class DeployLock:
    """The fleet's lock, held by this process for one engine operation."""

    def __init__(
        self,
        db: StateDb,
        fleet: str,
        clock: Clock,
        *,
        user: str,
        host: str,
        pid: int | None = None,
        ttl: float = HEARTBEAT_TTL,
        warn: Callable[[str], None] = lambda _m: None,
    ) -> None:
        self.db, self.fleet, self.clock = db, fleet, clock
        self.user, self.host = user, host
        self.pid = os.getpid() if pid is None else pid
        self.ttl, self.warn = ttl, warn
        self._last_beat = -math.inf

    def acquire(self, wait: float | None = None) -> None:
        """Take the lock; fail fast (``wait=None``) or retry for ``wait`` seconds."""
        deadline = None if wait is None else self.clock.now() + wait
        waited_for: tuple[str, int] | None = None
        while True:
            holder = self._try()
            if holder is None:
                return
            now = self.clock.now()
            if deadline is not None and now < deadline and (holder.host, holder.pid) != waited_for:
                waited_for = (holder.host, holder.pid)  # said once per holder: not silent
                self.warn(
                    f"waiting up to {deadline - now:.0f}s for fleet {self.fleet}'s lock, "
                    f"held by {holder.describe(now)}"
                )
            if deadline is None or now >= deadline:
                raise LockHeld(
                    f"fleet {self.fleet} is being deployed by {holder.describe(now)}",
                    hint="run the command again with --wait [TIMEOUT] to wait for it (deploy, "
                    "rollback, scale, recycle, refresh, promote and destroy take it), or if "
                    "that deployment is really gone, 'kiln unlock' (then 'kiln deploy --resume')",
                )
            self.clock.sleep(min(1.0, max(0.05, deadline - now)))

    def _try(self) -> Holder | None:
        """Insert our row unless a live holder exists; return that holder."""
        with self.db.transaction() as conn:
            now = self.clock.now()
            holder = read_holder(self.db, self.fleet)
            if holder is not None and (holder.host, holder.pid) != (self.host, self.pid):
                reason = stale_reason(holder, now, self.host, self.ttl)
                if reason is None:
                    return holder
                self.warn(
                    f"taking over the lock of fleet {self.fleet} from "
                    f"{holder.describe(now)}: {reason}"
                )
            conn.execute(
                "INSERT OR REPLACE INTO deploy_locks VALUES (?,?,?,?,?,?,?)",
                (self.fleet, self.host, self.pid, self.user, None, now, now),
            )
        self._last_beat = now
        return None

    def beat(self, deployment: str | None = None) -> None:
        """Refresh the heartbeat (cheap to call often: writes at most every TTL/6)."""
        now = self.clock.now()
        if deployment is None and now - self._last_beat < self.ttl / 6:
            return
        with self.db.transaction() as conn:
            sets = "heartbeat=?" + (", deployment=?" if deployment else "")
            args: tuple[object, ...] = (now, deployment) if deployment else (now,)
            conn.execute(
                f"UPDATE deploy_locks SET {sets} WHERE fleet=? AND host=? AND pid=?",
                (*args, self.fleet, self.host, self.pid),
            )
        self._last_beat = now

    def release(self) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "DELETE FROM deploy_locks WHERE fleet=? AND host=? AND pid=?",
                (self.fleet, self.host, self.pid),
            )


def unlock(db: StateDb, fleet: str, now: float, host: str, *, force: bool) -> Holder | None:
    """Remove the fleet's lock if its holder is gone (or ``force``); return who held it."""
    with db.transaction() as conn:
        holder = read_holder(db, fleet)
        if holder is None:
            return None
        if not force and stale_reason(holder, now, host, HEARTBEAT_TTL) is None:
            raise LockHeld(
                f"fleet {fleet} is locked by {holder.describe(now)}, which looks alive",
                hint="'kiln unlock --force' removes it anyway; its deployment can then be "
                "finished with 'kiln deploy --resume'",
            )
        conn.execute("DELETE FROM deploy_locks WHERE fleet=?", (fleet,))
    return holder
