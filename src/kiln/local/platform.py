"""This host as a platform: the image store in KILN_HOME, the agent's fleets."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from kiln.durations import format_duration, format_size
from kiln.errors import ConfigError, FleetNotFound, ImageNotFound, ProviderError
from kiln.image.store import Store
from kiln.platform import (
    DRIFT_FOUND,
    Capability,
    Narrate,
    OnEvent,
    Platform,
    PlatformBase,
    Promotion,
    Report,
)

if TYPE_CHECKING:
    from kiln.deploy import Engine
    from kiln.image.drift import InstanceDrift
    from kiln.image.result import BakeProgress, BakeResult
    from kiln.local.pagesource import FleetPage
    from kiln.providers.protocol import Provider


class LocalPlatform(PlatformBase):
    name = "local"
    # an image here holds only the app's files: the host's packages are the host's
    capabilities = frozenset(Capability) - {Capability.PACKAGES}

    def provider(self) -> Provider:
        """The agent's client (aiohttp), from the provider registry, loaded only now."""
        from kiln.providers.registry import open_provider

        return open_provider(self.name, self.home, self.loaded)

    def engine(self, on_event: OnEvent | None = None) -> Engine:
        from kiln.deploy import Engine, Settings, StateDb

        loaded = self.loaded
        return Engine(
            self.provider(),
            StateDb(self.home.state_db),
            Settings.from_config(loaded.config),
            loaded.config.fleet_name,
            on_event=on_event,
        )

    def deployer(
        self, on_event: OnEvent | None = None, *, allow_unverified: bool = False
    ) -> Engine:
        """The engine (a local image has no boot test to pass), once the fleet's listen
        address is known not to be another program's."""
        from kiln.local.listening import refuse_taken
        from kiln.pids import pid_alive, read_pid_file

        pid = read_pid_file(self.home.balancer_pid_file)
        if pid is None or not pid_alive(pid):  # else ours may hold it: the agent decides
            local = self.loaded.config.provider.local
            refuse_taken(self.loaded.config.fleet_name, local.host, local.port)
        return self.engine(on_event)

    def bake(
        self, progress: BakeProgress, narrate: Narrate, *, boot_test: bool | None = None
    ) -> Report:
        if boot_test:
            raise ConfigError(
                "--boot-test boots an AMI from the image: it needs --provider aws",
                hint="a local deploy starts the image and health-checks it anyway",
            )
        result = self._unchanged()
        if result is None:
            from kiln.image.bake import bake

            result = bake(self.loaded, self.home, progress)
        how = "reused, nothing changed" if result.reused else f"{result.seconds:.2f}s"
        headline = (
            f"{result.image}  {result.code}  {result.app}  {result.files} files, "
            f"{format_size(result.bytes)}  ({how})"
        )
        return Report(result.as_dict(), lines=(headline,))

    def _unchanged(self) -> BakeResult | None:
        """The last bake's image when nothing it was made from changed (kiln.image.quick)."""
        if self.source is None:
            return None
        from kiln.image import quick
        from kiln.image.result import BakeResult

        started = time.monotonic()
        found = quick.lookup(self.home, *self.source())
        if found is None:
            return None
        return BakeResult(
            **{**found, "reused": True, "seconds": round(time.monotonic() - started, 3)}
        )

    def images(self, app: str | None) -> Report:
        from kiln.local.pagesource import image_report

        return image_report(self.home, app)

    def code_of(self, image: str) -> str | None:
        try:
            return Store(self.home).get(image).manifest.code_digest
        except ImageNotFound:
            return None

    def promote_image(self, image: str, source: Platform, narrate: Narrate) -> str:
        """The same files, build output and run line; only [env] is this environment's."""
        store = Store(self.home)
        record = store.get(image)
        manifest = replace(record.manifest, env=dict(self.loaded.config.env))
        meta = {**record.meta, "created": time.time(), "promoted_from": record.id}
        return store.add_image(manifest, meta).id

    def plan_promotion(self, image: str, source: Platform) -> Promotion:
        """Records the promoted manifest, as ``promote_image`` does: only a manifest in
        the content-addressed store (its files are the source's), which the deployment
        plan needs; nothing is deployed."""
        made = self.promote_image(image, source, lambda _line: None)
        text = f"recorded {made} ({image}'s files with this environment's [env]) in the image store"
        return Promotion(made, ({"action": "record", "text": text, "image": made},))

    def prune(self, keep: int, app: str | None, *, dry_run: bool) -> Report:
        from kiln.image.prune import local_images_in_use, plan_prune, prune

        home = self.home
        store = Store(home)
        plan = plan_prune(store, keep, local_images_in_use(home), app)
        result = prune(store, plan, dry_run=dry_run, still_in_use=lambda: local_images_in_use(home))
        if not plan.remove and not result.objects_removed:
            return Report(
                result.as_dict(), lines=(f"nothing to prune: {len(plan.keep)} image(s) kept",)
            )
        rows = [(r.id, r.app, format_size(r.manifest.size), "remove") for r in plan.remove]
        for r in plan.keep:
            # running, warm, or a fleet's rollback target: "in use" misled an operator
            why = "running, warm or a rollback target" if r.id in plan.in_use else f"newest {keep}"
            rows.append((r.id, r.app, format_size(r.manifest.size), f"keep ({why})"))
        verb = "would free" if dry_run else "freed"
        footer = (
            f"{verb} {format_size(result.bytes_freed)} in {result.objects_removed} object(s)"
            + (" (dry run: nothing removed)" if dry_run else "")
        )
        return Report(
            result.as_dict(),
            columns=("IMAGE", "APP", "SIZE", "ACTION"),
            rows=tuple(rows),
            footer=(footer,),
        )

    def run(
        self,
        image: str | None,
        argv: list[str],
        *,
        env: Mapping[str, str] | None = None,
        narrate: Narrate | None = None,
    ) -> int:
        """On this terminal, as this user, with the image's env and the app's secrets."""
        from kiln.deploy import StateDb
        from kiln.local.oneoff import run_attached, scratch_instance
        from kiln.local.secret_refs import resolve

        config = self.loaded.config
        if image is None:
            rec = StateDb(self.home.state_db).fleet(config.fleet_name)
            if rec is None or rec.current_image is None:
                raise FleetNotFound(
                    f"fleet {config.fleet_name} has not been deployed yet: no current image",
                    hint="deploy it first, or name an image: kiln run --image ID -- CMD",
                )
            image = rec.current_image
        record = Store(self.home).get(image)
        if record.app != config.app.name:
            raise ConfigError(
                f"image {record.id} was baked for app {record.app}, not {config.app.name}",
                hint="run it from that app's directory",
            )
        secrets = resolve(config.secrets, os.environ)
        with scratch_instance(self.home, record.id, secrets, "run") as (where, _manifest, ours):
            return run_attached(argv, where, ours | dict(env or {}))

    def page(self) -> FleetPage:
        """This fleet as status and the page read it, with what kiln.toml says."""
        from kiln.deploy import Settings
        from kiln.local.pagesource import FleetPage
        from kiln.local.provider import LocalProvider

        config = self.loaded.config
        return FleetPage(
            self.home,
            config.fleet_name,
            self.provider(),  # the registry's, like every other command's reads
            traffic=LocalProvider(self.home, self.loaded).traffic,
            size=Settings.from_config(config).size,
            max_image_age=config.fleet.max_image_age,
            acme=config.provider.local.acme is not None,
        )

    def status(self) -> dict[str, Any]:
        return self.page().status()

    def packages(self, ref: str, match: str | None) -> Report:
        self.require(Capability.PACKAGES, "kiln image packages")
        raise AssertionError("unreachable: PACKAGES is not a local capability")

    def destroy(
        self, *, reason: str | None, wait: float | None, on_event: OnEvent | None
    ) -> Report:
        result = self.engine(on_event).destroy(reason=reason, wait=wait)
        return Report(result.to_json(), result=result)

    def refresh(
        self, *, reason: str | None, wait: float | None, on_event: OnEvent | None
    ) -> Report:
        from kiln.deploy.journal import DeploymentKind
        from kiln.local.pagesource import stale as replaced

        fleet = self.provider().describe(self.loaded.config.fleet_name)
        stale = {i.id: files for i in fleet.live() if (files := replaced(i))}
        if not stale:
            line = f"nothing to refresh: no instance of {fleet.name} runs a replaced host file"
            return Report({"fleet": fleet.name, "stale": {}, "replaced": None}, lines=(line,))
        lines = tuple(f"{i} runs replaced {', '.join(files[:3])}" for i, files in stale.items())
        result = self.engine(on_event).replace_instances(
            sorted(stale),
            kind=DeploymentKind.REFRESH,
            why="runs replaced host files",
            reason=reason,
            wait=wait,
        )
        return Report(result.to_json(), lines=lines, result=result)

    def history(self, limit: int, *, all_fleets: bool) -> list[dict[str, Any]]:
        fleet = None
        if not all_fleets:
            try:
                fleet = self.loaded.config.fleet_name
            except ConfigError:
                fleet = None
        from kiln.deploy import StateDb
        from kiln.deploy.journal import Journal

        db = StateDb(self.home.state_db)
        return [e.to_json() for e in Journal(db).history(fleet, limit)]

    def timeline(self, limit: int) -> list[dict[str, Any]]:
        return self.page().timeline(limit)

    def counters(self) -> dict[str, tuple[int, int]]:
        return self.page().counters()

    def traffic(self, since: float) -> list[list[float]] | None:
        return self.page().traffic(since)

    def served_page(self) -> str | None:
        """The agent's page on [provider.local] ui_listen; it opens it at the next deploy."""
        listen = self.loaded.config.provider.local.ui_listen
        if listen is None:
            return None
        from kiln.local.client import ensure_agent
        from kiln.ui.loopback import origin, parse_loopback

        fleet = self.loaded.config.fleet_name
        where = ensure_agent(self.home).get("/v1/ui")["listening"]
        served = where.get(origin(*parse_loopback(listen, "ui_listen")))
        if served is not None and fleet in served["urls"]:
            url: str = served["urls"][fleet]
            return url
        if served is not None and fleet in served["fleets"]:
            raise ProviderError(
                f"the agent cannot serve fleet {fleet}'s page: {served['error']}",
                hint="free that port or pick another ui_listen, then 'kiln deploy'",
            )
        raise ProviderError(
            f"the agent does not serve fleet {fleet}'s page on {listen} yet",
            hint="[provider.local] ui_listen takes effect at the fleet's next 'kiln deploy'",
        )

    def drift(self, *, replace: bool, reason: str | None, on_event: OnEvent | None) -> Report:
        from kiln.deploy.journal import DeploymentKind
        from kiln.image.drift import fleet_drift

        loaded = self.loaded
        fleet = self.provider().describe(loaded.config.fleet_name)
        report = fleet_drift(Store(self.home), fleet, loaded.config.app.writable)
        drifted = [d for d in report if d.drifted]
        result = None
        # A warm standby is out of the balancer: replacing it in place would put
        # its (older) image back into service. It is reported, never replaced.
        serving = {i.id for i in fleet.live() if i.in_service}
        replaceable = [d.instance for d in drifted if d.instance in serving]
        if replace and replaceable:
            result = self.engine(on_event).replace_instances(
                replaceable, kind=DeploymentKind.DRIFT, why="drifted", reason=reason
            )
        warm = [d.instance for d in drifted if d.instance not in serving]
        data = {
            "fleet": fleet.name,
            "drifted": len(drifted),
            "instances": [d.as_dict() for d in report],
            "replaced": result.to_json() if result else None,
        }
        code = DRIFT_FOUND if (drifted and result is None) or (replace and warm) else 0
        lines = _drift_lines(report)
        if replace and warm:
            lines += tuple(
                f"{i} is a warm standby (out of service): not replaced; "
                "it goes when the standby expires"
                for i in warm
            )
        return Report(data, lines=lines, exit_code=code, result=result)

    def recycle(
        self,
        max_age: float,
        *,
        dry_run: bool,
        reason: str | None,
        wait: float | None,
        on_event: OnEvent | None,
    ) -> Report:
        from kiln.deploy.journal import DeploymentKind

        fleet = self.provider().describe(self.loaded.config.fleet_name)
        now = time.time()
        old = fleet.older_than(max_age, now)
        ids = [i.id for i in old]
        if dry_run or not ids:
            data = {"fleet": fleet.name, "max_age": max_age, "due": ids, "dry_run": dry_run}
            if not ids:
                return Report(
                    data,
                    lines=(
                        f"no instance of {fleet.name} is older than {format_duration(max_age)}",
                    ),
                )
            return Report(
                data,
                lines=tuple(
                    f"would replace {i.id} ({i.image}), {format_duration(now - i.launched_at)} old"
                    for i in old
                ),
            )
        result = self.engine(on_event).replace_instances(
            ids,
            kind=DeploymentKind.RECYCLE,
            why=f"older than {format_duration(max_age)}",
            reason=reason,
            wait=wait,
        )
        return Report(result.to_json(), result=result)


