"""One local fleet as ``kiln status``, ``kiln images`` and the page read it.

:class:`~kiln.local.platform.LocalPlatform` reads through it with what
kiln.toml says; the agent's own page (:mod:`kiln.local.uipages`) reads through
it with what the agent remembers of the fleet, so both show one answer from
one source: the agent's API, the state database and the image store.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Protocol

from kiln.durations import format_duration, format_size, format_time
from kiln.errors import KilnError
from kiln.home import Home
from kiln.image.store import Store, short_code
from kiln.platform import Report, image_ages

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from kiln.providers.protocol import FleetState, Instance, InstanceStats

    Traffic = Callable[[str, float], list[list[float]]]


class Reads(Protocol):
    """What the page reads of a fleet's instances: the agent's answers (AgentReads),
    or whichever provider kiln.providers.registry opens (a fake one in tests)."""

    @property
    def name(self) -> str: ...

    def describe(self, fleet: str) -> FleetState: ...

    def stats(self, fleet: str) -> Mapping[str, InstanceStats]: ...


class FleetPage:
    """The reads of one fleet; ``size`` None means the size its last deployment recorded."""

    name = "local"

    def __init__(
        self,
        home: Home,
        fleet: str,
        reads: Reads,
        *,
        traffic: Traffic | None = None,
        size: int | None = None,
        max_image_age: float | None = None,
        acme: bool = False,
    ) -> None:
        self.home = home
        self.fleet = fleet
        self.reads = reads
        self._traffic = traffic
        self.size = size
        self.max_image_age = max_image_age
        self.acme = acme

    def status(self) -> dict[str, Any]:
        from kiln.deploy import StateDb
        from kiln.deploy.status import fleet_status

        db = StateDb(self.home.state_db)
        size = self.size
        if size is None:
            record = db.fleet(self.fleet)
            size = record.config_size if record else 0
        now = time.time()
        data = fleet_status(
            self.reads, db, self.fleet, size, now, annotate=lambda i: {"stale": stale(i)}
        )
        if self.acme:
            from kiln.local.acme import CertDir

            data["certificate"] = CertDir(self.home, self.fleet).status()
        age = None
        if data.get("current_image"):
            try:
                age = max(0.0, now - Store(self.home).get(data["current_image"]).created)
            except KilnError:
                age = None  # pruned or unreadable: no age to show
        return {**data, **image_ages(age, None, self.max_image_age)}

    def timeline(self, limit: int) -> list[dict[str, Any]]:
        from kiln.deploy import StateDb
        from kiln.deploy.journal import Journal
        from kiln.ui.timeline import deployment_timeline

        journal = Journal(StateDb(self.home.state_db))
        return [deployment_timeline(journal, d) for d in journal.history(self.fleet, limit)]

    def counters(self) -> dict[str, tuple[int, int]]:
        stats = self.reads.stats(self.fleet)
        return {i: (s.requests, s.errors) for i, s in stats.items()}

    def traffic(self, since: float) -> list[list[float]] | None:
        return None if self._traffic is None else self._traffic(self.fleet, since)

    def images(self, app: str | None) -> Report:
        return image_report(self.home, app)


def image_report(home: Home, app: str | None) -> Report:
    """``kiln images``: the store's images, newest first."""
    records = Store(home).list_images(app)
    now = time.time()
    rows = []
    for r in records:
        commit = (r.meta.get("commit") or "-")[:10] + ("+dirty" if r.meta.get("dirty") else "")
        rows.append(
            (
                r.id,
                short_code(r.manifest.code_digest),
                r.app,
                format_time(r.created),
                format_duration(max(0.0, now - r.created)),
                format_size(r.manifest.size),
                str(len(r.manifest.files)),
                commit,
            )
        )
    return Report(
        [{**r.summary(), "age": round(max(0.0, now - r.created), 1)} for r in records],
        columns=("IMAGE", "CODE", "APP", "CREATED", "AGE", "SIZE", "FILES", "COMMIT"),
        rows=tuple(rows),
        empty="no images yet: run 'kiln bake' in your app's directory",
    )


def stale(instance: Instance) -> list[str]:
    """Host files a live instance's process maps that were replaced since it started."""
    from kiln.local.stale import replaced_files

    pid = instance.details.get("pid")
    return replaced_files(int(pid)) if pid and instance.live else []
