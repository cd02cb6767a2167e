"""Image retention: keep the newest N per app and everything in use, collect the rest."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from kiln.deploy.state import StateDb
from kiln.home import Home
from kiln.image.store import ImageRecord, Store, short_id


@dataclass(frozen=True)
class PrunePlan:
    remove: tuple[ImageRecord, ...]
    keep: tuple[ImageRecord, ...]
    in_use: frozenset[str]  # image ids protected whatever their age

    def as_dict(self) -> dict[str, object]:
        return {
            "remove": [r.id for r in self.remove],
            "keep": [r.id for r in self.keep],
            "in_use": sorted(self.in_use),
        }


@dataclass(frozen=True)
class PruneResult:
    plan: PrunePlan
    objects_removed: int
    bytes_freed: int
    dry_run: bool

    def as_dict(self) -> dict[str, object]:
        return {
            **self.plan.as_dict(),
            "objects_removed": self.objects_removed,
            "bytes_freed": self.bytes_freed,
            "dry_run": self.dry_run,
        }


def plan_prune(store: Store, keep: int, in_use: Iterable[str], app: str | None = None) -> PrunePlan:
    """Newest ``keep`` images of each app survive, and so does any image in use."""
    used = frozenset(short_id(ref) if ref.startswith("sha256:") else ref for ref in in_use)
    remove: list[ImageRecord] = []
    kept: list[ImageRecord] = []
    per_app: dict[str, int] = {}
    for record in store.list_images(app):  # newest first
        per_app[record.app] = per_app.get(record.app, 0) + 1
        if record.id in used or per_app[record.app] <= keep:
            kept.append(record)
        else:
            remove.append(record)
    return PrunePlan(tuple(remove), tuple(kept), used)


def prune(
    store: Store,
    plan: PrunePlan,
    *,
    dry_run: bool = False,
    still_in_use: Callable[[], Iterable[str]] | None = None,
) -> PruneResult:
    """Remove the planned images, then every object no remaining image references.

    Runs under the store's exclusive lock: a bake holds the shared one from
    its first object to its manifest, and a launch while it materializes, so
    nothing either is using is collected. ``still_in_use`` is asked again
    under the lock: an image a deployment started using since the plan was
    made is kept.
    """
    with store.collecting():
        if still_in_use is not None:
            plan = _recheck(plan, still_in_use())
        doomed = {r.digest for r in plan.remove}
        live: set[str] = set()
        for record in store.list_images():
            if record.digest not in doomed:
                live.update(f.sha256 for f in record.manifest.files)
        dead = store.objects.all() - live
        freed = sum(store.objects.size(sha) for sha in dead)
        if dry_run:
            return PruneResult(plan, len(dead), freed, True)
        for record in plan.remove:
            store.remove_image(record.digest)
        freed = store.objects.delete(dead)
    return PruneResult(plan, len(dead), freed, False)


def _recheck(plan: PrunePlan, in_use: Iterable[str]) -> PrunePlan:
    used = plan.in_use | {short_id(r) if r.startswith("sha256:") else r for r in in_use}
    keep = tuple(r for r in plan.remove if r.id in used)
    remove = tuple(r for r in plan.remove if r.id not in used)
    return PrunePlan(remove, plan.keep + keep, frozenset(used))


def local_images_in_use(home: Home) -> set[str]:
    """Every image the local provider still needs: running, warm, or a rollback target.

    Asks the agent (starting it if needed: it re-adopts instances that outlived
    it) and the deploy state, so an image is never pruned from under a fleet.
    """
    from kiln.local.client import ensure_agent

    used: set[str] = set()
    if home.state_db.exists():
        db = StateDb(home.state_db)
        try:
            for name in db.fleets():
                record = db.fleet(name)
                if record is not None:
                    used.update(
                        image
                        for image in (
                            record.current_image,
                            record.previous_image,
                            record.warm_image,
                        )
                        if image
                    )
        finally:
            db.close()
    agent = ensure_agent(home)
    fleets: dict[str, Any] = agent.get("/v1/status").get("fleets", {})
    for name, info in fleets.items():
        used.update(info.get("groups", {}))
        described = agent.get(f"/v1/fleets/{quote(name, safe='')}")
        for instance in described.get("instances", []):
            if instance.get("state") not in ("terminated", "failed"):
                used.add(instance["image"])
    return used
