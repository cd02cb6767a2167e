"""The local provider: this host's agent, seen through the Provider interface."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import quote

from kiln.config import LoadedConfig
from kiln.errors import InstanceNotFound
from kiln.home import Home
from kiln.image.store import Store
from kiln.local import secret_refs
from kiln.local.client import AgentClient, ensure_agent
from kiln.local.launchprint import launch_print, load_key
from kiln.local.model import FleetSettings
from kiln.local.oneoff import run_captured, scratch_instance
from kiln.local.procs import log_tail
from kiln.providers.protocol import (
    CommandResult,
    FleetState,
    Instance,
    InstanceState,
    InstanceStats,
)

_DETAILS = ("pid", "port", "dir", "log", "times", "reason", "replaces", "warning")


class AgentReads:
    """What the agent says of its fleets, read-only: the provider's reads, and what the
    agent's own page (kiln.local.uipages) reads of it, so both see one answer."""

    name = "local"

    def __init__(self, home: Home, client: AgentClient | None = None) -> None:
        self.home = home
        self._client = client

    @property
    def agent(self) -> AgentClient:
        if self._client is None:
            self._client = ensure_agent(self.home)
        return self._client

    def _path(self, fleet: str, action: str = "") -> str:
        return f"/v1/fleets/{quote(fleet, safe='')}{action}"

    def describe(self, fleet: str) -> FleetState:
        data = self.agent.get(self._path(fleet))
        return FleetState(
            name=fleet,
            endpoint=data["endpoint"],
            groups=data["groups"],
            instances=tuple(_instance(raw) for raw in data["instances"]),
        )

    def traffic(self, fleet: str, since: float) -> list[list[float]]:
        """What the agent recorded of the fleet's traffic (kiln.local.series)."""
        rows: list[list[float]] = self.agent.get(self._path(fleet, f"/series?since={since:.3f}"))
        return rows

    def stats(self, fleet: str) -> Mapping[str, InstanceStats]:
        data = self.agent.get(self._path(fleet, "/stats"))
        return {
            i: InstanceStats(
                requests=int(c["requests"]),
                errors=int(c["errors_5xx"]) + int(c["failures"]),
                p99_seconds=c["p99_seconds"],
            )
            for i, c in data.items()
        }


class LocalProvider(AgentReads):
    """Fleets run by the agent on this host; it is started on first use."""

    def __init__(self, home: Home, loaded: LoadedConfig) -> None:
        super().__init__(home)
        self.loaded = loaded
        self.settings = FleetSettings.from_config(loaded)
        self.store = Store(home)

    def launch(self, fleet: str, image: str, count: int, *, in_service: bool = True) -> list[str]:
        record = self.store.get(image)  # a clear ImageNotFound before anything starts
        if count < 1:
            return []
        body = {
            "image": record.id,
            "count": count,
            "in_service": in_service,
            "settings": asdict(self.settings),
            "secrets": secret_refs.resolve(self.settings.secrets, os.environ),
        }
        ids: list[str] = self.agent.post(self._path(fleet, "/launch"), body)["ids"]
        return ids

    def launch_print(self) -> Mapping[str, str]:
        secrets = secret_refs.resolve(self.settings.secrets, os.environ)
        return launch_print(load_key(self.home), self.settings, secrets)

    def apply_settings(self, fleet: str) -> list[str]:
        body = {
            "settings": asdict(self.settings),
            "secrets": secret_refs.resolve(self.settings.secrets, os.environ),
        }
        changes: list[str] = self.agent.post(self._path(fleet, "/settings"), body)["changes"]
        return changes

    def set_in_service(self, fleet: str, add: Sequence[str], remove: Sequence[str]) -> None:
        body = {"add": list(add), "remove": list(remove)}
        self.agent.post(self._path(fleet, "/in-service"), body)

    def terminate(self, fleet: str, ids: Sequence[str]) -> None:
        if ids:
            self.agent.post(self._path(fleet, "/terminate"), {"ids": list(ids)})

    def release(self, fleet: str, image: str) -> CommandResult | None:
        """The image's release command, run here in a fresh directory of it."""
        record = self.store.get(image)
        if not record.manifest.release:
            return None
        secrets = secret_refs.resolve(self.settings.secrets, os.environ)
        with scratch_instance(self.home, record.id, secrets, "release") as (where, manifest, env):
            timeout = self.loaded.config.fleet.progress_deadline
            return run_captured(manifest.release, where, env, timeout)

    def image_exists(self, image: str) -> bool:
        return self.store.exists(image)

    def log_tail(self, instance: str, lines: int = 20) -> str:
        return log_tail(instance_log(self.home, instance), lines)


def instance_log(home: Home, instance: str) -> Path:
    """The log of an instance, by id or unique id prefix."""
    logs = home.agent_dir / "logs"
    exact = logs / f"{instance}.log"
    if exact.exists():
        return exact
    matches = sorted(logs.glob(f"{instance}*.log")) if instance else []
    if len(matches) != 1:
        problem = "no instance" if not matches else f"{len(matches)} instances match"
        raise InstanceNotFound(f"{problem} {instance!r} has a log", hint="see 'kiln status'")
    return matches[0]


def _instance(raw: dict[str, Any]) -> Instance:
    return Instance(
        id=raw["id"],
        fleet=raw["fleet"],
        image=raw["image"],
        state=InstanceState(raw["state"]),
        launched_at=float(raw["launched_at"]),
        address=raw.get("address"),
        in_service=bool(raw["in_service"]),
        exit_status=raw.get("exit_status"),
        terminating=bool(raw.get("terminating")),
        replaced_by=raw.get("replaced_by"),
        details={k: raw.get(k) for k in _DETAILS},
        launch={str(k): str(v) for k, v in (raw.get("launch") or {}).items()},
    )
