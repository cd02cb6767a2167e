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
import socket
import ssl
import time
from collections.abc import Iterable
from typing import Any

from kiln.errors import ProviderError
from kiln.local.http1 import (
    IDEMPOTENT,
    BadMessage,
    Request,
    Response,
    chunk,
    forwarding,
    request_head,
    response_head,
    simple_response,
    switching_head,
)
from kiln.local.messages import HEAD, UPGRADE
from kiln.local.metrics import Counters
from kiln.local.proxy import (
    BUSY,
    HIGH_WATER,
    IDLE,
    Client,
    ClientFailed,
    Limits,
    Networks,
    ResponseTimeout,
    Tunnel,
    Upstream,
    copy_response,
    final_response,
    linger,
    read_body,
    send_body,
)
from kiln.local.wsclose import tunnel_for

TLS_HANDSHAKE_TIMEOUT = 10.0
REPLAY_LIMIT = 64 * 1024  # request bodies up to this are read whole before an instance is picked
SWEEP = 0.5  # seconds between two looks at the deadlines
SUSPECT_SECONDS = 1.0  # avoid an instance that refused a connection for this long
POOL_SIZE = 128
_NETWORK_ERRORS = (OSError, asyncio.IncompleteReadError, BadMessage)


class _Retry(Exception):
    """The attempt failed in a way that is safe to try on another instance."""


class _Stale(Exception):
    """A reused keep-alive connection was closed under us: try the same instance afresh."""