def _drift_lines(report: list[InstanceDrift]) -> tuple[str, ...]:
    if not report:
        return ("no running instances to check",)
    lines: list[str] = []
    for item in report:
        if not item.drifted:
            lines.append(f"clean    {item.instance}  {item.image}")
            continue
        lines.append(f"drifted  {item.instance}  {item.image}")
        if item.error:
            lines.append(f"           {item.error}")
        lines.extend(f"           {c.kind:<9} {c.path}" for c in item.changes[:20])
        if len(item.changes) > 20:
            lines.append(f"           ... and {len(item.changes) - 20} more")
    return tuple(lines) + _writable_hint(report)


def _writable_hint(report: list[InstanceDrift]) -> tuple[str, ...]:
    """Files only added (a SQLite file, uploads): likelier the app's own writes than tampering.

    Named as the `writable` patterns that would cover them, so that a reader
    does not `--replace` instances for what the app does by design.
    """
    added = sorted({c.path for d in report for c in d.changes if c.kind == "added"})
    if not added:
        return ()
    patterns = sorted({p.split("/", 1)[0] + ("/" if "/" in p else "") for p in added})
    shown = ", ".join(f'"{p}"' for p in patterns[:6]) + (", ..." if len(patterns) > 6 else "")
    return (
        f"note: files were added; if the app writes them at run time, list them in "
        f"[app] writable = [{shown}] (drift ignores those)",
    )
