"""One instance's life: boot from an image, health checks, death, retirement.

``Lifecycle`` holds the agent's in-memory state; ``Supervisor`` (its
subclass) adds the fleet-level operations the API exposes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from kiln.errors import KilnError, ProviderError
from kiln.home import Home
from kiln.image.drift import baseline_path, record_baseline
from kiln.image.store import Store
from kiln.local import procs, uids
from kiln.local.certs import Certifier, tls_files
from kiln.local.health import FIRST_LOOK_TIMEOUT, Tracker, first_look, probe
from kiln.local.launchprint import launch_print, load_key
from kiln.local.lblink import BalancerLink
from kiln.local.listening import exposed, log_end, not_listening, port_in_use, wrong_port
from kiln.local.model import AgentDB, FleetSettings, InstanceRecord
from kiln.local.secret_refs import pick
from kiln.local.series import Sampler
from kiln.local.trees import ImageTrees
from kiln.providers.protocol import InstanceState
from kiln.runenv import check_interpreter, instance_env

log = logging.getLogger("kiln.agent")
INSTANCE_HOST = "127.0.0.1"


@dataclass
class FleetRuntime:
    """A fleet inside the agent: settings, server groups, what its load balancer should do."""

    name: str
    settings: FleetSettings
    groups: dict[str, int] = field(default_factory=dict)  # image id -> desired count
    secrets: dict[str, str] = field(default_factory=dict)  # NAME -> value, in memory only
    backoff: dict[str, tuple[float, float]] = field(default_factory=dict)  # image -> (when, delay)
    backends: dict[str, int] = field(default_factory=dict)  # instance id -> port, watched ones
    routable: frozenset[str] = frozenset()  # the instances the balancer may send requests to
    listening: bool = False  # as the balancer process last reported
    idle: bool = False  # empty: known, deployable, but not listening
    recycling: bool = False  # a max_age replacement is under way
    recycle_after: float = 0.0  # no max_age recycling before this (after a failure)


T = TypeVar("T")
FILE_WORK_NICE = 10  # niceness of the file-tree threads (spawns never run on them)


def _lower_priority() -> None:
    """Nice this thread alone (Linux: PRIO_PROCESS with 0 is the calling thread)."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, FILE_WORK_NICE)


def runtime_dir(instance_dir: Path) -> Path:
    """The instance's own runtime directory, beside its files (``XDG_RUNTIME_DIR``).

    Instances of one agent share its user and HOME; a tool that keeps its
    per-process state in HOME would share it across instances too. pm2-runtime
    does (``~/.pm2``: a second instance's pm2 stopped the first's app and then
    exited, "Script already launched"), so its ``PM2_HOME`` is this directory,
    and so is gunicorn 27's control socket (``$XDG_RUNTIME_DIR/gunicorn.ctl``,
    else ``~/.gunicorn``). HOME itself stays the agent's.
    """
    return instance_dir.with_name(instance_dir.name + ".run")


def make_runtime_dir(instance_dir: Path) -> dict[str, str]:
    """Create it (0700, empty) and say so in the variables that point tools at it."""
    where = runtime_dir(instance_dir)
    shutil.rmtree(where, ignore_errors=True)  # a retried boot of the same record
    where.mkdir(mode=0o700)
    return {"XDG_RUNTIME_DIR": str(where), "PM2_HOME": str(where)}


def remove_instance_dir(where: str) -> None:
    """An instance's directory, runtime directory and drift baseline, gone (a thread)."""
    if where:
        shutil.rmtree(where, ignore_errors=True)
        shutil.rmtree(runtime_dir(Path(where)), ignore_errors=True)
        baseline_path(Path(where)).unlink(missing_ok=True)


def dispose_instance_dir(where: str, uid: int | None) -> None:
    """After an instance ended: its files, and what its uid left behind (a thread)."""
    remove_instance_dir(where)
    # what it started outside its process group dies too; then what it wrote meanwhile goes
    if uid is not None and uids.reap(uid):
        remove_instance_dir(where)


def describe_exit(status: int | None) -> str:
    if status is None:
        return "exited (status unknown: it was not the agent's child)"
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"killed by {name}"
    return f"exited with status {status}"


