"""The ``kiln ui`` web server: one read-only page, its JSON, and live updates.

It serves on a loopback address only, never on a fleet's listener, and
answers only a browser that presents the token printed by ``kiln ui`` (in the
first URL, then as an HttpOnly, SameSite=Strict cookie) with a Host header
naming that loopback address, so neither another user on the host nor a
web page the user visits (DNS rebinding) can read it. The local agent serves
the same page through the same routes and guard (:mod:`kiln.local.uipages`).

Once a second it reads the platform (status, the deployment timeline, the
load balancer's counters; images every ten seconds) in a thread, so a slow
agent or AWS never stalls the page, and pushes the result to every open page
over server-sent events. Request and error rates come from the traffic the
platform stored (the local agent keeps a day of five-second buckets, so the
sparkline and each deployment's "requests, errors while it ran" cover
deployments nobody watched); where nothing is stored (AWS), this process
samples the counters while it runs and covers the time the page has been served.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import secrets
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Protocol

from aiohttp import web

from kiln.errors import KilnError
from kiln.platform import Report
from kiln.ui.loopback import HINT, browser_hosts, is_loopback, origin

COOKIE = "kiln_ui"
SERIES_SECONDS = 900  # the sparkline's memory when the page samples: fifteen minutes
STORED_SECONDS = 3600  # the sparkline's window over stored traffic: an hour
TIMELINE_LIMIT = 30
IMAGES_EVERY = 10.0


class PageSource(Protocol):
    """What the page reads: a platform, or the local agent's view of one of its fleets."""

    @property
    def name(self) -> str: ...

    def status(self) -> dict[str, Any]: ...

    def timeline(self, limit: int) -> list[dict[str, Any]]: ...

    def counters(self) -> dict[str, tuple[int, int]]: ...

    def traffic(self, since: float) -> list[list[float]] | None: ...

    def images(self, app: str | None) -> Report: ...


@dataclass(frozen=True)
class Sample:
    """What the fleet served in the ``seconds`` before ``at``."""

    at: float
    seconds: float
    requests: int
    errors: int  # 5xx answers and failed upstream attempts


@dataclass
class Snapshot:
    """What the page shows, as one JSON document."""

    version: int = 0
    data: dict[str, Any] = field(default_factory=dict)


