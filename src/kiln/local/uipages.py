"""The ``kiln ui`` page, served by the agent for as long as it runs.

Same routes, files, collector and guard as ``kiln ui`` (:mod:`kiln.ui.server`);
what it reads is what ``kiln status`` reads, through the agent's own API
(:class:`~kiln.local.pagesource.FleetPage`), so there is no second renderer
and no second source of truth. It is served in two places, never on a fleet's
listener (that is the balancer process, which has no route to the agent):

- the agent's socket, ``/ui/<fleet>/``: the socket is 0600 in a 0700
  directory, so whoever can connect is the agent's user (or root);
- each ``[provider.local] ui_listen`` loopback address, ``/ui/<fleet>/`` for the
  fleets naming it, behind the home's token (``agent/ui.token``, 0600). A
  loopback port is open to every user of the host, so the token is what keeps
  them out: only the agent's user can read it. It is given once in the URL
  ``kiln ui`` prints, then kept as an HttpOnly, SameSite=Strict cookie; the
  Host must name the loopback address (no DNS rebinding). Checking the peer's
  uid in /proc/net/tcp instead would let in every process of the user, such as a
  web page in the user's browser, and /proc may be hidden (hidepid); a token
  needs nothing from the kernel and works the same on IPv4 and IPv6.

A fleet's collector starts when its page is first asked for and stops once
nobody has looked for a minute, so an agent nobody watches does no work for it.
Collectors read in two threads of their own: however many pages are open,
they never hold a thread of the pool the agent launches and waits for
instances in (and their reads call the agent's API, which may need one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web

from kiln.home import Home
from kiln.local.client import AgentClient
from kiln.local.model import FleetSettings
from kiln.local.pagesource import FleetPage
from kiln.local.provider import AgentReads
from kiln.ui.loopback import browser_hosts, origin, parse_loopback
from kiln.ui.server import Collector, add_page, guard

log = logging.getLogger("kiln.agent")
IDLE = 60.0  # a collector nobody asked for this long stops
READERS = 2  # threads the pages read in, whatever the number of fleets watched
PREFIX = "/ui/{fleet}"
Address = tuple[str, int]


def token_path(home: Home) -> Path:
    return home.agent_dir / "ui.token"


def ensure_token(home: Home) -> str:
    """The home's page token: made once, readable by its user only, kept across restarts."""
    path = token_path(home)
    with contextlib.suppress(FileNotFoundError):
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd) as f:
            st = os.fstat(f.fileno())
            token = f.read().strip()
        if st.st_uid == os.getuid() and not st.st_mode & 0o077 and len(token) >= 32:
            return token
    token = secrets.token_urlsafe(32)
    temporary = path.with_name(f".ui.token.{os.getpid()}")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    temporary.replace(path)
    return token


def page_url(address: Address, fleet: str, token: str) -> str:
    return f"http://{origin(*address)}/ui/{quote(fleet, safe='')}/?token={token}"


class FleetPages:
    """The agent's pages: a collector per watched fleet, a listener per ui_listen address."""

    def __init__(self, home: Home, fleets: Callable[[], Mapping[str, FleetSettings]]) -> None:
        self.home = home
        self.fleets = fleets
        self.token = ensure_token(home)
        self.collectors: dict[str, tuple[Collector, asyncio.Task[None]]] = {}
        self.listeners: dict[Address, web.AppRunner] = {}
        self.errors: dict[Address, str] = {}
        self._ticking = asyncio.Lock()  # the run loop and GET /v1/ui both tick
        self.readers = ThreadPoolExecutor(READERS, thread_name_prefix="kiln-page")

    def add_to(self, app: web.Application) -> None:
        """The page on the agent's socket: owner-only already, so no token there."""
        add_page(app.router, PREFIX, lambda request: self.collector(request.match_info["fleet"]))

    def collector(self, fleet: str) -> Collector:
        settings = self.fleets().get(fleet)
        if settings is None:
            raise web.HTTPNotFound(text=f"no fleet {fleet} on this host\n")
        running = self.collectors.get(fleet)
        if running is None:
            reads = AgentReads(self.home, AgentClient(self.home))  # never starts an agent
            source = FleetPage(
                self.home,
                fleet,
                reads,
                traffic=reads.traffic,
                max_image_age=settings.max_image_age,
                acme=settings.acme is not None,
            )
            collector = Collector(source, settings.app or fleet, executor=self.readers)
            running = self.collectors[fleet] = (collector, asyncio.create_task(collector.run()))
        running[0].asked = time.monotonic()
        return running[0]

    def wanted(self) -> dict[Address, set[str]]:
        """Each ui_listen address and the fleets that name it."""
        wanted: dict[Address, set[str]] = {}
        for name, settings in self.fleets().items():
            if settings.ui_listen is not None:
                address = parse_loopback(settings.ui_listen, "ui_listen")
                wanted.setdefault(address, set()).add(name)
        return wanted

    def describe(self) -> dict[str, Any]:
        """``GET /v1/ui``: where each fleet's page is, with its token, or why it is not."""
        listening = {}
        for address, fleets in self.wanted().items():
            open_ = address in self.listeners
            listening[origin(*address)] = {
                "fleets": sorted(fleets),
                "error": None if open_ else self.errors.get(address, "not open"),
                "urls": {f: page_url(address, f, self.token) for f in sorted(fleets)}
                if open_
                else {},
            }
        return {"socket_path": PREFIX, "listening": listening}

    async def run(self, every: float = 1.0) -> None:
        while True:
            await self.tick()
            await asyncio.sleep(every)

    async def tick(self) -> None:
        async with self._ticking:
            await self._tick()

    async def _tick(self) -> None:
        wanted = self.wanted()
        for address in [a for a in self.listeners if a not in wanted]:
            await self.listeners.pop(address).cleanup()
            log.info("page listener %s closed", origin(*address))
        for address in [a for a in wanted if a not in self.listeners]:
            await self._listen(address)
        now = time.monotonic()
        for fleet, (collector, _task) in list(self.collectors.items()):
            gone = fleet not in self.fleets()
            if gone or (not collector.watching and now - collector.asked > IDLE):
                await self._stop(fleet)

    async def _listen(self, address: Address) -> None:
        host, port = address
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            sock.close()
            error = f"cannot listen on {origin(*address)}: {exc.strerror}"
            if self.errors.get(address) != error:
                log.warning("page listener: %s", error)
            self.errors[address] = error
            return
        self.errors.pop(address, None)
        app = web.Application(middlewares=[guard(self.token, browser_hosts(host, port))])
        add_page(app.router, PREFIX, lambda request: self._listed(address, request))
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        self.listeners[address] = runner
        log.info("page listener %s open", origin(*address))

    def _listed(self, address: Address, request: web.Request) -> Collector:
        """Only the fleets whose ui_listen is this address are shown on it."""
        fleet = request.match_info["fleet"]
        if fleet not in self.wanted().get(address, ()):
            raise web.HTTPNotFound(text=f"no page for fleet {fleet} here\n")
        return self.collector(fleet)

    async def _stop(self, fleet: str) -> None:
        collector, task = self.collectors.pop(fleet)
        await collector.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def close(self) -> None:
        """End every stream and listener, so the agent's own shutdown never waits on a page."""
        for fleet in list(self.collectors):
            await self._stop(fleet)
        for runner in self.listeners.values():
            await runner.cleanup()
        self.listeners.clear()
        self.readers.shutdown(wait=False, cancel_futures=True)
