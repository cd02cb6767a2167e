"""Fleet operations and the self-healing loop of the agent.

A fleet is a set of per-image server groups with desired counts. Launching
raises a group's count; the reconcile loop replaces any instance that died
or went unhealthy, from the same image, so each group keeps its count. A
replacement inherits its predecessor's load-balancer membership and takes
traffic only once healthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kiln.errors import InstanceNotFound, KilnError, ProviderError
from kiln.local import logtimes, procs, recovery, recycler, series, uids
from kiln.local.lifecycle import FleetRuntime, Lifecycle
from kiln.local.model import FleetSettings, InstanceRecord
from kiln.local.routes import Routes, claim_error, tls_mismatch
from kiln.local.secret_refs import pick
from kiln.providers.protocol import InstanceState

log = logging.getLogger("kiln.agent")
TICK = 0.2  # seconds between two looks at the processes
KEEP_FINISHED = 900.0  # ended instances of a fleet the agent no longer knows stay this long
MAX_BACKOFF = 30.0
KEEP_TREES = 3600.0  # an image's shared tree outlives its last instance this long (rollbacks)
CORRUPT_RECHECK = 5.0  # an image with quarantined objects: a cheap look, no launch


class Supervisor(Lifecycle):
    # fleets ---------------------------------------------------------------

    async def ensure_fleet(
        self, name: str, settings: FleetSettings, secrets: Mapping[str, str]
    ) -> FleetRuntime:
        """The fleet, created and listening; follows changed settings."""
        self._check_claims(name, settings)  # refused before a certificate is ordered
        await self.certs.ensure(name, settings)  # an ACME certificate, before it listens
        async with self._listening:  # two first launches must not both bind
            return (await self._ensure_fleet(name, settings, secrets))[0]

    async def apply_settings(
        self, name: str, settings: FleetSettings, secrets: Mapping[str, str]
    ) -> list[str]:
        """Follow changed settings of a fleet that exists; what changed, in words."""
        secrets = pick(settings.secrets, secrets)
        if name not in self.fleets:
            return []
        await self.certs.ensure(name, settings)
        async with self._listening:
            if name not in self.fleets:
                return []
            return (await self._ensure_fleet(name, settings, secrets))[1]

    async def _ensure_fleet(
        self, name: str, settings: FleetSettings, secrets: Mapping[str, str]
    ) -> tuple[FleetRuntime, list[str]]:
        self._check_claims(name, settings)
        fleet = self.fleets.get(name)
        changes: list[str] = []
        if fleet is None:
            fleet = self.fleets[name] = FleetRuntime(name, settings)
            try:
                await self._serving(fleet)
            except KilnError:
                del self.fleets[name]
                with contextlib.suppress(KilnError):
                    await self.lb.flush()
                raise
            log.info("fleet %s serves %s", name, settings.endpoint)
        elif fleet.idle:
            await self._wake(fleet, settings)
        elif settings != fleet.settings:
            changes = await self._follow(fleet, settings)
        fleet.secrets = dict(secrets)  # the latest values: what replacements get
        self.db.save_fleet(name, fleet.settings)
        return fleet, changes

    async def _wake(self, fleet: FleetRuntime, settings: FleetSettings) -> None:
        """An empty fleet launches again: listen (with the latest settings) again."""
        old, fleet.settings, fleet.idle = fleet.settings, settings, False
        try:
            await self._serving(fleet)
        except KilnError:
            fleet.settings, fleet.idle = old, True
            with contextlib.suppress(KilnError):
                await self.lb.flush()
            raise
        log.info("fleet %s serves %s again", fleet.name, settings.endpoint)

    async def _follow(self, fleet: FleetRuntime, settings: FleetSettings) -> list[str]:
        """Apply new settings to a running fleet; a listener that cannot move changes nothing.

        Moving binds the new address first and closes the old one after, so no
        request is refused; connections already open on the old one finish.
        """
        old, fleet.settings = fleet.settings, settings
        try:
            await self._serving(fleet)  # the balancer binds the new address, then closes the old
        except KilnError as exc:
            fleet.settings = old  # the old listener still serves
            with contextlib.suppress(KilnError):
                await self.lb.flush()
            raise ProviderError(
                f"{exc.message}; fleet {fleet.name} still listens on {old.endpoint} "
                "and no setting was changed",
                hint=exc.hint,
            ) from exc
        changes = []
        if (old.listen_host, old.listen_port) != (settings.listen_host, settings.listen_port):
            changes.append(
                f"fleet {fleet.name} now listens on {settings.endpoint} (was {old.endpoint})"
            )
        if old.balance != settings.balance:
            changes.append(f"fleet {fleet.name} balances by {settings.balance} (was {old.balance})")
        if old.sticky != settings.sticky:
            now = "sticky by cookie" if settings.sticky else "not sticky"
            changes.append(f"fleet {fleet.name} is {now} from now on")
        if old.health != settings.health:
            changes.append(
                "[health] changed: instances launched from now on use the new checks; "
                "running ones keep theirs until they are replaced"
            )
        for change in changes:
            log.info("%s", change)
        return changes

    def _check_claims(self, name: str, settings: FleetSettings) -> None:
        """Refuse a Host claim that another fleet on the same address holds, before any change."""
        address = settings.address
        routes: Routes[str] = Routes()
        for other in self.fleets.values():
            if other.name != name and other.settings.address == address:
                routes.claim(other.name, other.settings.hosts, other.name)
                if other.settings.secure != settings.secure:
                    mismatch = tls_mismatch(other.name, other.settings.secure)
                    raise claim_error(name, address, mismatch)
        problem = routes.claim(name, settings.hosts, name)
        if problem is not None:
            raise claim_error(name, address, problem)

    async def _serving(self, fleet: FleetRuntime) -> None:
        """Push the fleet's settings to the balancer; its listen error is ours."""
        result = await self.lb.flush()
        error = result["errors"].get(fleet.name)
        if error is not None:
            raise ProviderError(error["message"], hint=error.get("hint"))
        self._listened(result)

    def _listened(self, result: dict[str, Any]) -> None:
        for name, fleet in self.fleets.items():
            fleet.listening = bool(result["listening"].get(name))

    def fleet(self, name: str) -> FleetRuntime:
        """A fleet this agent knows, empty or not: only ``destroy`` forgets one."""
        fleet = self.fleets.get(name)
        if fleet is None:
            raise InstanceNotFound(f"no fleet {name} on this host", hint="'kiln deploy' creates it")
        return fleet

    def _set_group(self, fleet: FleetRuntime, image: str, delta: int) -> None:
        desired = max(0, fleet.groups.get(image, 0) + delta)
        if desired:
            fleet.groups[image] = desired
        else:
            fleet.groups.pop(image, None)
        self.db.save_group(fleet.name, image, desired)

    async def _idle_if_empty(self, fleet: FleetRuntime) -> None:
        """No group and no live instance: stop listening, but stay a fleet.

        An empty fleet can still be deployed to, rolled back and destroyed; its
        listener comes back with its next launch. Forgetting it here is what let
        a record outlive its fleet and the fleet become undeployable (issue 15).
        """
        busy = any(r.live for r in self.instances.values() if r.fleet == fleet.name)
        if fleet.groups or busy or fleet.idle or fleet.name in self.launching:
            return
        fleet.idle = True
        self.lb.changed()
        with contextlib.suppress(KilnError):
            await self.lb.flush()
        log.info("fleet %s is empty; stopped listening", fleet.name)

    # operations -----------------------------------------------------------

    async def launch(
        self,
        name: str,
        settings: FleetSettings,
        image: str,
        count: int,
        in_service: bool,
        secrets: Mapping[str, str],
    ) -> list[str]:
        record = await asyncio.to_thread(self.store.get, image)
        secrets = pick(settings.secrets, secrets)  # fail before anything changes
        # Until its group is set, a new (or woken) fleet has no group and no
        # instance: the idle sweep must not take its listener away meanwhile
        # (it did while the balancer took seconds to start on a busy machine,
        # and the fleet then served with no listener).
        self.launching[name] = self.launching.get(name, 0) + 1
        try:
            fleet = await self.ensure_fleet(name, settings, secrets)
            self._set_group(fleet, record.id, count)
        finally:
            self._launched(name)
        recs = [self.new_record(fleet, record.id, in_service) for _ in range(count)]
        for index, rec in enumerate(recs):
            try:
                await self.boot(fleet, rec)
            except KilnError:
                for later in recs[index:]:
                    self.booting.discard(later.id)
                    later.terminating = True  # not to be replaced: the launch failed
                    if later.live:
                        self.finish(fleet, later, InstanceState.FAILED)
                self._set_group(fleet, record.id, -(count - index))
                await self._idle_if_empty(fleet)
                raise
        return [rec.id for rec in recs]

    def _launched(self, name: str) -> None:
        self.launching[name] -= 1
        if not self.launching[name]:
            del self.launching[name]

    def resolve_id(self, fleet: FleetRuntime, instance_id: str) -> InstanceRecord:
        """The instance, or the live replacement that took its place."""
        rec = self.instances.get(instance_id)
        if rec is None or rec.fleet != fleet.name:
            raise InstanceNotFound(f"no instance {instance_id} in fleet {fleet.name}")
        seen = {rec.id}
        while rec.replaced_by and rec.replaced_by in self.instances:
            rec = self.instances[rec.replaced_by]
            if rec.id in seen:
                break
            seen.add(rec.id)
        return rec

    async def set_in_service(self, name: str, add: Sequence[str], remove: Sequence[str]) -> None:
        fleet = self.fleet(name)
        changes = [(self.resolve_id(fleet, i), True) for i in add]
        changes += [(self.resolve_id(fleet, i), False) for i in remove]
        for rec, wanted in changes:
            rec.in_service = wanted
            self.save(rec)
        self.sync_lb(fleet)
        await self.lb.flush()  # one step: removed ones get no new request from here on

    async def terminate(self, name: str, ids: Sequence[str]) -> None:
        fleet = self.fleet(name)
        targets = []
        for rec in [self.resolve_id(fleet, i) for i in ids]:
            if rec.terminating or rec.state == InstanceState.TERMINATED:
                continue
            rec.terminating = True
            self.save(rec)
            self._set_group(fleet, rec.image, -1)
            if rec.live:
                targets.append(rec)
        self.sync_lb(fleet)
        await self.lb.flush()
        await asyncio.gather(
            *(self.retire(fleet, r, InstanceState.TERMINATED, drain=True) for r in targets)
        )
        await self._idle_if_empty(fleet)

    def describe(self, name: str) -> dict[str, Any]:
        fleet = self.fleets.get(name)
        instances = [r for r in self.instances.values() if r.fleet == name]
        instances.sort(key=lambda r: r.launched_at)
        return {
            "name": name,
            "endpoint": fleet.settings.endpoint if fleet else None,
            "groups": dict(fleet.groups) if fleet else {},
            "instances": [r.public() for r in instances],
        }

    async def stats(self, name: str) -> dict[str, Any]:
        """Per-instance counters, as the balancer process counted them."""
        if name not in self.fleets:
            return {}
        counted = await self.lb.stats(name)
        return {i: c for i, c in counted.items() if i in self.instances}

    # self-healing ---------------------------------------------------------

    async def run(self) -> None:
        """Watch processes, keep every group at its count, tidy up; forever.

        One bad tick is logged, never fatal: a dead loop would silently stop
        self-healing while the agent still looked alive.
        """
        ticks = 0
        while True:
            ticks += 1
            try:
                await self._tick(ticks)
            except Exception:
                log.exception("supervisor tick failed; carrying on")
            await asyncio.sleep(TICK)

    async def _tick(self, ticks: int) -> None:
        self.check_processes()
        self._listened(self.lb.last)
        for fleet in list(self.fleets.values()):
            await self._reconcile(fleet)
        if ticks % 5 == 0:  # once a second: how far each live log got, capped if too big
            logs = [(Path(r.log), self._log_cap(r)) for r in self.instances.values() if r.live]
            self.background(asyncio.to_thread(_note_logs, logs, self._log_sizes))
        if ticks % int(series.INTERVAL / TICK) == 0:
            await self._sample_traffic()
        if ticks % 5 == 0:
            for name, settings in await self.certs.due(time.time()):
                self.background(self.certs.renew(name, settings))
        if ticks % 25 == 0:
            self._housekeeping()
            self._recycle_old()
            for fleet in list(self.fleets.values()):
                await self._idle_if_empty(fleet)  # e.g. restored with nothing left

    async def _reconcile(self, fleet: FleetRuntime) -> None:
        for image in list(fleet.groups):
            for _ in range(self._missing(fleet, image)[0]):  # at most that many a tick
                if time.time() < fleet.backoff.get(image, (0.0, 0.0))[0]:
                    return
                if not await self._replace(fleet, image):
                    break

    def _missing(
        self, fleet: FleetRuntime, image: str
    ) -> tuple[int, list[InstanceRecord], list[InstanceRecord]]:
        """How many instances the group lacks, its records, and the live ones."""
        mine = [r for r in self.instances.values() if r.fleet == fleet.name and r.image == image]
        live = [r for r in mine if r.live and r.state != "unhealthy" and not r.terminating]
        return fleet.groups.get(image, 0) - len(live), mine, live

    async def _replace(self, fleet: FleetRuntime, image: str) -> bool:
        """Start one instance in the group; False when none was started."""
        if await self._corrupt_image(fleet, image):
            return False
        # Decided only now, after the await: a terminate (a rollback's, say) that ran
        # meanwhile has lowered the group, and a replacement on the stale count kept
        # a broken image running after its deployment was rolled back to nothing.
        missing, mine, live = self._missing(fleet, image)
        if missing <= 0:
            return False
        gone = sorted(
            (
                r
                for r in mine
                if r.state in ("failed", "unhealthy") and not r.replaced_by and not r.terminating
            ),
            key=lambda r: r.launched_at,
        )
        predecessor = gone[0] if gone else None
        in_service = predecessor.in_service if predecessor else any(r.in_service for r in live)
        if predecessor is not None and not predecessor.ever_healthy:
            delay = min(max(fleet.backoff.get(image, (0.0, 0.5))[1] * 2, 1.0), MAX_BACKOFF)
            fleet.backoff[image] = (time.time() + delay, delay)
        rec = self.new_record(fleet, image, in_service, predecessor.id if predecessor else None)
        if predecessor is not None:
            predecessor.replaced_by = rec.id
            self.save(predecessor)
        log.info("replacing %s with %s", predecessor.id if predecessor else "(lost)", rec.id)
        try:
            await self.boot(fleet, rec)
        except KilnError as exc:
            log.error("replacement %s failed: %s", rec.id, exc)
        return True

    async def _corrupt_image(self, fleet: FleetRuntime, image: str) -> bool:
        """An image whose objects were found corrupt cannot start: no launch, no record.

        Retrying would only add a failed instance every backoff period; look
        again every CORRUPT_RECHECK seconds (a bake stores the objects again).
        """
        try:
            bad = await asyncio.to_thread(self.store.quarantined, image)
        except KilnError:
            return False  # the launch itself will say what is wrong
        if not bad:
            return False
        fleet.backoff[image] = (time.time() + CORRUPT_RECHECK, CORRUPT_RECHECK)
        log.error(
            "not replacing instances of %s: %d file(s) corrupted in the store (%s); "
            "bake the app again or run 'kiln image verify %s --repair'",
            image,
            len(bad),
            bad[0],
            image,
        )
        return True

    def _recycle_old(self) -> None:
        now = time.time()
        for fleet in self.fleets.values():
            victim = recycler.due(self, fleet, now)
            if victim is not None:
                fleet.recycling = True  # claimed before the task first runs
                self.background(recycler.recycle(self, fleet, victim))

    async def _sample_traffic(self) -> None:
        """One traffic bucket per fleet into the database (``kiln ui`` draws them)."""
        now = time.time()
        for name in list(self.fleets):
            bucket = self.traffic.sample(name, now, await self.stats(name))
            if bucket is not None:
                self.db.add_bucket(name, bucket)
        for gone in set(self.traffic.seen) - set(self.fleets):
            self.traffic.forget(gone)
        if now - self._series_pruned > 3600:
            self._series_pruned = now
            self.db.forget_series(now - series.KEEP)

    def _housekeeping(self) -> None:
        """Forget ended instances (and their logs) after their fleet's log_retention."""
        now = time.time()
        doomed: list[Path] = []
        for rec in list(self.instances.values()):
            if rec.live:
                continue
            finished = max(rec.times.values(), default=rec.launched_at)
            fleet = self.fleets.get(rec.fleet)
            retention = fleet.settings.log_retention if fleet else KEEP_FINISHED
            if now - finished > retention:
                del self.instances[rec.id]
                self.db.delete_instance(rec.id)
                doomed.append(Path(rec.log))
                self._log_sizes.pop(rec.log, None)
                self.lb.changed()  # its counters go too
        if doomed:
            self.background(asyncio.to_thread(_remove_logs, doomed))
        used = {r.image for r in self.instances.values() if r.live}
        used |= {image for fleet in self.fleets.values() for image in fleet.groups}
        self.background(asyncio.to_thread(self.trees.prune, used, KEEP_TREES))

    def _log_cap(self, rec: InstanceRecord) -> int:
        fleet = self.fleets.get(rec.fleet)
        return fleet.settings.log_max_bytes if fleet else 10 * 1024 * 1024

    # restart --------------------------------------------------------------

    async def restore(self) -> None:
        """Re-adopt the instances a previous agent left running, and the balancer; never
        duplicate either. The balancer kept serving meanwhile: configuring it again
        is all adopting it takes."""
        groups, fleets, records = await asyncio.to_thread(
            lambda: (self.db.groups(), self.db.fleets(), self.db.instances())
        )
        for name, settings in fleets.items():
            self.fleets[name] = FleetRuntime(name, settings, groups.get(name, {}))
        for rec in records:
            self.instances[rec.id] = rec
            fleet = self.fleets.get(rec.fleet)
            if not rec.live and rec.uid is not None:  # a previous agent may not have reaped it
                self.background(asyncio.to_thread(uids.reap, rec.uid))
            if not rec.live or fleet is None:
                continue
            await self._readopt(fleet, rec)
        await recovery.adopt_unrecorded(self)  # e.g. the database was lost: never duplicate
        for fleet in self.fleets.values():
            live = any(r.live for r in self.instances.values() if r.fleet == fleet.name)
            fleet.idle = not fleet.groups and not live
            self._recover_secrets(fleet)
            self.sync_lb(fleet)
        try:
            self._listened(await self.lb.flush())
        except KilnError as exc:
            log.error("%s (will retry)", exc)

    def _recover_secrets(self, fleet: FleetRuntime) -> None:
        """The secret values a restarted agent lost, taken back from a running instance.

        They were in memory only; the instances of the fleet carry them in their
        environment, so self-healing keeps working until the next launch sends them.
        """
        names = set(fleet.settings.secrets)
        for rec in self.instances.values():
            if names <= set(fleet.secrets):
                return
            if rec.fleet == fleet.name and rec.live and rec.pid and not rec.terminating:
                env = procs.environ_of(rec.pid, rec.pid_start)
                if names <= set(env):
                    fleet.secrets = {name: env[name] for name in names}

    async def _readopt(self, fleet: FleetRuntime, rec: InstanceRecord) -> None:
        if rec.pid is None:  # the previous agent died between record and spawn
            found = await asyncio.to_thread(procs.processes_with_env, "KILN_INSTANCE_ID", rec.id)
            for pid in found:
                procs.signal_group(pid, signal.SIGKILL)
            rec.reason = "the agent stopped while it was starting"
            self.finish(fleet, rec, InstanceState.FAILED)
        elif not procs.alive(rec.pid, rec.pid_start):
            if rec.terminating:  # it was being retired: it ended as it was told to
                self.finish(fleet, rec, InstanceState.TERMINATED)
            else:
                rec.reason = "exited while the agent was down"
                self.finish(fleet, rec, InstanceState.FAILED)
        else:
            log.info("re-adopted instance %s (pid %s, %s)", rec.id, rec.pid, rec.state)
            self.watch_health(fleet, rec, healthy=rec.state == "healthy")
            if rec.terminating or rec.state in ("draining", "unhealthy"):
                final = InstanceState.TERMINATED if rec.terminating else InstanceState.FAILED
                self.background(self.retire(fleet, rec, final, drain=True))

    async def shutdown(self, stop_instances: bool) -> None:
        """Stop serving; with ``stop_instances`` also stop every instance (and forget groups)."""
        if stop_instances:
            for fleet in list(self.fleets.values()):
                live = [r.id for r in self.instances.values() if r.fleet == fleet.name and r.live]
                with contextlib.suppress(KilnError):
                    await self.terminate(fleet.name, live)
                for image in list(fleet.groups):
                    self._set_group(fleet, image, -fleet.groups[image])
                await self._idle_if_empty(fleet)
        for task in self.health_tasks.values():
            task.cancel()
        if all(f.idle for f in self.fleets.values()):
            with contextlib.suppress(KilnError):
                await self.lb.flush()  # nothing to serve: the balancer exits
        self.lb.close()  # otherwise it keeps serving until the next agent adopts it


def _note_logs(logs: list[tuple[Path, int]], sizes: dict[str, int]) -> None:
    """Time notes (and size caps) of live logs (file work: runs in a thread)."""
    for path, cap in logs:
        logtimes.note(path, sizes, cap)


def _remove_logs(logs: list[Path]) -> None:
    for path in logs:
        logtimes.remove(path)