class Collector:
    """Reads the platform in a thread, once a second, and keeps the latest snapshot."""

    def __init__(
        self,
        platform: PageSource,
        app: str,
        interval: float = 1.0,
        executor: Executor | None = None,  # None: asyncio's default threads
    ) -> None:
        self.platform = platform
        self.executor = executor
        self.app = app
        self.interval = interval
        self.series: deque[Sample] = deque(maxlen=int(SERIES_SECONDS / interval))
        self.snapshot = Snapshot()
        self.changed = asyncio.Condition()
        self._counts: dict[str, tuple[int, int]] = {}
        self._counted_at: float | None = None
        self._images: list[dict[str, Any]] = []
        self._images_at = 0.0
        self.asked = time.monotonic()  # when a page last asked: the agent stops idle ones
        self.watching = 0  # open event streams
        self.closed = False  # ends every stream, so a server's shutdown never waits on one

    async def run(self) -> None:
        while True:
            data = await asyncio.get_running_loop().run_in_executor(self.executor, self.read)
            async with self.changed:
                self.snapshot = Snapshot(self.snapshot.version + 1, data)
                self.changed.notify_all()
            await asyncio.sleep(self.interval)

    async def close(self) -> None:
        async with self.changed:
            self.closed = True
            self.changed.notify_all()

    async def first(self, timeout: float = 15.0) -> None:
        """Wait (a while) for the first look, so a page never starts from nothing."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout), self.changed:
                await self.changed.wait_for(lambda: self.snapshot.version > 0 or self.closed)

    def read(self) -> dict[str, Any]:
        """One look at the platform; a failure is shown on the page, not raised."""
        now = time.time()
        data: dict[str, Any] = {"app": self.app, "provider": self.platform.name, "at": now}
        errors: list[str] = []
        data["status"] = _attempt(self.platform.status, errors)
        data["timeline"] = _attempt(lambda: self.platform.timeline(TIMELINE_LIMIT), errors) or []
        counts = _attempt(self.platform.counters, errors) or {}
        self._sample(now, counts)
        stored = _attempt(lambda: self.platform.traffic(now - STORED_SECONDS), errors)
        samples = list(self.series) if stored is None else [Sample(*row) for row in stored]
        for deployment in data["timeline"]:
            deployment["traffic"] = _traffic_during(deployment, samples, now)
        if now - self._images_at >= IMAGES_EVERY:
            report = _attempt(lambda: self.platform.images(self.app), errors)
            if report is not None:
                self._images, self._images_at = list(report.data), now
        data["images"] = self._images
        data["counters"] = {i: {"requests": r, "errors": e} for i, (r, e) in counts.items()}
        data["series"] = [
            [round(s.at, 1), round(s.requests / s.seconds, 2), round(s.errors / s.seconds, 2)]
            for s in samples
            if s.seconds > 0
        ]
        data["errors"] = errors
        return data

    def _sample(self, now: float, counts: dict[str, tuple[int, int]]) -> None:
        """Rates from counter deltas; an instance seen for the first time counts from zero."""
        if self._counted_at is not None and now > self._counted_at:
            dt = now - self._counted_at
            requests = errors = 0
            for instance, (r, e) in counts.items():
                before_r, before_e = self._counts.get(instance, (0, 0))
                requests += max(0, r - before_r)
                errors += max(0, e - before_e)
            self.series.append(Sample(now, dt, requests, errors))
        self._counts, self._counted_at = counts, now


def _traffic_during(
    deployment: dict[str, Any], samples: list[Sample], now: float
) -> dict[str, Any] | None:
    """Requests and errors served while a deployment ran, or None if no sample covers it.

    A sample counts when its interval overlaps the deployment's; ``covered`` says
    whether the samples reach back to its start (a page opened mid-deployment, or
    a deployment older than what is kept, is only partly covered).
    """
    started = deployment.get("started")
    if not isinstance(started, int | float):
        return None
    finished = deployment.get("finished") or now
    inside = [s for s in samples if s.at > started and s.at - s.seconds < finished]
    if not inside:
        return None
    return {
        "requests": sum(s.requests for s in inside),
        "errors": sum(s.errors for s in inside),
        "covered": samples[0].at - samples[0].seconds <= started,
    }


def _attempt(read: Callable[[], Any], errors: list[str]) -> Any:
    try:
        return read()
    except KilnError as exc:
        errors.append(exc.message)
    except OSError as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    return None


def _static(name: str) -> bytes:
    return resources.files("kiln.ui").joinpath("static", name).read_bytes()


_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def guard(token: str, hosts: frozenset[str]) -> Any:
    """Refuse a request without the token (query, then cookie) or naming another Host."""

    @web.middleware
    async def check(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.host not in hosts:
            return web.Response(status=421, text="misdirected request\n")
        given = request.query.get("token") or request.cookies.get(COOKIE, "")
        if not hmac.compare_digest(given.encode(), token.encode()):
            return web.Response(
                status=403, text="open the address kiln ui printed (it carries the token)\n"
            )
        response = await handler(request)
        if request.query.get("token"):
            response.set_cookie(COOKIE, token, httponly=True, samesite="Strict", path="/")
        return response

    return check


def add_page(
    router: web.UrlDispatcher, prefix: str, collector_for: Callable[[web.Request], Collector]
) -> None:
    """The page's routes under ``prefix`` ('' or e.g. '/ui/{fleet}'); its URLs are relative."""

    async def static(request: web.Request) -> web.Response:
        collector_for(request)  # an unknown fleet is a 404 before any file
        name = request.match_info.get("name") or "index.html"
        suffix = name[name.rfind(".") :]
        if name not in ("index.html", "ui.js", "ui.css"):
            raise web.HTTPNotFound()
        return web.Response(
            body=_static(name),
            content_type=_TYPES[suffix],
            charset="utf-8",
            headers=_SECURITY_HEADERS,
        )

    async def state(request: web.Request) -> web.Response:
        collector = collector_for(request)
        await collector.first()
        return web.json_response(collector.snapshot.data, dumps=_dumps, headers=_SECURITY_HEADERS)

    async def events(request: web.Request) -> web.StreamResponse:
        collector = collector_for(request)
        response = web.StreamResponse(
            headers={**_SECURITY_HEADERS, "Content-Type": "text/event-stream"}
        )
        await response.prepare(request)
        seen = -1
        collector.watching += 1
        try:
            while True:
                async with collector.changed:
                    while collector.snapshot.version == seen and not collector.closed:
                        await collector.changed.wait()
                    snapshot = collector.snapshot
                if collector.closed:
                    return response
                seen = snapshot.version
                await response.write(f"data: {_dumps(snapshot.data)}\n\n".encode())
        finally:
            collector.watching -= 1
            collector.asked = time.monotonic()

    async def slash(request: web.Request) -> web.Response:
        collector_for(request)
        target = request.rel_url.with_path(request.path + "/")
        raise web.HTTPFound(target.with_query(request.rel_url.query))

    if prefix:
        router.add_get(prefix, slash)
    router.add_get(f"{prefix}/", static)
    router.add_get(f"{prefix}/static/{{name}}", static)
    router.add_get(f"{prefix}/api/state", state)
    router.add_get(f"{prefix}/events", events)


def make_app(collector: Collector, token: str, host: str, port: int) -> web.Application:
    app = web.Application(middlewares=[guard(token, browser_hosts(host, port))])
    add_page(app.router, "", lambda request: collector)
    return app


def _dumps(data: Any) -> str:
    return json.dumps(data, default=str, separators=(",", ":"))


@dataclass
class Served:
    """A running page: where it is and how to open it."""

    url: str
    host: str
    port: int
    token: str


@contextlib.asynccontextmanager
async def serve(
    platform: PageSource, app_name: str, *, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[Served]:
    """Serve the page until the block ends; ``port=0`` picks a free port."""
    host = host.strip("[]")
    if not is_loopback(host):
        raise KilnError(f"kiln ui serves on a loopback address only, not {host}", hint=HINT)
    token = secrets.token_urlsafe(24)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise KilnError(
            f"kiln ui cannot listen on {host}:{port}: {exc.strerror}",
            hint="pick another --port, or 0 for any free one",
        ) from None
    bound = sock.getsockname()[1]
    collector = Collector(platform, app_name)
    task = asyncio.create_task(collector.run())
    runner = web.AppRunner(make_app(collector, token, host, bound), access_log=None)
    try:
        await runner.setup()
        await web.SockSite(runner, sock).start()
        yield Served(f"http://{origin(host, bound)}/?token={token}", host, bound, token)
    finally:
        await collector.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await runner.cleanup()
        sock.close()