class Backend:
    """One instance as the balancer sees it: address, idle connections, counters."""

    __slots__ = (
        "counters",
        "down_until",
        "draining_since",
        "host",
        "id",
        "idle",
        "outstanding",
        "port",
        "routable",
        "tunnels",
    )

    def __init__(
        self, instance_id: str, host: str, port: int, counters: Counters | None = None
    ) -> None:
        self.id = instance_id
        self.host = host
        self.port = port
        self.outstanding = 0
        self.idle: list[Upstream] = []
        self.counters = counters or Counters()
        self.down_until = 0.0
        self.routable = False
        self.draining_since = 0.0  # when it stopped being routable, while it has tunnels
        self.tunnels: set[Tunnel] = set()

    def close_tunnels(self) -> None:
        for tunnel in list(self.tunnels):
            tunnel.close()

    def close_idle(self) -> None:
        for upstream in self.idle:
            upstream.writer.close()
        self.idle.clear()


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
        self._clients: set[Client] = set()
        # upstream connection -> deadline for the response head
        self._waiting: dict[Upstream, float] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._rr = 0

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
        self._rr += 1
        start = self._rr % n
        best: Backend | None = None
        best_load = 0
        suspect: Backend | None = None
        now = 0.0
        for k in range(n):
            backend = routable[(start + k) % n]
            if backend.id in tried:
                continue
            if backend.down_until:
                now = now or time.monotonic()
                if backend.down_until > now:
                    suspect = suspect or backend
                    continue
                backend.down_until = 0.0
            if self.policy == "round-robin":
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
            self._server = await asyncio.start_server(
                self._client,
                **where,
                reuse_address=True,
                backlog=1024,
                ssl=tls,
                ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT if tls else None,
            )
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ProviderError(
                    f"cannot serve fleet {self.fleet}: {host}:{port} is already in use",
                    hint="stop what listens there, or set [provider.local] listen to a free "
                    "address",
                ) from exc
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
            for client in list(self._clients):
                client.overdue(now, limits)
            for backend in self.backends.values():
                late = now - backend.draining_since > limits.tunnel_grace
                if backend.tunnels and not backend.routable and late:
                    backend.close_tunnels()
            for upstream, deadline in list(self._waiting.items()):
                if deadline < now:
                    del self._waiting[upstream]
                    upstream.reader.set_exception(ResponseTimeout("no response in time"))

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
            for client in list(self._clients):
                client.writer.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        for backend in self.backends.values():
            backend.close_idle()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = Client(reader, writer, self.trusted)
        self._clients.add(client)
        transport = writer.transport
        try:
            while True:
                try:
                    kind, head = client.messages.take() or await client.next()
                except (BadMessage, TimeoutError) as exc:
                    status = exc.status if isinstance(exc, BadMessage) else 408
                    writer.write(simple_response(status, f"{exc}\n", close=True))
                    await linger(reader, writer)
                    break
                if kind != HEAD:  # closed between requests, or the tail of an upgrade
                    break
                client.phase = BUSY  # not timed: the instance's pace
                if not await self._serve(head, client):
                    break
                if transport.get_write_buffer_size() > HIGH_WATER:
                    await writer.drain()
                client.set(IDLE)
        except _NETWORK_ERRORS:
            pass
        finally:
            self._clients.discard(client)
            writer.close()

    # one request ----------------------------------------------------------

    async def _serve(self, head: Request, client: Client) -> bool:
        """Answer one request; False when the client connection must close."""
        started = time.monotonic()
        if head.expect and head.has_body:
            client.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
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
            head.chunked, head.length = False, len(read)
        forwarded = forwarding(head, client.ip, client.scheme, client.trusted)
        upstream_head = request_head(head, forwarded)
        if prefix:
            upstream_head += chunk(prefix) if head.chunked else prefix
        tried: tuple[str, ...] = ()
        while True:
            backend = self._pick(tried)
            if backend is None:
                return self._give_up(head, client, bool(tried), body is not None)
            tried += (backend.id,)
            backend.outstanding += 1
            try:
                try:
                    return await self._attempt(backend, head, upstream_head, body, client, started)
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

    def _give_up(self, head: Request, client: Client, tried: bool, body_read: bool) -> bool:
        keep = body_read and not head.close and head.upgrade is None
        if tried:
            message = f"fleet {self.fleet}: every instance tried failed to answer\n"
            client.writer.write(simple_response(502, message, close=not keep))
            self.totals.record(502, 0.0)
        else:
            self.unavailable += 1
            message = f"fleet {self.fleet} has no healthy instance in service\n"
            client.writer.write(simple_response(503, message, close=not keep))
        return keep

    @staticmethod
    def _pooled(backend: Backend) -> Upstream | None:
        idle = backend.idle
        while idle:
            upstream = idle.pop()
            if upstream.usable():
                return upstream
            upstream.writer.close()
        return None

    async def _connect(self, backend: Backend) -> Upstream:
        try:
            async with asyncio.timeout(self.limits.connect_timeout):
                return Upstream(*await asyncio.open_connection(backend.host, backend.port))
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
        pooled = self._pooled(backend) if body is not None and not fresh else None
        upstream = pooled or await self._connect(backend)
        uwriter, responses = upstream.writer, upstream.messages
        replayable = body is not None and head.method in IDEMPOTENT
        responses.received = False
        responses.no_body = head.method == b"HEAD"
        try:
            if body is None:
                uwriter.write(upstream_head)
                await send_body(client, uwriter, head.chunked)
            else:
                uwriter.write(upstream_head + body if body else upstream_head)
            self._waiting[upstream] = time.monotonic() + self.limits.response_timeout
            resp, interim = await final_response(responses, head.upgrade is not None)
        except ClientFailed as exc:
            uwriter.close()
            await exc.answer(client)
            return False
        except ResponseTimeout:
            uwriter.close()
            backend.counters.failures += 1
            self.totals.failures += 1
            client.writer.write(
                simple_response(504, "instance did not answer in time\n", close=True)
            )
            return False
        except _NETWORK_ERRORS as exc:
            uwriter.close()
            if replayable and not responses.received and not isinstance(exc, BadMessage):
                raise (_Stale if pooled is not None else _Retry) from exc
            backend.counters.failures += 1
            self.totals.failures += 1
            client.writer.write(simple_response(502, "instance failed\n", close=True))
            return False
        finally:
            self._waiting.pop(upstream, None)
        if interim:
            client.writer.write(interim)
        return await self._respond(backend, head, resp, upstream, client, started)

    async def _respond(
        self,
        backend: Backend,
        head: Request,
        resp: Response,
        upstream: Upstream,
        client: Client,
        started: float,
    ) -> bool:
        if resp.status == 101:
            return await self._switch(backend, resp, upstream, client, started)
        responses = upstream.messages
        status = resp.status
        is_head = head.method == b"HEAD"
        no_body = is_head or status in (204, 304)
        client10 = head.version == b"1.0"
        keep_client = not head.close and head.upgrade is None
        reusable = not resp.close and not is_head  # after a HEAD answer the parser is spent
        chunked = False
        if status == 204:
            framing = b""
        elif resp.length is not None:
            framing = b"Content-Length: %d\r\n" % resp.length
        elif not client10 and (resp.chunked or not no_body):
            framing = b"Transfer-Encoding: chunked\r\n"
            chunked = not no_body  # re-framed: the instance's chunk sizes are never forwarded
        else:  # a body delimited by close, for an HTTP/1.0 client
            framing = b""
            keep_client = keep_client and no_body
        if responses.eof_body:
            reusable = False
        try:
            out = [response_head(resp, framing, keep_client)]
            if is_head:
                client.writer.write(out[0])
            else:  # 204 and 304 too: their (empty) end is taken off the parser
                await copy_response(responses, client, out, chunked)
        except _NETWORK_ERRORS:
            upstream.writer.close()
            backend.counters.failures += 1
            self.totals.failures += 1
            return False
        elapsed = time.monotonic() - started
        backend.counters.record(status, elapsed)
        self.totals.record(status, elapsed)
        if reusable and backend.routable and len(backend.idle) < POOL_SIZE and upstream.usable():
            backend.idle.append(upstream)
        else:
            upstream.writer.close()
        return keep_client

    async def _switch(
        self, backend: Backend, resp: Response, upstream: Upstream, client: Client, started: float
    ) -> bool:
        """The instance agreed to switch protocols: tunnel bytes until either side ends."""
        try:
            await upstream.messages.next()  # the end of the 101
            _, from_instance = await upstream.messages.next()  # bytes after its head
            kind, from_client = await client.next()  # bytes after the request's head
        except _NETWORK_ERRORS:
            upstream.writer.close()
            return False
        client.writer.write(switching_head(resp) + from_instance)
        if kind != UPGRADE:
            from_client = b""
        if from_client:
            upstream.writer.write(from_client)
        backend.counters.record(101, time.monotonic() - started)
        self.totals.record(101, time.monotonic() - started)
        tunnel = tunnel_for(resp.upgrade, client, upstream, from_instance, from_client)
        backend.tunnels.add(tunnel)
        backend.outstanding -= 1  # a tunnel now, counted as one: no longer a request
        try:
            await tunnel.run()
        finally:
            backend.tunnels.discard(tunnel)
            backend.outstanding += 1  # as the caller, who counted the request, expects
        return False
