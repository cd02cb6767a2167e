"""The load balancer's own process: it serves the fleets' listeners and outlives the agent.

The agent starts it in its own session, like an instance, so a SIGKILLed or
restarting agent never drops a listener or a connection: the balancer keeps
routing to the last backends it was given (and still retries another one when
a backend refuses), while the agent is away. The agent reconfigures it over
a private Unix socket (``KILN_HOME/agent/lb.sock``, 0600) with one JSON line
per request, declaratively: each ``configure`` carries every fleet's listen
address, policy, backends and routable instances, so a message lost or
repeated changes nothing, and a restarted agent re-adopts the running
balancer by simply configuring it again.

One balancer per ``KILN_HOME``, held by an exclusive ``flock`` on
``agent/lb.lock``. Counters live here, so they survive agent restarts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import gc
import json
import logging
import os
import signal
import socket
import ssl
import sys
import time
from pathlib import Path
from typing import Any

from kiln import __version__
from kiln.errors import KilnError
from kiln.home import Home
from kiln.local import affinity, compiled
from kiln.local.challenges import Challenges
from kiln.local.front import Front
from kiln.local.handover import CODE, inherited, send_listeners
from kiln.local.lb import Balancer
from kiln.local.metrics import Counters, render_counters
from kiln.local.procs import loop_factory, raise_fd_limit
from kiln.local.proxy import limits_from, networks
from kiln.local.routes import Routes, claim_error, tls_mismatch
from kiln.local.tls import CertFiles, Certificates, Sni
from kiln.pids import lock_exclusive, read_pid_file

PROTOCOL = 2  # bumped when the control messages change; a mismatch means "replace me"
WATCH_SECONDS = 2.0
LOG_MAX = 10 * 1024 * 1024
RETIRE_SECONDS = 90.0  # longest a replaced balancer lingers for its open connections
ALREADY_RUNS = 3  # exit status: another balancer holds the lock
log = logging.getLogger("kiln.lb")
Address = tuple[str, int]
Said = dict[str, str | None]  # an error as the agent shows it: message and hint


def socket_path(home: Home) -> Path:
    return home.agent_dir / "lb.sock"


def lock_path(home: Home) -> Path:
    return home.agent_dir / "lb.lock"


def pid_path(home: Home) -> Path:
    return home.balancer_pid_file


def log_path(home: Home) -> Path:
    return home.agent_dir / "lb.log"


def read_pid(home: Home) -> int | None:
    return read_pid_file(pid_path(home))


class BalancerHost:
    """Every fleet's Balancer in this process, set to what the agent last said."""

    def __init__(self, inherit: dict[Address, socket.socket] | None = None) -> None:
        self.inherited = inherit or {}  # listening sockets a predecessor handed over
        self.lock_fd = -1  # released when we hand over to a successor
        self.retiring = False
        self.controls: set[asyncio.StreamWriter] = set()
        self.control_server: asyncio.Server | None = None
        self.fleets: dict[str, Balancer] = {}  # each fleet's instances, by name
        self.fronts: dict[Address, Front] = {}  # the listeners, by address
        self.winding_down: set[asyncio.Task[None]] = set()  # old listeners finishing requests
        self.certs = Certificates()
        self.counters: dict[str, dict[str, Counters]] = {}  # fleet -> instance -> counters
        self.started = time.time()
        self.done = asyncio.Event()
        self.affinity_key = os.urandom(affinity.KEY_BYTES)  # serve() loads the home's

    async def handle(self, msg: dict[str, Any]) -> dict[str, Any]:
        op = msg.get("op")
        if op == "hello":
            return {"pid": os.getpid(), "version": __version__, "protocol": PROTOCOL,
                    "code": CODE, "started": self.started}  # fmt: skip
        if op == "configure":
            return await self.configure(msg["fleets"], msg.get("acme", []))
        if op == "outstanding":
            balancer = self.fleets.get(str(msg["fleet"]))
            return {"outstanding": balancer.outstanding(str(msg["id"])) if balancer else 0}
        if op == "stats":
            counters = self.counters.get(str(msg["fleet"]), {})
            return {"stats": {i: c.as_dict() for i, c in counters.items()}}
        if op == "metrics":
            return {"text": self.metrics()}
        if op == "exit":
            self.done.set()
            return {}
        raise ValueError(f"unknown op {op!r}")

    async def configure(
        self, fleets: dict[str, dict[str, Any]], acme: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        """Make the listeners, routes and backends exactly these; report what could not serve.

        Fleets that share a listen address share one listener, routed by Host.
        New listeners open before unwanted ones close, so a fleet that moves
        is never without one. ``acme``: the plain listeners where ACME
        challenges are answered (``kiln.local.challenges``).
        """
        for name in set(self.fleets) - set(fleets):
            await self.fleets.pop(name).close()
            self.counters.pop(name, None)
        for name, spec in fleets.items():
            self._pool(name, spec)
        wanted: dict[Address, list[str]] = {}
        for name, spec in sorted(fleets.items()):
            wanted.setdefault((str(spec["listen"][0]), int(spec["listen"][1])), []).append(name)
        errors: dict[str, Said] = {}
        for address, names in wanted.items():
            errors |= await self._front(address, names, fleets)
        challenges = await self._challenges(acme or [])
        keep = set(wanted) | {a for a, f in self.fronts.items() if f.acme is not None}
        for address in keep - set(wanted):  # challenges only: no fleet routed here now
            self.fronts[address].routes = Routes()
        for address in set(self.fronts) - keep:
            self._wind_down(self.fronts.pop(address))
            log.info("stopped listening on %s:%s", *address)
        for sock in self.inherited.values():  # handed over, but no fleet listens there now
            sock.close()
        self.inherited.clear()
        listening = {
            name: address in self.fronts and name not in errors
            for address, names in wanted.items()
            for name in names
        }
        return {"listening": listening, "errors": errors, "acme": challenges}

    async def _challenges(self, specs: list[dict[str, Any]]) -> dict[str, Any]:
        """The plain listeners answering ACME challenges (opened when no fleet listens
        there); what listens, and errors, by "host:port"."""
        listening: set[Address] = set()
        errors: dict[str, Said] = {}
        for spec in specs:
            address = (str(spec["listen"][0]), int(spec["listen"][1]))
            where = f"{address[0]}:{address[1]}"
            front = self.fronts.get(address)
            if front is None:
                front = Front("acme")
                try:
                    await front.start(*address, None, self.inherited.pop(address, None))
                except KilnError as exc:
                    errors[where] = {"message": exc.message, "hint": exc.hint}
                    continue
                self.fronts[address] = front
                log.info("answering ACME challenges on %s", where)
            if front.sni is not None:
                errors[where] = {
                    "message": f"acme.http {where} is a TLS listener (fleet {front.fleet})",
                    "hint": "set [provider.local] acme.http to a plain-HTTP address",
                }
                continue
            front.acme = Challenges.from_spec(spec)
            listening.add(address)
        for address, front in self.fronts.items():
            if address not in listening:
                front.acme = None
        return {"listening": [f"{h}:{p}" for h, p in listening], "errors": errors}

    def _wind_down(self, front: Front) -> None:
        """A listener no fleet wants any more (it moved): refuse new connections at once,
        finish the requests under way on the open ones, then close them."""
        front.retire()
        task = asyncio.get_running_loop().create_task(self._finish(front))
        self.winding_down.add(task)
        task.add_done_callback(self.winding_down.discard)

    async def _finish(self, front: Front) -> None:
        deadline = time.monotonic() + RETIRE_SECONDS
        while front.clients and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await front.close()

    def _pool(self, name: str, spec: dict[str, Any]) -> None:
        """A fleet's backends, routable set, policy and counters."""
        balancer = self.fleets.get(name)
        if balancer is None:
            balancer = self.fleets[name] = Balancer(name, str(spec["policy"]))
            balancer.sweep()
        balancer.policy = str(spec["policy"])
        balancer.limits = limits_from(spec.get("limits", {}))
        balancer.trusted = networks(spec.get("trusted_proxies", []))
        counters = self.counters.setdefault(name, {})
        known = set(spec["known"])
        for gone in [i for i in counters if i not in known]:
            del counters[gone]
        backends = {str(i): (str(h), int(p)) for i, (h, p) in spec["backends"].items()}
        for instance_id in [i for i in balancer.backends if i not in backends]:
            balancer.remove(instance_id)
        for instance_id, (host, port) in backends.items():
            balancer.add(instance_id, host, port, counters.setdefault(instance_id, Counters()))
        balancer.set_routable(str(i) for i in spec["routable"])
        affinity.configure(balancer, spec.get("sticky"), self.affinity_key)

    async def _front(
        self, address: Address, names: list[str], fleets: dict[str, dict[str, Any]]
    ) -> dict[str, Said]:
        """The listener on one address, its Host table and certificates; errors by fleet."""
        errors: dict[str, Said] = {}
        routes: Routes[Balancer] = Routes()
        certs: dict[str, tuple[list[str], CertFiles]] = {}
        front = self.fronts.get(address)
        serving = set(front.routes.owners.values()) if front else set()
        order = sorted(names, key=lambda n: (n not in serving, n))  # first come, first kept
        secure = bool(fleets[order[0]].get("tls"))
        for name in order:
            spec = fleets[name]
            hosts = [str(h) for h in spec.get("hosts", ())]
            try:
                if bool(spec.get("tls")) != secure:
                    raise claim_error(name, address, tls_mismatch(order[0], secure))
                if secure:
                    files = CertFiles(str(spec["tls"]["cert"]), str(spec["tls"]["key"]))
                    self.certs.get(files)  # loads, or says why not
                problem = routes.claim(name, hosts, self.fleets[name])
                if problem is not None:
                    raise claim_error(name, address, problem)
            except KilnError as exc:
                errors[name] = {"message": exc.message, "hint": exc.hint}
                continue
            if secure:
                certs[name] = (hosts, files)
        if front is not None and (front.sni is not None) != secure:
            await self.fronts.pop(address).close()  # switching to or from TLS: reopen
            front = None
        if front is None:
            if secure and not certs:
                return errors
            front = Front(", ".join(names))
            if secure:
                front.sni = Sni(self.certs.get(next(iter(certs.values()))[1]))
            try:
                sock = self.inherited.pop(address, None)
                await front.start(*address, front.sni.context if front.sni else None, sock)
            except KilnError as exc:
                return {name: {"message": exc.message, "hint": exc.hint} for name in names}
            self.fronts[address] = front
            log.info("listening on %s:%s for %s", *address, front.fleet)
        front.routes = routes
        front.certs = certs
        self._certificates(front)
        self._client_rules(front, [fleets[n] for n in names])
        return errors

    def _certificates(self, front: Front) -> None:
        """Point the listener's SNI table at the certificates as they are on disk now."""
        if front.sni is None:
            return
        table: Routes[ssl.SSLContext] = Routes()
        first: ssl.SSLContext | None = None
        for name, (hosts, files) in front.certs.items():
            try:
                context = self.certs.get(files)
            except KilnError as exc:
                log.error("%s", exc.message)
                continue
            table.claim(name, hosts, context)
            first = first or context
        front.sni.routes = table
        front.sni.default = table.default or first or front.sni.default

    def refresh_certificates(self) -> None:
        """Pick up renewed certificate files, even while no agent configures us."""
        for front in self.fronts.values():
            self._certificates(front)
        self.certs.forget_except(
            {files for front in self.fronts.values() for _, files in front.certs.values()}
        )

    @staticmethod
    def _client_rules(front: Front, specs: list[dict[str, Any]]) -> None:
        """Before a request names its fleet, the fleets there agree: the shortest client
        timeouts, and only the proxies every one of them trusts."""
        limits: dict[str, float] = {}
        for spec in specs:
            for key, value in spec.get("limits", {}).items():
                limits[key] = min(float(value), limits.get(key, float(value)))
        front.limits = limits_from(limits)
        trusted = set.intersection(*(set(s.get("trusted_proxies", [])) for s in specs))
        front.trusted = networks(sorted(trusted))

    def metrics(self) -> str:
        """The balancer's counters as Prometheus text."""
        per_instance = [
            ({"fleet": name, "instance": i}, c)
            for name, counters in self.counters.items()
            for i, c in counters.items()
        ]
        fleets = self.fleets.items()
        lines = render_counters("kiln_lb_instance", per_instance)
        lines += render_counters("kiln_lb_fleet", [({"fleet": n}, b.totals) for n, b in fleets])
        lines += ["# HELP kiln_lb_retries_total Requests retried on another instance."]
        lines += ["# TYPE kiln_lb_retries_total counter"]
        lines += [f'kiln_lb_retries_total{{fleet="{n}"}} {b.retries}' for n, b in fleets]
        lines += ["# HELP kiln_lb_unavailable_total Requests answered 503: no healthy instance."]
        lines += ["# TYPE kiln_lb_unavailable_total counter"]
        lines += [f'kiln_lb_unavailable_total{{fleet="{n}"}} {b.unavailable}' for n, b in fleets]
        lines += ["# HELP kiln_lb_tunnels Open upgraded connections (WebSocket) per instance."]
        lines += ["# TYPE kiln_lb_tunnels gauge"]
        lines += [
            f'kiln_lb_tunnels{{fleet="{n}",instance="{i}"}} {len(backend.tunnels)}'
            for n, b in fleets
            for i, backend in b.backends.items()
        ]
        lines += ["# HELP kiln_lb_unrouted_total Requests for a Host no fleet claims: 404."]
        lines += ["# TYPE kiln_lb_unrouted_total counter"]
        lines += [
            f'kiln_lb_unrouted_total{{listen="{h}:{p}"}} {f.unrouted}'
            for (h, p), f in self.fronts.items()
        ]
        return "\n".join(lines) + "\n"

    async def close(self) -> None:
        for balancer in [*self.fronts.values(), *self.fleets.values()]:
            await balancer.close()
        self.fronts.clear()
        self.fleets.clear()

    async def control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One JSON request per line, one JSON answer per line."""
        self.controls.add(writer)
        try:
            while line := await reader.readline():
                try:
                    msg = json.loads(line)
                    if isinstance(msg, dict) and msg.get("op") == "handover":
                        self.hand_over(writer)
                        return
                    answer = {"ok": True, **await self.handle(msg)}
                except (ValueError, KeyError, TypeError) as exc:
                    answer = {"ok": False, "error": f"bad request: {exc}"}
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self.controls.discard(writer)
            writer.close()

    def hand_over(self, writer: asyncio.StreamWriter) -> None:
        """Give the listening sockets to a successor, then stop accepting and retire:
        finish the connections we have, and exit."""
        listeners = [(h, p, fd) for (h, p), f in self.fronts.items() for fd in f.listening_fds()]
        send_listeners(writer, listeners)
        for front in self.fronts.values():
            front.retire()
        self.retiring = True
        if self.control_server is not None:
            self.control_server.close()
        for other in list(self.controls):
            other.close()  # an agent talking to us reconnects, to the successor
        fcntl.flock(self.lock_fd, fcntl.LOCK_UN)
        log.info("handed %d listeners over; finishing open connections", len(listeners))
        asyncio.get_running_loop().create_task(self._retire())

    async def _retire(self) -> None:
        deadline = time.monotonic() + RETIRE_SECONDS
        while time.monotonic() < deadline and any(f.clients for f in self.fronts.values()):
            await asyncio.sleep(0.5)
        self.done.set()


def serve(home: Home, inherit: dict[Address, socket.socket] | None = None) -> int:
    """Run the balancer until told to exit, SIGTERM, or its socket is taken away."""
    home.agent_dir.mkdir(parents=True, mode=0o700, exist_ok=True)
    lock_fd = os.open(lock_path(home), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if not lock_exclusive(lock_fd, wait=2.0):
            log.error("a balancer already runs for %s (pid %s)", home.root, read_pid(home))
            return ALREADY_RUNS
        socket_path(home).unlink(missing_ok=True)  # stale: we hold the lock
        pid_path(home).write_text(f"{os.getpid()}\n")
        try:
            with asyncio.Runner(loop_factory=loop_factory()) as runner:
                runner.run(_serve(home, BalancerHost(inherit), lock_fd))
        finally:
            with contextlib.suppress(OSError):
                if read_pid(home) == os.getpid():
                    pid_path(home).unlink()
    finally:
        os.close(lock_fd)
    return 0


def settle_heap() -> None:
    """Move what start-up made (modules, classes, the config) out of the collector's way.

    The balancer's heap after its imports holds ~19,000 tracked objects; a full
    collection walked all of them, 10-17 ms during which no request moved. Frozen,
    a full collection walks only what serving created since (requests themselves
    leave almost nothing for the collector: one young collection every few
    seconds under load, 0.2 ms).
    """
    gc.collect()
    gc.freeze()


async def _serve(home: Home, host: BalancerHost, lock_fd: int) -> None:
    raise_fd_limit()
    settle_heap()
    host.lock_fd = lock_fd
    host.affinity_key = affinity.load_key(home.agent_dir / "affinity.key")
    path = socket_path(home)
    old_umask = os.umask(0o177)  # born private: no window where others connect
    try:
        server = host.control_server = await asyncio.start_unix_server(host.control, str(path))
    finally:
        os.umask(old_umask)
    inode = path.stat().st_ino
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, host.done.set)
    watcher = asyncio.create_task(_watch(path, inode, host))
    log.info("balancer %s serving %s; %s", os.getpid(), path, compiled.describe())
    try:
        await host.done.wait()
    finally:
        watcher.cancel()
        server.close()
        for writer in list(host.controls):  # the agent's open connection: let its handler
            writer.close()  # see the end now, not be cancelled (a traceback) as the loop ends
        await asyncio.sleep(0)
        await host.close()
        # Handed over, the path is the successor's: its socket may even have our old
        # inode number (freed when the successor unlinked ours, then reused), and
        # unlinking it made the successor think its home was gone and exit.
        with contextlib.suppress(OSError):
            if not host.retiring and path.stat().st_ino == inode:
                path.unlink()
        log.info("balancer %s stopped", os.getpid())


async def _watch(path: Path, inode: int, host: BalancerHost) -> None:
    """Reload renewed certificates; exit when the control socket is gone (its KILN_HOME
    was removed: nobody can reach us)."""
    done = host.done
    while True:
        await asyncio.sleep(WATCH_SECONDS)
        host.refresh_certificates()
        try:
            alive = path.stat().st_ino == inode
        except OSError:
            alive = False
        if not alive and not host.retiring:
            log.warning("control socket %s is gone; exiting", path)
            done.set()
            return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kiln.local.lbproc")
    parser.add_argument("--home", required=True)
    parser.add_argument("--inherit", help="listening sockets handed over: [[host, port, fd]]")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
    )
    return serve(Home.resolve(args.home), inherited(args.inherit))


if __name__ == "__main__":
    sys.exit(main())
