"""The agent's side of the balancer process: adopt or start it, configure it, ask it.

The agent is the truth about who is routable; the balancer only serves. Every
change is pushed as the whole desired configuration (``configure``), and the
same push repeats every second, so a balancer that restarted, or one that a
restarted agent adopted, converges without any bookkeeping of what it missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from kiln.errors import ProviderError
from kiln.home import Home
from kiln.local import lbproc
from kiln.local.handover import CODE, HandoverFailed, Listener, receive_listeners
from kiln.local.procs import cap_log, log_tail, start_time

log = logging.getLogger("kiln.agent")
Config = dict[str, dict[str, Any]]
CALL_TIMEOUT = 10.0
START_TIMEOUT = 20.0
RESYNC_SECONDS = 1.0


class BalancerDown(ProviderError):
    """The balancer process does not answer on its socket."""


class BalancerLink:
    """One connection to this home's balancer process, started when first needed."""

    def __init__(self, home: Home, desired: Callable[[], Config]) -> None:
        self.home = home
        self.desired = desired  # the full configuration, computed at each push
        # the plain listeners answering ACME challenges (kiln.local.certs), likewise
        self.challenges: Callable[[], list[dict[str, Any]]] = list
        self.info: dict[str, Any] | None = None  # the balancer's hello
        self.last: dict[str, Any] = {"listening": {}, "errors": {}}
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._call_lock = asyncio.Lock()
        self._push_lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._child: subprocess.Popen[bytes] | None = None
        self.code = CODE  # the balancer code this agent runs; another one is replaced

    # talking --------------------------------------------------------------

    async def call(self, op: str, **fields: Any) -> dict[str, Any]:
        """One request; a connection that went stale is replaced once."""
        line = json.dumps({"op": op, **fields}).encode() + b"\n"
        async with self._call_lock:
            for attempt in (0, 1):
                try:
                    if self._conn is None:
                        self._conn = await asyncio.open_unix_connection(
                            str(lbproc.socket_path(self.home)), limit=1 << 24
                        )
                    reader, writer = self._conn
                    writer.write(line)
                    async with asyncio.timeout(CALL_TIMEOUT):
                        raw = await reader.readline()
                    if not raw:
                        raise ConnectionResetError("the balancer closed the connection")
                except (OSError, TimeoutError, ValueError) as exc:
                    self._disconnect()
                    self.info = None  # whoever answers next is asked who it is
                    if attempt:
                        raise BalancerDown(f"the load balancer does not answer: {exc}") from exc
                    continue
                answer: dict[str, Any] = json.loads(raw)
                if not answer.pop("ok", False):
                    raise ProviderError(f"the load balancer refused {op}: {answer.get('error')}")
                return answer
        raise AssertionError("unreachable")

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn[1].close()
            self._conn = None

    # starting and adopting ------------------------------------------------

    async def ensure(self) -> dict[str, Any]:
        """The running balancer's hello: adopted if one answers, else started."""
        with contextlib.suppress(BalancerDown):
            info = await self.call("hello")
            if info.get("protocol") == lbproc.PROTOCOL and info.get("code") == self.code:
                if self.info is None or self.info.get("pid") != info.get("pid"):
                    log.info("load balancer pid %s adopted", info.get("pid"))
                self.info = info
                return info
            log.warning("load balancer pid %s runs other code; replacing it", info["pid"])
            try:
                return await self._hand_over()
            except (HandoverFailed, OSError) as exc:  # an older balancer cannot: close, reopen
                log.warning("%s; stopping it and starting anew", exc)
                await self._replace(int(info["pid"]))
        return await self._start()

    async def _hand_over(self) -> dict[str, Any]:
        """A successor on the same listening sockets: no connection is refused meanwhile."""
        self._disconnect()
        path = lbproc.socket_path(self.home)
        listeners = await asyncio.to_thread(receive_listeners, path, CALL_TIMEOUT)
        try:
            return await self._start(listeners)
        finally:
            for _, _, fd in listeners:
                os.close(fd)

    async def _replace(self, pid: int) -> None:
        with contextlib.suppress(BalancerDown):
            await self.call("exit")
        self._disconnect()
        deadline = time.monotonic() + START_TIMEOUT
        while start_time(pid) is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def _start(self, inherit: list[Listener] | None = None) -> dict[str, Any]:
        path = lbproc.log_path(self.home)
        if inherit is not None or self._child is None or self._child.poll() is not None:
            cmd = [sys.executable, "-m", "kiln.local.lbproc", "--home", str(self.home.root)]
            if inherit:
                cmd += ["--inherit", json.dumps(inherit)]
            cap_log(path, lbproc.LOG_MAX)
            with path.open("ab") as out:
                self._child = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    cwd=self.home.agent_dir,
                    start_new_session=True,  # outlives the agent, like an instance
                    close_fds=True,
                    pass_fds=[fd for _, _, fd in inherit or []],
                )
        child = self._child
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            with contextlib.suppress(BalancerDown):
                info = await self.call("hello")
                if info.get("pid") != child.pid and child.poll() is None:  # its predecessor
                    self._disconnect()
                    await asyncio.sleep(0.05)
                    continue
                self.info = info
                self.code = str(info.get("code", self.code))  # what we started is current
                log.info("load balancer pid %s started", info.get("pid"))
                return info
            if child.poll() not in (None, 0, lbproc.ALREADY_RUNS):
                break
            await asyncio.sleep(0.05)
        raise ProviderError(
            "the load balancer process did not start:\n" + log_tail(path, 10),
            hint=f"see {path}",
        )

    # configuring ----------------------------------------------------------

    def changed(self) -> None:
        """Something routable changed: push soon (now, when ``flush`` is awaited)."""
        self._changed.set()

    async def flush(self) -> dict[str, Any]:
        """Push the desired configuration now; returns what the balancer reported.

        With no fleet left, the balancer is told to exit instead.
        """
        async with self._push_lock:
            self._changed.clear()
            config = self.desired()
            acme = self.challenges()
            if not config and not acme:
                if self.info is not None or lbproc.socket_path(self.home).exists():
                    await self.stop()
                self.last = {"listening": {}, "errors": {}}
                return self.last
            try:
                if self.info is None or self._conn is None:
                    await self.ensure()  # who serves there now: adopt it, or start one
                result = await self.call("configure", fleets=config, acme=acme)
            except BalancerDown:
                await self.ensure()
                result = await self.call("configure", fleets=config, acme=acme)
            self.last = result
            return result

    async def run(self) -> None:
        """Push on every change, and every second anyway: a restarted balancer converges."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RESYNC_SECONDS):
                    await self._changed.wait()
            try:
                result = await self.flush()
            except ProviderError as exc:
                log.error("%s (will retry)", exc)
                await asyncio.sleep(RESYNC_SECONDS)
                continue
            for name, error in result.get("errors", {}).items():
                log.error("fleet %s: %s (will retry)", name, error["message"])
            if self._child is not None:
                self._child.poll()  # reap it if it died: the next push starts another

    async def stop(self) -> None:
        """Tell the balancer to exit (it closes its listeners) and wait for it."""
        try:
            pid = int((await self.call("hello"))["pid"])
        except BalancerDown:
            self.info = None
            return
        await self._replace(pid)
        self.info = None
        if self._child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(self._child.wait, 5.0)

    def close(self) -> None:
        """Forget the connection; the balancer keeps serving."""
        self._disconnect()

    # asking ---------------------------------------------------------------

    async def outstanding(self, fleet: str, instance_id: str) -> int:
        """Requests in flight on an instance; 0 when the balancer cannot say."""
        try:
            return int((await self.call("outstanding", fleet=fleet, id=instance_id))["outstanding"])
        except BalancerDown:
            return 0

    async def stats(self, fleet: str) -> dict[str, dict[str, Any]]:
        try:
            stats: dict[str, dict[str, Any]] = (await self.call("stats", fleet=fleet))["stats"]
        except BalancerDown:
            return {}
        return stats

    async def metrics(self) -> str:
        try:
            return str((await self.call("metrics"))["text"])
        except BalancerDown as exc:
            return f"# {exc.message}\n"
