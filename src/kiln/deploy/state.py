"""The deploy engine's SQLite state: fleets, deployments, journal, locks.

Tables are prefixed ``deploy_`` so they can share a file with other parts of
kiln. The schema carries a version; a database written by another version
is refused before anything is changed.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln.errors import DeployError

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS deploy_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS deploy_fleets (
    fleet TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    config_size INTEGER NOT NULL,
    current_image TEXT,
    previous_image TEXT,
    warm_image TEXT,
    warm_ids TEXT NOT NULL DEFAULT '[]',
    warm_until REAL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS deploy_deployments (
    id TEXT PRIMARY KEY,
    fleet TEXT NOT NULL,
    kind TEXT NOT NULL,
    strategy TEXT NOT NULL,
    from_image TEXT,
    to_image TEXT,
    size INTEGER NOT NULL,
    started REAL NOT NULL,
    finished REAL,
    outcome TEXT NOT NULL,
    phase TEXT NOT NULL,
    who TEXT NOT NULL,
    commit_sha TEXT,
    reason TEXT,
    message TEXT,
    figures TEXT NOT NULL DEFAULT '{}',
    plan TEXT NOT NULL,
    rollback_plan TEXT
);
CREATE INDEX IF NOT EXISTS deploy_deployments_fleet ON deploy_deployments (fleet, started);
CREATE TABLE IF NOT EXISTS deploy_journal (
    deployment TEXT NOT NULL,
    seq INTEGER NOT NULL,
    phase TEXT NOT NULL,
    step INTEGER,
    event TEXT NOT NULL,
    at REAL NOT NULL,
    data TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (deployment, seq)
);
CREATE TABLE IF NOT EXISTS deploy_locks (
    fleet TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    user TEXT NOT NULL,
    deployment TEXT,
    started REAL NOT NULL,
    heartbeat REAL NOT NULL
);
"""


@dataclass(frozen=True)
class FleetRecord:
    """What kiln remembers of a fleet between deployments."""

    fleet: str
    size: int
    config_size: int
    current_image: str | None = None
    previous_image: str | None = None
    warm_image: str | None = None
    warm_ids: tuple[str, ...] = field(default_factory=tuple)
    warm_until: float | None = None

    def desired_size(self, configured: int) -> int:
        """``kiln scale`` wins until kiln.toml's ``[fleet] size`` itself changes."""
        return self.size if configured == self.config_size else configured


class StateDb:
    """One connection to the state file; every write is its own transaction."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.conn = sqlite3.connect(path, timeout=30, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        try:
            self._check_schema()  # first: a file we do not understand is left exactly as it was
        except BaseException:
            self.conn.close()
            raise
        # WAL + NORMAL: a commit is in the OS before we act, which is what surviving
        # kill -9 needs; only a power cut could lose the last step (then resume re-observes).
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")

    def close(self) -> None:
        self.conn.close()

    def _check_schema(self) -> None:
        with self.transaction():
            row = self.conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name='deploy_meta'"
            ).fetchone()
            version = None
            if row is not None:
                found = self.conn.execute(
                    "SELECT value FROM deploy_meta WHERE key='schema'"
                ).fetchone()
                version = int(found["value"]) if found else None
            if version is not None and version != SCHEMA_VERSION:
                raise DeployError(
                    f"{self.path} holds deployment state of schema version {version}; "
                    f"this kiln understands version {SCHEMA_VERSION}. Nothing was changed",
                    hint="use the kiln version that wrote it (see 'kiln --version')",
                )
            if version is None:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self.conn.execute(statement)
                self.conn.execute(
                    "INSERT OR REPLACE INTO deploy_meta VALUES ('schema', ?)",
                    (str(SCHEMA_VERSION),),
                )

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE: writers queue up instead of failing half-way."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # fleets -------------------------------------------------------------

    def fleet(self, name: str) -> FleetRecord | None:
        row = self.conn.execute("SELECT * FROM deploy_fleets WHERE fleet=?", (name,)).fetchone()
        if row is None:
            return None
        return FleetRecord(
            fleet=row["fleet"],
            size=row["size"],
            config_size=row["config_size"],
            current_image=row["current_image"],
            previous_image=row["previous_image"],
            warm_image=row["warm_image"],
            warm_ids=tuple(json.loads(row["warm_ids"])),
            warm_until=row["warm_until"],
        )

    def fleets(self) -> list[str]:
        rows = self.conn.execute("SELECT fleet FROM deploy_fleets ORDER BY fleet")
        return [r["fleet"] for r in rows]

    def delete_fleet(self, name: str) -> None:
        """Forget a destroyed fleet; its deployments (the history) stay."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM deploy_fleets WHERE fleet=?", (name,))

    def save_fleet(self, record: FleetRecord, now: float) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO deploy_fleets VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    record.fleet,
                    record.size,
                    record.config_size,
                    record.current_image,
                    record.previous_image,
                    record.warm_image,
                    json.dumps(list(record.warm_ids)),
                    record.warm_until,
                    now,
                ),
            )


def dumps(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))
