"""The fleet's HTTP/1.1 load balancer: a streaming reverse proxy on asyncio.

Routes each request to a registered, healthy instance (least outstanding
requests, or round-robin), over keep-alive upstream connections. A request
whose instance fails before any response byte arrived is retried on another
instance when nothing was sent yet or the method is idempotent and the body
could be replayed, as nginx and HAProxy do; so an instance that dies, even by
SIGKILL, costs clients nothing. Bodies stream in both directions; only request
bodies up to ``REPLAY_LIMIT`` are held, so they can be replayed on a retry.

The per-request path is kept lean (one pass over each head, no timer per
request): a sweeper enforces the idle and response timeouts instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import socket
import ssl
import time
from collections.abc import Coroutine, Iterable
from typing import TYPE_CHECKING, Any, cast

from kiln.errors import ProviderError
from kiln.local.backend import Backend
from kiln.local.http1 import (
    IDEMPOTENT,
    BadMessage,
    Request,
    chunk,
    request_head,
    simple_response,
    switching_head,
)
from kiln.local.listening import address_taken
from kiln.local.messages import BODY, END, HEAD
from kiln.local.metrics import Counters
from kiln.local.proxy import (
    BUSY,
    Client,
    ClientFailed,
    Limits,
    Networks,
    ResponseTimeout,
    read_body,
    refusal,
    send_body,
)
from kiln.local.stream import protocol_factory
from kiln.local.upstream import ClientGone, Upstream
from kiln.local.wsclose import tunnel_for

if TYPE_CHECKING:
    from kiln.local.affinity import Affinity

TLS_HANDSHAKE_TIMEOUT = 10.0
REPLAY_LIMIT = 64 * 1024  # request bodies up to this are read whole before an instance is picked
SWEEP = 0.5  # seconds between two looks at the deadlines
SUSPECT_SECONDS = 1.0  # avoid an instance that refused a connection for this long
_NETWORK_ERRORS = (OSError, asyncio.IncompleteReadError, BadMessage)
REPORTS_PER_MINUTE = 10  # the balancer's own 5xx answers logged, per fleet; then counted
_monotonic = time.monotonic  # bound once: read for every request

log = logging.getLogger("kiln.lb")


class _Retry(Exception):
    """The attempt failed in a way that is safe to try on another instance."""


class _Stale(Exception):
    """A reused keep-alive connection was closed under us: try the same instance afresh."""


def _pooled(backend: Backend) -> Upstream | None:
    """An idle connection to ``backend`` that can carry a request, if one is pooled."""
    idle = backend.idle
    while idle:
        upstream = idle.pop()
        if upstream.usable():
            return upstream
        upstream.close()
    return None


class Reports:
    """The balancer's own 5xx answers in lb.log, with why: the first few of each
    minute, then how many more (a failing instance must not flood the log)."""

    def __init__(self, fleet: str) -> None:
        self.fleet = fleet
        self.since = 0.0
        self.logged = 0
        self.more = 0

    def tick(self, now: float) -> None:
        """A new minute: say how many went unlogged in the last one."""
        if now - self.since >= 60.0:
            if self.more:
                log.warning(
                    "fleet %s: %d more such answers in the last minute", self.fleet, self.more
                )
            self.since, self.logged, self.more = now, 0, 0

    def answered(self, status: int, head: Request, why: str) -> None:
        self.tick(time.monotonic())
        if self.logged >= REPORTS_PER_MINUTE:
            self.more += 1
            return
        self.logged += 1
        target = head.target[:200].decode("latin-1")
        log.warning(
            "fleet %s: answered %d to %s %s: %s",
            self.fleet,
            status,
            head.method.decode("latin-1"),
            target,
            why,
        )


class Balancer:
    """One fleet's listener; the supervisor decides who is routable."""

    def __init__(
        self, fleet: str, policy: str = "least-outstanding", limits: Limits | None = None
    ) -> None:
        self.fleet = fleet
        self.policy = policy
        self.limits = limits or Limits()
        self.trusted: Networks = ()  # [provider.local] trusted_proxies
        self.backends: dict[str, Backend] = {}
        self.routable: list[Backend] = []
        self.totals = Counters()
        self.retries = 0
        self.unavailable = 0  # 503s: no instance to send to
        self.listen: tuple[str, int] | None = None
        self._server: asyncio.Server | None = None
        self.clients: set[Client] = set()
        # upstream connection -> deadline for the response head
        self.waiting: dict[Upstream, float] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._rr = 0
        self.sticky: Affinity | None = None  # [fleet] sticky (kiln.local.affinity)
        # a successor serves the listener: every open connection ends after its answer
        self.retiring = False
        self._reports = Reports(fleet)

    # membership -----------------------------------------------------------

    def add(
        self, instance_id: str, host: str, port: int, counters: Counters | None = None
    ) -> Backend:
        backend = self.backends.get(instance_id)
        if backend is None or (backend.host, backend.port) != (host, port):
            backend = Backend(instance_id, host, port, counters)
            self.backends[instance_id] = backend
        return backend

    def remove(self, instance_id: str) -> None:
        backend = self.backends.pop(instance_id, None)
        if backend is not None:
            backend.routable = False
            backend.close_idle()
            backend.close_tunnels()  # the instance is gone: nothing to wait for
            self.routable = [b for b in self.routable if b.id != instance_id]

    def set_routable(self, ids: Iterable[str]) -> None:
        wanted = set(ids)
        self.routable = [b for i, b in sorted(self.backends.items()) if i in wanted]
        now = time.monotonic()
        for backend in self.backends.values():
            was, backend.routable = backend.routable, backend.id in wanted
            if not backend.routable:
                backend.close_idle()
                if was:
                    backend.draining_since = now  # its tunnels get tunnel_grace from now

    def outstanding(self, instance_id: str) -> int:
        """Requests in flight and open tunnels: what draining waits for."""
        backend = self.backends.get(instance_id)
        return backend.outstanding + len(backend.tunnels) if backend else 0

    def _pick(self, tried: tuple[str, ...]) -> Backend | None:
        """Least outstanding (or next in turn), skipping tried and suspect instances."""
        routable = self.routable
        n = len(routable)
        if not n:
            return None
        self._rr = start = (self._rr + 1) % n
        round_robin = self.policy == "round-robin"
        best: Backend | None = None
        best_load = 0
        suspect: Backend | None = None
        for i in range(n):  # from ``start`` round, without building a list per request
            backend = routable[(start + i) % n]
            if tried and backend.id in tried:
                continue
            if backend.down_until:
                if backend.down_until > time.monotonic():
                    suspect = suspect or backend
                    continue
                backend.down_until = 0.0
            if round_robin:
                return backend
            load = backend.outstanding + len(backend.tunnels)
            if best is None or load < best_load:
                best, best_load = backend, load
        return best or suspect

    # listening ------------------------------------------------------------

    async def start(
        self,
        host: str,
        port: int,
        tls: ssl.SSLContext | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        """Listen on host:port, or on ``sock`` (already listening there: handed over)."""
        where: dict[str, Any] = {"sock": sock} if sock else {"host": host, "port": port}
        try:
            self._server = await asyncio.get_running_loop().create_server(
                protocol_factory(functools.partial(Client, self)),
                **where,
                reuse_address=True,
                backlog=1024,
                ssl=tls,
                ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT if tls else None,
            )
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise address_taken(self.fleet, host, port) from exc
            raise ProviderError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
        self.listen = (host, port)
        self.sweep()

    def sweep(self) -> None:
        """Enforce the timeouts; called by ``start``, or for a fleet behind a shared listener."""
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep())

    async def _sweep(self) -> None:
        """Enforce every deadline; cheaper than a timer per request."""
        while True:
            await asyncio.sleep(SWEEP)
            now = time.monotonic()
            limits = self.limits
            for client in list(self.clients):
                client.overdue(now, limits)
            for backend in self.backends.values():
                if backend.streams:
                    backend.prune_streams()
                late = now - backend.draining_since > limits.tunnel_grace
                if (backend.tunnels or backend.streams) and not backend.routable and late:
                    backend.close_tunnels()
            for upstream, deadline in list(self.waiting.items()):
                if deadline < now:
                    del self.waiting[upstream]
                    upstream.timed_out()
            if self._reports.more:
                self._reports.tick(now)

    async def move(self, host: str, port: int) -> None:
        """Listen somewhere else; the old listener closes once the new one is up."""
        old = self._server
        await self.start(host, port)
        if old is not None:
            old.close()

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._server is not None:
            self._server.close()
            for client in list(self.clients):
                client.close()
                if client.task is not None:
                    client.task.cancel()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        for backend in self.backends.values():
            backend.close_idle()

    # requests ---------------------------------------------------------------

    def pump(self, client: Client) -> None:
        """Answer the requests a client connection has sent, while it is not busy.

        The common request (its body, if any, already read; an idle
        connection to the instance picked) is sent on here and answered from
        the instance connection's callbacks: no task, no await. Anything else
        is served by a task.
        """
        messages = client.messages
        events = messages.events
        while not client.busy:
            event = events.popleft() if events else None
            if event is None:
                if client.closed:
                    return
                if messages.error is not None:
                    client.busy = True
                    client.task = asyncio.get_running_loop().create_task(
                        refusal(messages.error).refuse(client)
                    )
                else:
                    client.resume()
                return
            kind, head = event
            if kind != HEAD:  # closed between requests, or the tail of an upgrade
                client.close()
                return
            if self.retiring:  # answered with Connection: close: it comes back to the successor
                head.close = True
            client.busy = True
            client.phase = BUSY  # not timed: the instance's pace
            if not self._fast(head, client):
                client.task = asyncio.get_running_loop().create_task(
                    self._run(client, self._serve(head, client))
                )

    async def _run(self, client: Client, serving: Coroutine[Any, Any, bool]) -> None:
        """Serve one request in a task; then the next, or close."""
        keep = False
        try:
            keep = await serving
        except _NETWORK_ERRORS:
            pass
        except asyncio.CancelledError:
            client.close()
            raise
        client.finished(keep)

    def _fast(self, head: Request, client: Client) -> bool:
        """Send a request on at once if nothing about it needs waiting for; False if not."""
        sticky = self.sticky
        if sticky is not None:
            sticky.arrive(head)
        if head.upgrade is not None or head.expect:
            return False
        events = client.messages.events
        pieces = 0
        if head.chunked or head.length:  # taken only if its end has been read, and it is small
            size = 0
            for kind, value in events:
                if kind == END:
                    break
                size += len(value)
                pieces += 1
                if kind != BODY or size > REPLAY_LIMIT:
                    return False
            else:
                return False
        elif not events or events[0][0] != END:
            return False
        backend = self._pick(()) if sticky is None else sticky.pick(self, head, ())
        if backend is None:
            return False
        upstream = _pooled(backend)
        if upstream is None:
            self._rr -= 1  # the task picks again, and must pick the same
            return False
        started = _monotonic()
        if pieces:
            body = b"".join([events.popleft()[1] for _ in range(pieces)])
            if head.chunked:  # read whole: forwarded with its length
                head.reframe(len(body))
            request = request_head(head, client.forwarding(head)) + body
        else:
            request = request_head(head, client.forwarding(head))
        events.popleft()  # the end
        if not events and client.read_paused:
            client.resume()
        backend.outstanding += 1
        upstream.begin(self, client, head, started)
        upstream.send(request, started + self.limits.response_timeout)
        return True

    def fast_end(self, upstream: Upstream, client: Client, error: BaseException | None) -> None:
        """How an exchange ``_fast`` started ended: the next request, a retry, or the close."""
        backend = upstream.backend
        backend.outstanding -= 1
        if error is None:
            client.finished(upstream.keep_client)
            return
        head = upstream.head
        assert head is not None
        replayable = head.method in IDEMPOTENT
        if self._settle(backend, upstream, error, replayable, True, client) is None:
            client.finished(False)
            return
        retry = self._forward(head, client, upstream.request, b"", upstream.started, backend)
        client.task = asyncio.get_running_loop().create_task(self._run(client, retry))

    async def _serve(self, head: Request, client: Client) -> bool:
        """Answer one request; False when the client connection must close."""
        started = time.monotonic()
        if self.sticky is not None:
            self.sticky.arrive(head)
        if head.expect and head.has_body and head.version != b"1.0":  # RFC 9110 10.1.1
            client.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            read, whole = await read_body(client, head, REPLAY_LIMIT)
        except ClientFailed as exc:
            await exc.answer(client)
            return False
        client.phase = BUSY
        body: bytes | None = read
        prefix = b""
        if not whole:
            body, prefix = None, read  # the rest streams from the client: sent only once
        elif head.chunked:  # read whole: forwarded with its length
            head.reframe(len(read))
        forwarded = client.forwarding(head)
        upstream_head = request_head(head, forwarded)
        if prefix:
            upstream_head += chunk(prefix) if head.chunked else prefix
        return await self._forward(head, client, upstream_head, body, started)

    async def _forward(
        self,
        head: Request,
        client: Client,
        upstream_head: bytes,
        body: bytes | None,
        started: float,
        stale: Backend | None = None,
    ) -> bool:
        """Try instances until one answers (or none is left); ``stale`` first, afresh."""
        tried: tuple[str, ...] = ()
        while True:
            fresh = stale is not None
            sticky = self.sticky
            backend = stale or (
                self._pick(tried) if sticky is None else sticky.pick(self, head, tried)
            )
            stale = None
            if backend is None:
                return self._give_up(head, client, bool(tried), body is not None, started)
            tried += (backend.id,)
            backend.outstanding += 1
            try:
                try:
                    return await self._attempt(
                        backend, head, upstream_head, body, client, started, fresh
                    )
                except _Stale:
                    return await self._attempt(
                        backend, head, upstream_head, body, client, started, fresh=True
                    )
            except _Retry:
                backend.counters.failures += 1
                self.totals.failures += 1
                self.retries += 1
            finally:
                backend.outstanding -= 1

    def _give_up(
        self, head: Request, client: Client, tried: bool, body_read: bool, started: float
    ) -> bool:
        keep = body_read and not head.close and head.upgrade is None
        if tried:
            status, message = 502, f"fleet {self.fleet}: every instance tried failed to answer"
        else:
            self.unavailable += 1
            status, message = 503, f"fleet {self.fleet} has no healthy instance in service"
        client.write(simple_response(status, message + "\n", close=not keep))
        self.totals.record(status, time.monotonic() - started)  # what the client got
        self._reports.answered(status, head, message)
        return keep

    async def _connect(self, backend: Backend) -> Upstream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.limits.connect_timeout):
                _, upstream = await loop.create_connection(
                    protocol_factory(functools.partial(Upstream, backend)),
                    backend.host,
                    backend.port,
                )
                return cast(Upstream, upstream)
        except (OSError, TimeoutError) as exc:
            backend.down_until = time.monotonic() + SUSPECT_SECONDS
            raise _Retry from exc

    async def _attempt(
        self,
        backend: Backend,
        head: Request,
        upstream_head: bytes,
        body: bytes | None,
        client: Client,
        started: float,
        fresh: bool = False,
    ) -> bool:
        pooled = _pooled(backend) if body is not None and not fresh else None
        upstream = pooled or await self._connect(backend)
        if client.half_closed:  # it gave up while the instance was reached (eof_received)
            upstream.close()
            return False
        replayable = body is not None and head.method in IDEMPOTENT
        waiter: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        upstream.begin(self, client, head, started, waiter)
        error: BaseException | None
        try:
            if body is None:
                upstream.hold()
                upstream.write(upstream_head)
                await send_body(client, upstream, head.chunked)
            else:
                upstream.write(upstream_head + body if body else upstream_head)
            upstream.expect_response(time.monotonic() + self.limits.response_timeout)
            error = await waiter
        except ClientFailed as exc:
            upstream.abandon()
            await exc.answer(client)
            return False
        except _NETWORK_ERRORS as exc:  # the instance stopped taking the body
            upstream.abandon()
            error = exc
        except BaseException:
            upstream.abandon()
            raise
        if error is None:
            if upstream.switched:
                return await self._switch(backend, upstream, client, started)
            return upstream.keep_client
        retry = self._settle(backend, upstream, error, replayable, pooled is not None, client)
        if retry is not None:
            raise retry from error
        return False

    def _settle(
        self,
        backend: Backend,
        upstream: Upstream,
        error: BaseException,
        replayable: bool,
        pooled: bool,
        client: Client,
    ) -> type[Exception] | None:
        """A failed attempt: the retry it allows, or None once the client was answered
        (or, when its answer had begun, is to be cut off)."""
        if isinstance(error, ClientGone):
            return None
        if upstream.answered:  # cut off: the client saw the instance's status already
            backend.counters.failures += 1
            self.totals.failures += 1
            return None
        if isinstance(error, ResponseTimeout):
            status, message = 504, "instance did not answer in time"
        elif replayable and not upstream.received and not isinstance(error, BadMessage):
            return _Stale if pooled else _Retry
        else:
            status, message = 502, "instance failed"
        client.write(simple_response(status, message + "\n", close=True))
        # counted as the answer the client got, the instance's (not also as a failed
        # attempt: what deploy gates add up, 5xx plus failures, counts it once)
        backend.counters.record_with(self.totals, status, time.monotonic() - upstream.started)
        assert upstream.head is not None
        self._reports.answered(status, upstream.head, f"instance {backend.id}: {error}")
        return None

    async def _switch(
        self, backend: Backend, upstream: Upstream, client: Client, started: float
    ) -> bool:
        """The instance agreed to switch protocols: tunnel bytes until either side ends."""
        resp = upstream.resp
        assert resp is not None
        client.write(switching_head(resp))  # what either side sent after its head follows
        backend.counters.record(101, time.monotonic() - started)
        self.totals.record(101, time.monotonic() - started)
        tunnel = tunnel_for(resp.upgrade, client, upstream, b"", b"")  # nothing sent on yet
        backend.tunnels.add(tunnel)
        backend.outstanding -= 1  # a tunnel now, counted as one: no longer a request
        try:
            await tunnel.run()
        finally:
            backend.tunnels.discard(tunnel)
            backend.outstanding += 1  # as the caller, who counted the request, expects
        return False
