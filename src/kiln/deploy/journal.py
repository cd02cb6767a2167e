"""Deployments and their journal: every step written down before it is acted on.

A deployment row holds the plan (and, once a gate trips, the rollback plan);
journal rows record ``begin``/``done`` per step and phase. A step begun but
not done is re-run on resume: steps are idempotent against the observed fleet.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from kiln.deploy.plan import Plan, span
from kiln.deploy.state import StateDb, dumps


class Outcome(StrEnum):
    """Where a deployment stands; the values are what history and ``--json`` show."""

    RUNNING = "running"
    INTERRUPTED = "interrupted"  # its process died; the next command resumes it
    SUCCEEDED = "succeeded"
    ROLLED_BACK = "rolled back"
    FAILED = "failed"
    UNCHANGED = "unchanged"  # nothing to do: never journaled, only returned


class DeploymentKind(StrEnum):
    """What started a deployment; every kind runs through the same journaled engine."""

    DEPLOY = "deploy"
    ROLLBACK = "rollback"
    SCALE = "scale"
    DESTROY = "destroy"
    RECYCLE = "recycle"
    DRIFT = "drift"
    REFRESH = "refresh"


class JournalEvent(StrEnum):
    """A journal row's event; ``begin``/``done`` bracket each step so a resume re-runs it."""

    PLAN = "plan"
    BEGIN = "begin"
    DONE = "done"
    RELEASE = "release"
    TRIP = "trip"
    FINISH = "finish"
    RUNNING = "running"
    INTERRUPTED = "interrupted"


UNFINISHED = (Outcome.RUNNING, Outcome.INTERRUPTED)
OUTCOMES = (Outcome.SUCCEEDED, Outcome.ROLLED_BACK, Outcome.FAILED)


@dataclass(frozen=True)
class Who:
    """Who deployed: user@host, and the CI commit when the environment says so."""

    user: str
    host: str
    commit: str | None = None

    def __str__(self) -> str:
        return f"{self.user}@{self.host}"


@dataclass(frozen=True)
class Deployment:
    id: str
    fleet: str
    kind: DeploymentKind
    strategy: str
    from_image: str | None
    to_image: str | None
    size: int
    started: float
    finished: float | None
    outcome: Outcome
    phase: str  # forward | rollback
    who: str
    commit: str | None
    reason: str | None
    message: str | None
    figures: dict[str, Any] = field(default_factory=dict)
    plan_json: dict[str, Any] = field(default_factory=dict)
    rollback_json: dict[str, Any] | None = None

    @property
    def unfinished(self) -> bool:
        return self.outcome in UNFINISHED

    @property
    def span(self) -> str:
        """``from → to``, as messages name the deployment."""
        return span(self.from_image, self.to_image)

    @property
    def plan(self) -> Plan:
        return Plan.from_json(self.plan_json)

    @property
    def rollback_plan(self) -> Plan | None:
        return Plan.from_json(self.rollback_json) if self.rollback_json else None

    @property
    def duration(self) -> float | None:
        return None if self.finished is None else self.finished - self.started

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "fleet": self.fleet,
            "kind": self.kind,
            "from": self.from_image,
            "to": self.to_image,
            "strategy": self.strategy,
            "size": self.size,
            "started": self.started,
            "finished": self.finished,
            "duration": self.duration,
            "outcome": self.outcome,
            "who": self.who,
            "commit": self.commit,
            "reason": self.reason,
            "message": self.message,
            "figures": self.figures,
        }