class Lifecycle:
    def __init__(self, home: Home, db: AgentDB, store: Store) -> None:
        self.home = home
        self.db = db
        self.store = store
        self.trees = ImageTrees(store, home.agent_dir / "trees")
        self._files = ThreadPoolExecutor(
            max_workers=2, thread_name_prefix="kiln-files", initializer=_lower_priority
        )
        self.logs = home.agent_dir / "logs"
        self.fleets: dict[str, FleetRuntime] = {}
        self.instances: dict[str, InstanceRecord] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.health_tasks: dict[str, asyncio.Task[None]] = {}
        self.stopping: set[str] = set()  # ids whose retirement is under way
        self._log_sizes: dict[str, int] = {}  # log path -> size at the last time note
        self.booting: set[str] = set()  # ids recorded by this agent, not yet spawned
        self.launching: dict[str, int] = {}  # fleet -> launches under way: never idled
        self._listening = asyncio.Lock()
        self.lb = BalancerLink(home, self.lb_config)
        self.certs = Certifier(
            home, self.lb, lambda: {n: f.settings for n, f in self.fleets.items() if not f.idle}
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        self.uids = uids.UidPool(home.agent_dir / "last-uid")
        self._launch_key: bytes | None = None
        self.traffic = Sampler()
        self._series_pruned = 0.0

    @property
    def launch_key(self) -> bytes:
        if self._launch_key is None:
            self._launch_key = load_key(self.home)
        return self._launch_key

    async def file_work(self, call: Callable[[], T]) -> T:
        """Run file-tree work (materialize, remove, hash) on a low-priority thread.

        Off the loop, and niced: on a small host it must not take the CPU that
        the balancer and the instances serving requests need.
        """
        return await asyncio.get_running_loop().run_in_executor(self._files, call)

    def background(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    def save(self, rec: InstanceRecord) -> None:
        self.db.save_instance(rec)

    # routing --------------------------------------------------------------

    def sync_lb(self, fleet: FleetRuntime, *, becoming_healthy: str | None = None) -> None:
        """Route to exactly the healthy, in-service instances not on their way out.

        The balancer process hears of it at the next push; callers that promise
        "from here on" (membership changes, draining) await ``self.lb.flush()``.
        """
        routable = frozenset(
            r.id
            for r in self.instances.values()
            if r.fleet == fleet.name
            and r.in_service
            and (r.state == "healthy" or r.id == becoming_healthy)
            and not r.terminating
            and r.id not in self.stopping
            and r.id in fleet.backends
        )
        if routable != fleet.routable:
            fleet.routable = routable
            self.lb.changed()

    def lb_config(self) -> dict[str, dict[str, Any]]:
        """What the balancer process should serve: every fleet, declaratively."""
        known: dict[str, list[str]] = {}
        for rec in self.instances.values():
            known.setdefault(rec.fleet, []).append(rec.id)
        return {
            name: {
                "listen": list(fleet.settings.address),
                "policy": fleet.settings.balance,
                "limits": fleet.settings.limits,  # [provider.local] *_timeout
                "trusted_proxies": list(fleet.settings.trusted_proxies),
                "sticky": fleet.settings.sticky,  # [fleet] sticky (kiln.local.affinity)
                "hosts": list(fleet.settings.hosts),
                "tls": tls_files(self.home, name, fleet.settings),
                "backends": {i: [INSTANCE_HOST, port] for i, port in fleet.backends.items()},
                "routable": sorted(fleet.routable),
                "known": known.get(name, []),  # their counters are kept for `stats`
            }
            for name, fleet in self.fleets.items()
            if not fleet.idle
        }

    # booting --------------------------------------------------------------

    def _isolate(self, directory: Path, known: list[int]) -> int:
        """A uid never used before here, owning the instance's directory alone.

        Runs in a thread: it scans /proc and walks the instance's files.
        """
        if os.geteuid() != 0:
            raise KilnError(
                "[provider.local] isolate needs the agent to run as root",
                hint="run the agent as root (e.g. a systemd unit), or set isolate = false",
            )
        self._lock_down_home()
        uid = self.uids.take(known, self.home.instances)
        for path in (directory, *directory.rglob("*")):
            if path.is_dir() or path.lstat().st_nlink == 1:  # never a shared, linked file
                os.lchown(path, uid, uid)
        directory.chmod(0o700)
        os.chown(runtime_dir(directory), uid, uid)
        return uid

    def _lock_down_home(self) -> None:
        """Instances may pass through KILN_HOME to their own directory, and see nothing else.

        KILN_HOME and instances/ become traverse-only (0711); everything else in
        KILN_HOME stays private to the agent's user.
        """
        for ancestor in self.home.root.parents:
            if not ancestor.stat().st_mode & 0o001:
                raise KilnError(
                    f"[provider.local] isolate: instances cannot reach their directories "
                    f"under {self.home.root}: {ancestor} is private to its owner",
                    hint="put KILN_HOME where other users may pass, e.g. /var/lib/kiln",
                )
        for private in self.home.root.iterdir():
            if private != self.home.instances:
                private.chmod(0o700 if private.is_dir() else 0o600)
        self.home.instances.mkdir(exist_ok=True)
        for traverse_only in (self.home.root, self.home.instances):
            traverse_only.chmod(0o711)

    def new_record(
        self, fleet: FleetRuntime, image: str, in_service: bool, replaces: str | None = None
    ) -> InstanceRecord:
        instance_id = "i-" + os.urandom(6).hex()
        rec = InstanceRecord(
            id=instance_id,
            fleet=fleet.name,
            image=image,
            state="pending",
            launched_at=time.time(),
            in_service=in_service,
            dir=str(self.home.instances / instance_id),
            log=str(self.logs / f"{instance_id}.log"),
            replaces=replaces,
        )
        rec.set_state(InstanceState.PENDING)
        self.instances[rec.id] = rec
        self.booting.add(rec.id)  # its boot is this agent's business until boot() ends
        self.save(rec)
        return rec

    async def boot(self, fleet: FleetRuntime, rec: InstanceRecord) -> None:
        """Materialize, resolve secrets, spawn; a failure marks the record failed and raises."""
        try:
            await self._boot(fleet, rec)
        finally:
            self.booting.discard(rec.id)

    async def _boot(self, fleet: FleetRuntime, rec: InstanceRecord) -> None:
        try:
            rec.set_state(InstanceState.MATERIALIZING)  # a phase of its own: no grace yet
            self.save(rec)
            # shared, read-only files only for an instance that cannot write them
            share = fleet.settings.isolate or os.geteuid() != 0
            manifest = await self.file_work(
                partial(self.trees.materialize, rec.image, Path(rec.dir), share=share)
            )
            await self.file_work(partial(record_baseline, Path(rec.dir)))  # cheap `kiln drift`
            secrets = pick(fleet.settings.secrets, fleet.secrets)
            runtime = await self.file_work(partial(make_runtime_dir, Path(rec.dir)))
            env = runtime | instance_env(manifest.env) | secrets  # the image's [env] wins
            check_interpreter(manifest.python, env["PATH"])
            rec.launch = launch_print(self.launch_key, fleet.settings, secrets)
            rec.port = procs.free_port(INSTANCE_HOST)
            env |= {
                "HOST": INSTANCE_HOST,
                "PORT": str(rec.port),
                "KILN_INSTANCE_ID": rec.id,
                "KILN_IMAGE": rec.image,
                "KILN_FLEET": fleet.name,  # with the id: a lost database is rebuilt from these
            }
            if fleet.settings.isolate:
                known = [r.uid for r in self.instances.values() if r.uid is not None]
                rec.uid = await asyncio.to_thread(self._isolate, Path(rec.dir), known)
                env |= {"HOME": rec.dir, "USER": f"kiln-{rec.uid}"}
            await asyncio.wrap_future(self.db.flush())  # the record is on disk before the spawn
            proc = await asyncio.to_thread(
                procs.spawn, manifest.run, Path(rec.dir), env, Path(rec.log), rec.uid
            )
        except (KilnError, OSError) as exc:
            rec.reason = f"could not start: {exc}"
            self.finish(fleet, rec, InstanceState.FAILED)
            if isinstance(exc, KilnError):
                raise
            # callers (launch, self-healing) handle KilnError: an OSError must not
            # escape them and take the supervisor loop down with it
            raise ProviderError(f"instance {rec.id} could not start: {exc}") from exc
        if rec.terminating or not rec.live:  # terminated while it was being prepared
            procs.signal_group(proc.pid, signal.SIGKILL)
            await asyncio.to_thread(proc.wait)
            await self.file_work(partial(remove_instance_dir, rec.dir))
            return
        rec.pid = proc.pid
        rec.pid_start = procs.start_time(proc.pid)
        self.procs[rec.id] = proc
        rec.set_state(InstanceState.RUNNING)
        self.save(rec)
        log.info("instance %s of %s started: pid %s port %s", rec.id, rec.image, rec.pid, rec.port)
        self.watch_health(fleet, rec, healthy=False)

    def watch_health(self, fleet: FleetRuntime, rec: InstanceRecord, *, healthy: bool) -> None:
        fleet.backends[rec.id] = rec.port or 0
        self.lb.changed()
        # grace counts from the process's start, not the record's: materializing
        # a big image must not eat the time the app has to boot (issue 15)
        started = rec.times.get("running", rec.launched_at)
        tracker = Tracker(fleet.settings.health_check, started=started, healthy=healthy)
        self.health_tasks[rec.id] = asyncio.create_task(self._health_loop(fleet, rec, tracker))

    async def _health_loop(self, fleet: FleetRuntime, rec: InstanceRecord, t: Tracker) -> None:
        check = t.settings
        while rec.live and rec.id not in self.stopping:
            error = await probe(INSTANCE_HOST, rec.port or 0, check.path, check.timeout, check.host)
            if not rec.live or rec.id in self.stopping:
                return
            verdict = t.observe(error, time.time())
            if verdict == "healthy" and check.path is None:
                patience = max(check.timeout, FIRST_LOOK_TIMEOUT)
                broken, seen = await first_look(INSTANCE_HOST, rec.port or 0, patience, check.host)
                log.info("instance %s: first look: %s", rec.id, seen)
                if not rec.live or rec.id in self.stopping:
                    return
                if broken is not None:
                    t.last_error, verdict = broken, "unhealthy"
            if verdict == "healthy":
                self.sync_lb(fleet, becoming_healthy=rec.id)
                try:  # routable in the balancer before anyone is told it is healthy
                    await self.lb.flush()
                except KilnError as exc:
                    log.error("%s (will retry)", exc)
                if not rec.ever_healthy:  # it serves: does it serve only through the balancer?
                    rec.warning = await asyncio.to_thread(exposed, rec.pid or 0, rec.port or 0)
                    if rec.warning:
                        log.warning("instance %s %s", rec.id, rec.warning)
                if not rec.live or rec.id in self.stopping:  # it went meanwhile
                    self.sync_lb(fleet)
                    return
                rec.set_state(InstanceState.HEALTHY)
                rec.reason = None
                self.save(rec)
                fleet.backoff.pop(rec.image, None)
                self.sync_lb(fleet)
            elif verdict == "unhealthy":
                if self.exit_status(rec)[0]:
                    self.check_processes()  # it died: say so, rather than "unhealthy"
                    return
                # an app that ignores $PORT: say where it listens instead; one
                # still booting when grace ended: say that
                elsewhere = await asyncio.to_thread(wrong_port, rec.pid or 0, rec.port or 0)
                if elsewhere is None and rec.state == InstanceState.RUNNING:  # never healthy
                    elsewhere = await asyncio.to_thread(
                        not_listening, rec.pid or 0, rec.port or 0, check.grace
                    )
                rec.set_state(InstanceState.UNHEALTHY)
                rec.reason = elsewhere or f"unhealthy: {t.last_error}"
                self.save(rec)
                log.warning("instance %s: %s; replacing it", rec.id, rec.reason)
                self.background(self.retire(fleet, rec, InstanceState.FAILED, drain=False))
                return
            await asyncio.sleep(check.interval)

    # dying and retiring ---------------------------------------------------

    def exit_status(self, rec: InstanceRecord) -> tuple[bool, int | None]:
        """(dead, exit status if known)."""
        proc = self.procs.get(rec.id)
        if proc is not None:
            code = proc.poll()
            return code is not None, code
        return not procs.alive(rec.pid or 0, rec.pid_start), None

    def check_processes(self) -> None:
        """The one step that makes records match reality, every tick.

        A live record whose process is gone, or that has no process and no
        boot running in this agent (a previous agent died mid-launch), is
        finished as failed right here: once, so it is logged once.
        """
        for rec in list(self.instances.values()):
            if not rec.live or rec.id in self.stopping or rec.id in self.booting:
                continue
            if rec.pid is None:
                rec.reason = "the agent stopped while it was starting"
                log.warning("instance %s: %s", rec.id, rec.reason)
                self.background(asyncio.to_thread(procs.kill_by_env, "KILN_INSTANCE_ID", rec.id))
                self.finish(self.fleets.get(rec.fleet), rec, InstanceState.FAILED)
                continue
            dead, status = self.exit_status(rec)
            if dead:
                procs.signal_group(rec.pid, signal.SIGKILL)  # what it left behind goes with it
                rec.exit_status = status
                rec.reason = describe_exit(status)
                if status and rec.port:  # 8 KiB of a local log, once per death
                    taken = port_in_use(log_end(Path(rec.log)), rec.port)
                    rec.reason += f": {taken}" if taken else ""
                log.warning("instance %s %s", rec.id, rec.reason)
                self.finish(self.fleets.get(rec.fleet), rec, InstanceState.FAILED)

    def finish(self, fleet: FleetRuntime | None, rec: InstanceRecord, state: InstanceState) -> None:
        """Record a final state and forget the process and its directory.

        Works without the fleet (a record must always be able to end): the
        state is what stops every later tick from looking at it again.
        """
        rec.set_state(state)
        if state is InstanceState.TERMINATED:
            rec.in_service = False
        self.procs.pop(rec.id, None)
        task = self.health_tasks.pop(rec.id, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        if fleet is not None:
            if fleet.backends.pop(rec.id, None) is not None:
                self.lb.changed()
            self.sync_lb(fleet)
        self.save(rec)
        if rec.dir or rec.uid is not None:  # never on the loop every fleet's balancer runs on
            self.background(self.file_work(partial(dispose_instance_dir, rec.dir, rec.uid)))

    async def retire(
        self, fleet: FleetRuntime, rec: InstanceRecord, final: InstanceState, *, drain: bool
    ) -> None:
        """Deregister, let in-flight requests finish (up to [fleet] drain), stop."""
        if rec.id in self.stopping:
            return
        self.stopping.add(rec.id)
        try:
            self.sync_lb(fleet)
            if drain:
                await self._drain(fleet, rec)
            await self.stop_process(rec, fleet.settings.stop_timeout)
            self.finish(fleet, rec, final)
        finally:
            self.stopping.discard(rec.id)

    async def _drain(self, fleet: FleetRuntime, rec: InstanceRecord) -> None:
        """Once the balancer sends it nothing new, wait for its requests in flight."""
        try:
            await self.lb.flush()
        except KilnError as exc:
            log.error("draining %s: %s", rec.id, exc)
            return
        if not await self.lb.outstanding(fleet.name, rec.id):
            return
        rec.set_state(InstanceState.DRAINING)
        self.save(rec)
        deadline = time.monotonic() + fleet.settings.drain
        while time.monotonic() < deadline and await self.lb.outstanding(fleet.name, rec.id):
            await asyncio.sleep(0.05)

    async def stop_process(self, rec: InstanceRecord, timeout: float) -> None:
        """SIGTERM the instance's group, SIGKILL it after ``timeout``.

        The instance is its whole process group: with a run line kiln could not
        exec (``a | b``), the shell may exit first while the server still drains.
        """
        if rec.pid is None:
            return
        pid = rec.pid
        status: int | None = None

        def gone() -> bool:
            nonlocal status
            dead, code = self.exit_status(rec)
            if dead and status is None:
                status = code
            return dead and not procs.group_alive(pid)

        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            if gone():
                break
            if sig == signal.SIGKILL:  # what it still sent is cut: say so
                busy = await self.lb.outstanding(rec.fleet, rec.id)
                log.warning(
                    "instance %s did not exit within %gs of SIGTERM: killed%s "
                    "([provider.local] stop_timeout)",
                    rec.id,
                    timeout,
                    f", with {busy} requests in flight" if busy else "",
                )
            procs.signal_group(pid, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and not gone():
                await asyncio.sleep(0.02)
        rec.exit_status = status
