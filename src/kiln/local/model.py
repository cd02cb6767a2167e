"""What the agent remembers: fleet settings, server groups, instance records.

Everything here is persisted in SQLite (``agent_*`` tables) on every change,
so an agent killed at any moment can re-adopt its instances on restart.
Secret *values* never appear here: only their references.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import quote

from kiln.config import AcmeSettings, HealthSettings, LoadedConfig
from kiln.local.proxy import Limits
from kiln.local.series import Bucket
from kiln.providers.protocol import InstanceState

LIVE = frozenset({"pending", "materializing", "running", "healthy", "unhealthy", "draining"})
FINAL = frozenset({"terminated", "failed"})
BUSY_TIMEOUT = 5.0  # seconds one attempt waits for a lock before the worker retries
log = logging.getLogger("kiln.agent")


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
    log_retention: float = 900.0  # [provider.local] log_retention: ended instances, then gone
    secrets: dict[str, str] = field(default_factory=dict)  # NAME -> 'env:VAR' | 'file:/path'
    max_age: float | None = None  # [fleet] max_age: the agent recycles older instances
    isolate: bool = False  # [provider.local] isolate: one unprivileged uid per instance
    limits: dict[str, float] = field(default_factory=dict)  # [provider.local] *_timeout
    trusted_proxies: list[str] = field(default_factory=list)  # [provider.local]
    hosts: tuple[str, ...] = ()  # [provider.local] hosts: its Host names on a shared listener
    tls_cert: str | None = None  # [provider.local] tls_cert, made absolute
    tls_key: str | None = None
    # [provider.local] acme: directory, email, http [host, port], ca_bundle (absolute)
    acme: dict[str, Any] | None = None
    # [fleet] sticky = "cookie": {"max_age": seconds or None}; None when off
    sticky: dict[str, Any] | None = None
    ui_listen: str | None = None  # [provider.local] ui_listen: the page, on loopback only
    app: str | None = None  # [app] name: the images the page lists (None: the fleet's name)
    max_image_age: float | None = None  # [fleet] max_image_age: the page's warning

    def __post_init__(self) -> None:
        if self.ui_listen is not None:  # the agent refuses what kiln.toml would have
            from kiln.ui.loopback import parse_loopback

            parse_loopback(self.ui_listen, "ui_listen")

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
            log_retention=local.log_retention,
            secrets=dict(cfg.secrets),
            max_age=cfg.fleet.max_age,
            isolate=local.isolate,
            limits={f.name: getattr(local, f.name) for f in fields(Limits)},
            trusted_proxies=list(local.trusted_proxies),
            hosts=tuple(local.hosts),
            tls_cert=str((loaded.root / local.tls_cert).absolute()) if local.tls_cert else None,
            tls_key=str((loaded.root / local.tls_key).absolute()) if local.tls_key else None,
            acme=_acme(loaded.root, local.acme) if local.acme else None,
            sticky=_sticky(cfg.fleet.sticky, cfg.fleet.sticky_duration),
            ui_listen=local.ui_listen,
            app=cfg.app.name,
            max_image_age=cfg.fleet.max_image_age,
        )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FleetSettings:
        return cls(**{**data, "hosts": tuple(data.get("hosts", ()))})

    @property
    def health_check(self) -> HealthSettings:
        return HealthSettings.model_validate(self.health)

    @property
    def address(self) -> tuple[str, int]:
        """Where its listener is; fleets with the same one share it, routed by Host."""
        return self.listen_host, self.listen_port

    @property
    def secure(self) -> bool:
        """Its listener terminates TLS, with certificate files or from ACME."""
        return bool(self.tls_cert or self.acme)

    @property
    def endpoint(self) -> str:
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        scheme = "https" if self.secure else "http"
        return f"{scheme}://{host}:{self.listen_port}"


def _sticky(mode: str | None, duration: float | None) -> dict[str, Any] | None:
    """[fleet] sticky as the balancer gets it (kiln.local.affinity)."""
    if mode != "cookie":
        return None
    return {"max_age": None if duration is None else round(duration)}


def _acme(root: Path, acme: AcmeSettings) -> dict[str, Any]:
    """[provider.local] acme as the agent gets it: paths made absolute."""
    bundle = str((root / acme.ca_bundle).absolute()) if acme.ca_bundle else None
    return {
        "directory": acme.directory,
        "email": acme.email,
        "http": list(acme.http_address),
        "ca_bundle": bundle,
    }


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
    launch: dict[str, str] = field(default_factory=dict)  # its launch print (launchprint.py)
    warning: str | None = None  # said once it is healthy: it serves, but not as it should

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
    """Write-through persistence for the agent's state, on a thread of its own.

    The connection lives on one worker thread and is used from nowhere else.
    Writes are queued and applied in order, so a slow disk or a reader holding
    the file locked delays the database, never the agent's event loop (the load
    balancer of every fleet runs on it). ``flush`` waits for what is queued:
    call it where a write must be durable before acting (before a spawn).
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kiln-agent-db")
        self._conn: sqlite3.Connection | None = None
        self._pool.submit(self._open, path).result()

    def _open(self, path: Path) -> None:
        conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(
            """
            CREATE TABLE IF NOT EXISTS agent_fleets (name TEXT PRIMARY KEY, settings TEXT);
            CREATE TABLE IF NOT EXISTS agent_groups (
                fleet TEXT, image TEXT, desired INTEGER, PRIMARY KEY (fleet, image));
            CREATE TABLE IF NOT EXISTS agent_instances (
                id TEXT PRIMARY KEY, fleet TEXT, data TEXT);
            CREATE TABLE IF NOT EXISTS agent_series (
                fleet TEXT, at REAL, seconds REAL, requests INTEGER, errors INTEGER);
            CREATE INDEX IF NOT EXISTS agent_series_at ON agent_series (fleet, at);
            """
        )
        self._conn = conn

    def close(self) -> None:
        """Apply everything queued, then close."""
        self._pool.submit(self._close).result()
        self._pool.shutdown(wait=True)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # the worker -------------------------------------------------------------

    def _write(self, sql: str, args: tuple[Any, ...]) -> None:
        self._pool.submit(self._apply, sql, args).add_done_callback(_report)

    def _apply(self, sql: str, args: tuple[Any, ...]) -> None:
        """Runs on the worker: a locked database is waited out, never dropped."""
        assert self._conn is not None
        delay = 0.05
        while True:
            try:
                self._conn.execute(sql, args)
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                log.warning("agent database busy (%s); retrying", exc)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _read(self, sql: str) -> list[Any]:
        def fetch() -> list[Any]:
            assert self._conn is not None
            return self._conn.execute(sql).fetchall()

        return self._pool.submit(fetch).result()

    def flush(self) -> Future[None]:
        """Done once every write queued before it is applied."""
        return self._pool.submit(lambda: None)

    # writes (queued) ---------------------------------------------------------

    def save_fleet(self, name: str, settings: FleetSettings) -> None:
        data = json.dumps(asdict(settings))
        self._write("INSERT OR REPLACE INTO agent_fleets VALUES (?, ?)", (name, data))
        self._pool.submit(self._save_copy, name, data).add_done_callback(_report)

    def delete_fleet(self, name: str) -> None:
        self._write("DELETE FROM agent_fleets WHERE name = ?", (name,))
        self._pool.submit(self._copy(name).unlink, missing_ok=True).add_done_callback(_report)

    def _copy(self, name: str) -> Path:
        """A fleet's settings, also kept beside the database: they survive losing it."""
        return self.path.parent / "fleets" / f"{quote(name, safe='')}.json"

    def _save_copy(self, name: str, data: str) -> None:
        path = self._copy(name)
        if path.exists() and path.read_text() == data:
            return
        path.parent.mkdir(mode=0o700, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(data)
        tmp.replace(path)

    def settings_copy(self, name: str) -> FleetSettings | None:
        """The copy of a fleet's settings (blocking: at start), None if there is none."""
        try:
            return FleetSettings.from_json(json.loads(self._copy(name).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def save_group(self, fleet: str, image: str, desired: int) -> None:
        if desired <= 0:
            self._write("DELETE FROM agent_groups WHERE fleet = ? AND image = ?", (fleet, image))
        else:
            sql = "INSERT OR REPLACE INTO agent_groups VALUES (?, ?, ?)"
            self._write(sql, (fleet, image, desired))

    def save_instance(self, rec: InstanceRecord) -> None:
        self._write(
            "INSERT OR REPLACE INTO agent_instances VALUES (?, ?, ?)",
            (rec.id, rec.fleet, json.dumps(asdict(rec))),
        )

    def delete_instance(self, instance_id: str) -> None:
        self._write("DELETE FROM agent_instances WHERE id = ?", (instance_id,))

    def add_bucket(self, fleet: str, bucket: Bucket) -> None:
        row = (fleet, bucket.at, bucket.seconds, bucket.requests, bucket.errors)
        self._write("INSERT INTO agent_series VALUES (?, ?, ?, ?, ?)", row)

    def forget_series(self, before: float) -> None:
        self._write("DELETE FROM agent_series WHERE at < ?", (before,))

    async def series(self, fleet: str, since: float) -> list[Bucket]:
        """A fleet's traffic buckets since ``since``, oldest first (read on the db thread)."""

        def fetch() -> list[Bucket]:
            assert self._conn is not None
            rows = self._conn.execute(
                "SELECT at, seconds, requests, errors FROM agent_series "
                "WHERE fleet = ? AND at >= ? ORDER BY at",
                (fleet, since),
            )
            return [Bucket(*row) for row in rows]

        return await asyncio.wrap_future(self._pool.submit(fetch))

    # reads (blocking: at start, before the agent serves) ---------------------

    def fleets(self) -> dict[str, FleetSettings]:
        rows = self._read("SELECT name, settings FROM agent_fleets")
        return {name: FleetSettings.from_json(json.loads(raw)) for name, raw in rows}

    def groups(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for fleet, image, desired in self._read("SELECT * FROM agent_groups"):
            out.setdefault(fleet, {})[image] = desired
        return out

    def instances(self) -> list[InstanceRecord]:
        rows = self._read("SELECT data FROM agent_instances")
        return [InstanceRecord(**json.loads(raw)) for (raw,) in rows]


def _report(done: Future[None]) -> None:
    exc = done.exception()
    if exc is not None:
        log.error("agent database write failed", exc_info=exc)
