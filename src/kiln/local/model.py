"""What the agent remembers: fleet settings, server groups, instance records.

Everything here is persisted in SQLite (``agent_*`` tables) on every change,
so an agent killed at any moment can re-adopt its instances on restart.
Secret *values* never appear here: only their references.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kiln.config import Health, LoadedConfig
from kiln.provider import InstanceState

LIVE = frozenset({"pending", "running", "healthy", "unhealthy", "draining"})
FINAL = frozenset({"terminated", "failed"})


@dataclass(frozen=True)
class FleetSettings:
    """A fleet's serving settings, taken from kiln.toml at launch time."""

    listen_host: str
    listen_port: int
    balance: str = "least-outstanding"
    health: dict[str, Any] = field(default_factory=dict)
    drain: float = 10.0
    stop_timeout: float = 10.0
    log_max_bytes: int = 10 * 1024 * 1024
    secrets: dict[str, str] = field(default_factory=dict)  # NAME -> 'env:VAR' | 'file:/path'
    max_age: float | None = None  # [fleet] max_age: the agent recycles older instances
    isolate: bool = False  # [provider.local] isolate: one unprivileged uid per instance

    @classmethod
    def from_config(cls, loaded: LoadedConfig) -> FleetSettings:
        cfg = loaded.config
        local = cfg.provider.local
        return cls(
            listen_host=local.host,
            listen_port=local.port,
            balance=local.balance,
            health=cfg.health.model_dump(mode="json"),
            drain=cfg.fleet.drain,
            stop_timeout=local.stop_timeout,
            log_max_bytes=local.log_max_bytes,
            secrets=dict(cfg.secrets),
            max_age=cfg.fleet.max_age,
            isolate=local.isolate,
        )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FleetSettings:
        return cls(**data)

    @property
    def health_check(self) -> Health:
        return Health.model_validate(self.health)

    @property
    def endpoint(self) -> str:
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"http://{host}:{self.listen_port}"


@dataclass
class InstanceRecord:
    id: str
    fleet: str
    image: str
    state: str
    launched_at: float
    in_service: bool = False
    port: int | None = None
    pid: int | None = None
    pid_start: int | None = None  # /proc start time: tells a reused pid apart
    dir: str = ""
    log: str = ""
    times: dict[str, float] = field(default_factory=dict)
    exit_status: int | None = None
    reason: str | None = None
    replaces: str | None = None
    replaced_by: str | None = None
    terminating: bool = False
    ever_healthy: bool = False
    uid: int | None = None  # its own user when the fleet is isolated

    @property
    def live(self) -> bool:
        return self.state in LIVE

    @property
    def address(self) -> str | None:
        return f"127.0.0.1:{self.port}" if self.port else None

    def set_state(self, state: InstanceState | str) -> None:
        self.state = str(state)
        self.times[self.state] = time.time()
        if self.state == "healthy":
            self.ever_healthy = True

    def public(self) -> dict[str, Any]:
        """The API's view: everything but secrets (which are never here)."""
        return asdict(self) | {"address": self.address}


class AgentDB:
    """Write-through persistence for the agent's state."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.executescript(
            """
            CREATE TABLE IF NOT EXISTS agent_fleets (name TEXT PRIMARY KEY, settings TEXT);
            CREATE TABLE IF NOT EXISTS agent_groups (
                fleet TEXT, image TEXT, desired INTEGER, PRIMARY KEY (fleet, image));
            CREATE TABLE IF NOT EXISTS agent_instances (
                id TEXT PRIMARY KEY, fleet TEXT, data TEXT);
            """
        )

    def close(self) -> None:
        self.conn.close()

    def save_fleet(self, name: str, settings: FleetSettings) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO agent_fleets VALUES (?, ?)",
            (name, json.dumps(asdict(settings))),
        )

    def delete_fleet(self, name: str) -> None:
        self.conn.execute("DELETE FROM agent_fleets WHERE name = ?", (name,))

    def fleets(self) -> dict[str, FleetSettings]:
        rows = self.conn.execute("SELECT name, settings FROM agent_fleets").fetchall()
        return {name: FleetSettings.from_json(json.loads(raw)) for name, raw in rows}

    def save_group(self, fleet: str, image: str, desired: int) -> None:
        if desired <= 0:
            self.conn.execute(
                "DELETE FROM agent_groups WHERE fleet = ? AND image = ?", (fleet, image)
            )
        else:
            self.conn.execute(
                "INSERT OR REPLACE INTO agent_groups VALUES (?, ?, ?)", (fleet, image, desired)
            )

    def groups(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for fleet, image, desired in self.conn.execute("SELECT * FROM agent_groups"):
            out.setdefault(fleet, {})[image] = desired
        return out

    def save_instance(self, rec: InstanceRecord) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO agent_instances VALUES (?, ?, ?)",
            (rec.id, rec.fleet, json.dumps(asdict(rec))),
        )

    def delete_instance(self, instance_id: str) -> None:
        self.conn.execute("DELETE FROM agent_instances WHERE id = ?", (instance_id,))

    def instances(self) -> list[InstanceRecord]:
        rows = self.conn.execute("SELECT data FROM agent_instances").fetchall()
        return [InstanceRecord(**json.loads(raw)) for (raw,) in rows]
