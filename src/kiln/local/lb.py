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
import time
from collections.abc import Iterable

from kiln.errors import ProviderError
from kiln.local.http1 import (
    CHUNK,
    IDEMPOTENT,
    BadMessage,
    Head,
    copy_chunked,
    copy_exact,
    copy_until_eof,
    framing_line,
    make_upstream_head,
    parse_head,
    partial_response,
    read_response_head,
    simple_response,
)
from kiln.local.metrics import Counters

REPLAY_LIMIT = 64 * 1024
IDLE_TIMEOUT = 60.0  # client keep-alive
CONNECT_TIMEOUT = 2.0
RESPONSE_TIMEOUT = 60.0  # until the response head (enforced within IDLE_TIMEOUT / 4)
SUSPECT_SECONDS = 1.0  # avoid an instance that refused a connection for this long
POOL_SIZE = 128
HIGH_WATER = 64 * 1024
_NETWORK_ERRORS = (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, BadMessage)

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class _Retry(Exception):
    """The attempt failed in a way that is safe to try on another instance."""


class _Stale(Exception):
    """A reused keep-alive connection was closed under us: try the same instance afresh."""


class Backend:
    """One instance as the balancer sees it: address, idle connections, counters."""

    __slots__ = ("counters", "down_until", "host", "id", "idle", "outstanding", "port", "routable")

    def __init__(
        self, instance_id: str, host: str, port: int, counters: Counters | None = None
    ) -> None:
        self.id = instance_id
        self.host = host
        self.port = port
        self.outstanding = 0
        self.idle: list[Conn] = []
        self.counters = counters or Counters()
        self.down_until = 0.0
        self.routable = False

    def close_idle(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


class Balancer:
    """One fleet's listener; the supervisor decides who is routable."""

    def __init__(self, fleet: str, policy: str = "least-outstanding") -> None:
        self.fleet = fleet
        self.policy = policy
        self.backends: dict[str, Backend] = {}
        self.routable: list[Backend] = []
        self.totals = Counters()
        self.retries = 0
        self.unavailable = 0  # 503s: no instance to send to
        self.listen: tuple[str, int] | None = None
        self._server: asyncio.Server | None = None
        # client connection -> when it went idle (0.0 while a request is in progress)
        self._clients: dict[asyncio.StreamWriter, float] = {}
        # upstream connection -> deadline for the response head
        self._waiting: dict[asyncio.StreamWriter, float] = {}
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
            self.routable = [b for b in self.routable if b.id != instance_id]

    def set_routable(self, ids: Iterable[str]) -> None:
        wanted = set(ids)
        self.routable = [b for i, b in sorted(self.backends.items()) if i in wanted]
        for backend in self.backends.values():
            backend.routable = backend.id in wanted
            if not backend.routable:
                backend.close_idle()

    def outstanding(self, instance_id: str) -> int:
        backend = self.backends.get(instance_id)
        return backend.outstanding if backend else 0

    def _pick(self, tried: tuple[str, ...]) -> Backend | None:
        """Least outstanding (or next in turn), skipping tried and suspect instances."""
        routable = self.routable
        n = len(routable)
        if not n:
            return None
        self._rr += 1
        start = self._rr % n
        best: Backend | None = None
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
            if best is None or backend.outstanding < best.outstanding:
                best = backend
        return best or suspect

    # listening ------------------------------------------------------------

    async def start(self, host: str, port: int) -> None:
        try:
            self._server = await asyncio.start_server(
                self._client, host, port, reuse_address=True, backlog=1024
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
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep())

    async def _sweep(self) -> None:
        """Close idle clients and upstreams that do not answer; cheaper than a timer each."""
        while True:
            await asyncio.sleep(IDLE_TIMEOUT / 4)
            now = time.monotonic()
            for writer, idle_since in list(self._clients.items()):
                if 0.0 < idle_since < now - IDLE_TIMEOUT:
                    writer.close()
            for writer, deadline in list(self._waiting.items()):
                if deadline < now:
                    writer.close()  # the pending read fails: a 502, or a retry

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
            for writer in list(self._clients):
                writer.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        for backend in self.backends.values():
            backend.close_idle()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        clients = self._clients
        clients[writer] = time.monotonic()
        peer = writer.get_extra_info("peername")
        client_ip = str(peer[0]).encode() if peer else b"unknown"
        transport = writer.transport
        try:
            while True:
                try:
                    raw = await reader.readuntil(b"\r\n\r\n")
                    clients[writer] = 0.0
                    head = parse_head(raw, request=True)
                except BadMessage:
                    writer.write(simple_response(400, "Bad Request", "bad request\n", close=True))
                    break
                except asyncio.LimitOverrunError:
                    writer.write(simple_response(431, "Headers Too Large", "", close=True))
                    break
                except _NETWORK_ERRORS:
                    break
                if not await self._serve(head, reader, writer, client_ip):
                    break
                if transport.get_write_buffer_size() > HIGH_WATER:
                    await writer.drain()
                clients[writer] = time.monotonic()
        except _NETWORK_ERRORS:
            pass
        finally:
            clients.pop(writer, None)
            writer.close()

    # one request ----------------------------------------------------------

    async def _serve(
        self, head: Head, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter, ip: bytes
    ) -> bool:
        """Answer one request; False when the client connection must close."""
        started = time.monotonic()
        body: bytes | None = b""
        if head.chunked or head.length:
            if head.expect:
                cwriter.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            if head.chunked or (head.length or 0) > REPLAY_LIMIT:
                body = None  # streamed from the client, so it can be sent only once
            else:
                body = await creader.readexactly(head.length or 0)
        upstream_head = make_upstream_head(head, ip)
        tried: tuple[str, ...] = ()
        while True:
            backend = self._pick(tried)
            if backend is None:
                return self._give_up(head, cwriter, bool(tried), body is not None)
            tried += (backend.id,)
            backend.outstanding += 1
            try:
                try:
                    return await self._attempt(
                        backend, head, upstream_head, body, creader, cwriter, started
                    )
                except _Stale:
                    return await self._attempt(
                        backend, head, upstream_head, body, creader, cwriter, started, fresh=True
                    )
            except _Retry:
                backend.counters.failures += 1
                self.totals.failures += 1
                self.retries += 1
            finally:
                backend.outstanding -= 1

    def _give_up(
        self, head: Head, cwriter: asyncio.StreamWriter, tried: bool, body_read: bool
    ) -> bool:
        keep = body_read and not head.close
        if tried:
            message = f"fleet {self.fleet}: every instance tried failed to answer\n"
            cwriter.write(simple_response(502, "Bad Gateway", message, close=not keep))
            self.totals.record(502, 0.0)
        else:
            self.unavailable += 1
            message = f"fleet {self.fleet} has no healthy instance in service\n"
            cwriter.write(simple_response(503, "Service Unavailable", message, close=not keep))
        return keep

    @staticmethod
    def _pooled(backend: Backend) -> Conn | None:
        idle = backend.idle
        while idle:
            reader, writer = idle.pop()
            if not reader.at_eof() and not writer.is_closing():
                return reader, writer
            writer.close()
        return None

    async def _connect(self, backend: Backend) -> Conn:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                return await asyncio.open_connection(backend.host, backend.port)
        except (OSError, TimeoutError) as exc:
            backend.down_until = time.monotonic() + SUSPECT_SECONDS
            raise _Retry from exc

    async def _attempt(
        self,
        backend: Backend,
        head: Head,
        upstream_head: bytes,
        body: bytes | None,
        creader: asyncio.StreamReader,
        cwriter: asyncio.StreamWriter,
        started: float,
        fresh: bool = False,
    ) -> bool:
        conn = self._pooled(backend) if body is not None and not fresh else None
        ureader, uwriter = conn or await self._connect(backend)
        replayable = body is not None and head.first[0] in IDEMPOTENT
        waiting = self._waiting
        waiting[uwriter] = started + RESPONSE_TIMEOUT
        try:
            if body is None:
                uwriter.write(upstream_head)
                if head.chunked:
                    await copy_chunked(creader, uwriter)
                else:
                    await copy_exact(creader, uwriter, head.length or 0)
            else:
                uwriter.write(upstream_head + body if body else upstream_head)
            resp = parse_head(await ureader.readuntil(b"\r\n\r\n"), request=False)
            interim = b""
            if resp.first[1][:1] == b"1" or not resp.first[1].isdigit():
                resp, interim = await read_response_head(ureader, resp)
        except _NETWORK_ERRORS as exc:
            uwriter.close()
            if replayable and not partial_response(exc):
                raise (_Stale if conn is not None else _Retry) from exc
            backend.counters.failures += 1
            self.totals.failures += 1
            cwriter.write(simple_response(502, "Bad Gateway", "instance failed\n", close=True))
            return False
        finally:
            waiting.pop(uwriter, None)
        if interim:
            cwriter.write(interim)
        return await self._respond(backend, head, resp, (ureader, uwriter), cwriter, started)

    async def _respond(
        self,
        backend: Backend,
        head: Head,
        resp: Head,
        upstream: Conn,
        cwriter: asyncio.StreamWriter,
        started: float,
    ) -> bool:
        ureader, uwriter = upstream
        status = resp.first[1]
        no_body = head.first[0] == b"HEAD" or status in (b"204", b"304")
        client10 = head.first[2] == b"HTTP/1.0"
        keep_client = not head.close
        reusable = not resp.close
        parts = [b"HTTP/1.1 " + status + b" " + resp.first[2], *resp.keep]
        length = resp.length
        if no_body or (length is not None and not resp.chunked):
            parts += framing_line(resp)
        elif resp.chunked and not client10:
            parts.append(b"Transfer-Encoding: chunked")
        else:  # delimited by close, or chunked to an HTTP/1.0 client
            keep_client = False
            reusable = reusable and resp.chunked
        parts.append(b"Connection: keep-alive\r\n" if keep_client else b"Connection: close\r\n")
        try:
            if no_body:
                cwriter.write(b"\r\n".join(parts) + b"\r\n")
            elif length is not None and length <= CHUNK and not resp.chunked:
                parts.append(await ureader.readexactly(length))
                cwriter.write(b"\r\n".join(parts))
            else:
                cwriter.write(b"\r\n".join(parts) + b"\r\n")
                if resp.chunked:
                    await copy_chunked(ureader, cwriter, raw=not client10)
                elif length is not None:
                    await copy_exact(ureader, cwriter, length)
                else:
                    await copy_until_eof(ureader, cwriter)
        except _NETWORK_ERRORS:
            uwriter.close()
            backend.counters.failures += 1
            self.totals.failures += 1
            return False
        elapsed = time.monotonic() - started
        code = int(status)
        backend.counters.record(code, elapsed)
        self.totals.record(code, elapsed)
        if reusable and backend.routable and len(backend.idle) < POOL_SIZE:
            backend.idle.append(upstream)
        else:
            uwriter.close()
        return keep_client