class Journal:
    def __init__(self, db: StateDb) -> None:
        self.db = db

    def create(
        self, plan: Plan, kind: DeploymentKind, who: Who, reason: str | None, now: float
    ) -> Deployment:
        """Record the deployment and its plan; nothing has been touched yet."""
        dep_id = f"dep-{secrets.token_hex(4)}"
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO deploy_deployments (id, fleet, kind, strategy, from_image, "
                "to_image, size, started, outcome, phase, who, commit_sha, reason, plan) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    dep_id,
                    plan.fleet,
                    kind,
                    plan.strategy,
                    plan.from_image,
                    plan.image,
                    plan.size,
                    now,
                    Outcome.RUNNING,
                    "forward",
                    str(who),
                    who.commit,
                    reason,
                    dumps(plan.to_json()),
                ),
            )
            self._append(conn, dep_id, "forward", None, JournalEvent.PLAN, now, {})
        return self.get(dep_id)

    def begin(self, dep: str, phase: str, step: int, now: float, data: dict[str, Any]) -> None:
        self.event(dep, phase, JournalEvent.BEGIN, now, data, step=step)

    def done(self, dep: str, phase: str, step: int, now: float, data: dict[str, Any]) -> None:
        self.event(dep, phase, JournalEvent.DONE, now, data, step=step)

    def event(
        self,
        dep: str,
        phase: str,
        event: JournalEvent,
        now: float,
        data: dict[str, Any],
        step: int | None = None,
    ) -> None:
        with self.db.transaction() as conn:
            self._append(conn, dep, phase, step, event, now, data)

    def _append(
        self,
        conn: sqlite3.Connection,
        dep: str,
        phase: str,
        step: int | None,
        event: JournalEvent,
        now: float,
        data: dict[str, Any],
    ) -> None:
        row = conn.execute(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM deploy_journal WHERE deployment=?", (dep,)
        ).fetchone()
        conn.execute(
            "INSERT INTO deploy_journal VALUES (?,?,?,?,?,?,?)",
            (dep, row[0], phase, step, event, now, dumps(data)),
        )

    def set_outcome(self, dep: str, outcome: Outcome, now: float) -> None:
        """Mark a deployment running again, or interrupted (only those two are journaled so)."""
        with self.db.transaction() as conn:
            conn.execute("UPDATE deploy_deployments SET outcome=? WHERE id=?", (outcome, dep))
            self._append(conn, dep, "-", None, JournalEvent(outcome.value), now, {})

    def start_rollback(
        self, dep: str, plan: Plan, message: str, figures: dict[str, Any], now: float
    ) -> None:
        """The trip and the rollback plan, journaled before the rollback acts."""
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE deploy_deployments SET phase='rollback', rollback_plan=?, message=?, "
                "figures=? WHERE id=?",
                (dumps(plan.to_json()), message, dumps(figures), dep),
            )
            self._append(conn, dep, "rollback", None, JournalEvent.TRIP, now, {"message": message})

    def finish(
        self, dep: str, outcome: Outcome, message: str | None, figures: dict[str, Any], now: float
    ) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE deploy_deployments SET outcome=?, finished=?, message=?, figures=? "
                "WHERE id=?",
                (outcome, now, message, dumps(figures), dep),
            )
            self._append(conn, dep, "-", None, JournalEvent.FINISH, now, {"outcome": str(outcome)})

    def done_steps(self, dep: str, phase: str) -> set[int]:
        rows = self.db.conn.execute(
            "SELECT step FROM deploy_journal WHERE deployment=? AND phase=? AND event=?",
            (dep, phase, JournalEvent.DONE),
        )
        return {r["step"] for r in rows}

    def entries(self, dep: str) -> list[dict[str, Any]]:
        rows = self.db.conn.execute(
            "SELECT * FROM deploy_journal WHERE deployment=? ORDER BY seq", (dep,)
        )
        return [
            {
                "seq": r["seq"],
                "phase": r["phase"],
                "step": r["step"],
                "event": r["event"],
                "at": r["at"],
                "data": json.loads(r["data"]),
            }
            for r in rows
        ]

    def get(self, dep: str) -> Deployment:
        row = self.db.conn.execute("SELECT * FROM deploy_deployments WHERE id=?", (dep,)).fetchone()
        return _deployment(row)

    def unfinished(self, fleet: str) -> Deployment | None:
        row = self.db.conn.execute(
            "SELECT * FROM deploy_deployments WHERE fleet=? AND outcome IN (?, ?) "
            "ORDER BY started DESC LIMIT 1",
            (fleet, *UNFINISHED),
        ).fetchone()
        return None if row is None else _deployment(row)

    def history(self, fleet: str | None = None, limit: int = 50) -> list[Deployment]:
        where, args = ("WHERE fleet=?", (fleet,)) if fleet else ("", ())
        rows = self.db.conn.execute(
            f"SELECT * FROM deploy_deployments {where} ORDER BY started DESC LIMIT ?",
            (*args, limit),
        )
        return [_deployment(r) for r in rows]


def _deployment(row: sqlite3.Row) -> Deployment:
    return Deployment(
        id=row["id"],
        fleet=row["fleet"],
        kind=DeploymentKind(row["kind"]),
        strategy=row["strategy"],
        from_image=row["from_image"],
        to_image=row["to_image"],
        size=row["size"],
        started=row["started"],
        finished=row["finished"],
        outcome=Outcome(row["outcome"]),
        phase=row["phase"],
        who=row["who"],
        commit=row["commit_sha"],
        reason=row["reason"],
        message=row["message"],
        figures=json.loads(row["figures"]),
        plan_json=json.loads(row["plan"]),
        rollback_json=json.loads(row["rollback_plan"]) if row["rollback_plan"] else None,
    )
