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
from typing import Any

from kiln.errors import ProviderError
from kiln.local.http1 import (
    CHUNK,
    IDEMPOTENT,
    LAST_CHUNK,
    BadMessage,
    Request,
    Response,
    chunk,
    interim_head,
    request_head,
    response_head,
    simple_response,
)
from kiln.local.messages import BODY, HEAD, MessageReader, Truncated
from kiln.local.metrics import Counters

REPLAY_LIMIT = 64 * 1024
IDLE_TIMEOUT = 60.0  # client keep-alive
CONNECT_TIMEOUT = 2.0
RESPONSE_TIMEOUT = 60.0  # until the response head (enforced within IDLE_TIMEOUT / 4)
SUSPECT_SECONDS = 1.0  # avoid an instance that refused a connection for this long
POOL_SIZE = 128
HIGH_WATER = 64 * 1024
LINGER = 1.0  # how long a refused client may go on sending before the connection is reset
_NETWORK_ERRORS = (OSError, asyncio.IncompleteReadError, BadMessage)


class Upstream:
    """A connection to an instance and the parser of the responses arriving on it."""

    __slots__ = ("messages", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.messages = MessageReader(reader, request=False)

    def usable(self) -> bool:
        """Open, between responses, and nothing arrived that was not asked for.

        Bytes an instance sent while the connection sat idle would otherwise
        be taken as the answer to the next client's request.
        """
        buffered = getattr(self.reader, "_buffer", None)  # StreamReader has no public peek
        return (
            self.messages.reusable
            and not buffered
            and not self.reader.at_eof()
            and not self.writer.is_closing()
        )


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
        self.idle: list[Upstream] = []
        self.counters = counters or Counters()
        self.down_until = 0.0
        self.routable = False

    def close_idle(self) -> None:
        for upstream in self.idle:
            upstream.writer.close()
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
        messages = MessageReader(reader, request=True)
        try:
            while True:
                try:
                    kind, head = await messages.next()
                except BadMessage as exc:
                    writer.write(simple_response(exc.status, f"{exc}\n", close=True))
                    await _linger(reader, writer)
                    break
                if kind != HEAD:  # closed between requests, or the tail of an upgrade
                    break
                clients[writer] = 0.0
                if not await self._serve(head, messages, writer, client_ip):
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
        self, head: Request, messages: MessageReader, cwriter: asyncio.StreamWriter, ip: bytes
    ) -> bool:
        """Answer one request; False when the client connection must close."""
        started = time.monotonic()
        body: bytes | None = b""
        try:
            if head.has_body:
                if head.expect:
                    cwriter.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                if head.chunked or (head.length or 0) > REPLAY_LIMIT:
                    body = None  # streamed from the client, so it can be sent only once
                else:
                    body = await _read_body(messages)
            else:
                await _read_body(messages)  # the end of a message without a body
        except _ClientFailed as exc:
            exc.answer(cwriter)
            return False
        forwarded_for = ip if head.forwarded_for is None else head.forwarded_for + b", " + ip
        upstream_head = request_head(head, forwarded_for, b"http")
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
                        backend, head, upstream_head, body, messages, cwriter, started
                    )
                except _Stale:
                    return await self._attempt(
                        backend, head, upstream_head, body, messages, cwriter, started, fresh=True
                    )
            except _Retry:
                backend.counters.failures += 1
                self.totals.failures += 1
                self.retries += 1
            finally:
                backend.outstanding -= 1

    def _give_up(
        self, head: Request, cwriter: asyncio.StreamWriter, tried: bool, body_read: bool
    ) -> bool:
        keep = body_read and not head.close and head.upgrade is None
        if tried:
            message = f"fleet {self.fleet}: every instance tried failed to answer\n"
            cwriter.write(simple_response(502, message, close=not keep))
            self.totals.record(502, 0.0)
        else:
            self.unavailable += 1
            message = f"fleet {self.fleet} has no healthy instance in service\n"
            cwriter.write(simple_response(503, message, close=not keep))
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
            async with asyncio.timeout(CONNECT_TIMEOUT):
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
        messages: MessageReader,
        cwriter: asyncio.StreamWriter,
        started: float,
        fresh: bool = False,
    ) -> bool:
        pooled = self._pooled(backend) if body is not None and not fresh else None
        upstream = pooled or await self._connect(backend)
        uwriter, responses = upstream.writer, upstream.messages
        replayable = body is not None and head.method in IDEMPOTENT
        responses.received = False
        responses.no_body = head.method == b"HEAD"
        waiting = self._waiting
        waiting[uwriter] = started + RESPONSE_TIMEOUT
        try:
            if body is None:
                uwriter.write(upstream_head)
                await _send_body(messages, uwriter, head.chunked)
            else:
                uwriter.write(upstream_head + body if body else upstream_head)
            resp, interim = await _response_head(responses)
        except _ClientFailed as exc:
            uwriter.close()
            exc.answer(cwriter)
            return False
        except _NETWORK_ERRORS as exc:
            uwriter.close()
            if replayable and not responses.received and not isinstance(exc, BadMessage):
                raise (_Stale if pooled is not None else _Retry) from exc
            backend.counters.failures += 1
            self.totals.failures += 1
            cwriter.write(simple_response(502, "instance failed\n", close=True))
            return False
        finally:
            waiting.pop(uwriter, None)
        if interim:
            cwriter.write(interim)
        return await self._respond(backend, head, resp, upstream, cwriter, started)

    async def _respond(
        self,
        backend: Backend,
        head: Request,
        resp: Response,
        upstream: Upstream,
        cwriter: asyncio.StreamWriter,
        started: float,
    ) -> bool:
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
                cwriter.write(out[0])
            else:  # 204 and 304 too: their (empty) end is taken off the parser
                await _copy_response(responses, cwriter, out, chunked)
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


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close, and read what the client still sends, briefly: closing with
    unread bytes makes the kernel reset the connection, and the client may
    never see the error it was just sent."""
    with contextlib.suppress(OSError, TimeoutError):
        writer.write_eof()
        async with asyncio.timeout(LINGER):
            while await reader.read(CHUNK):
                pass


class _ClientFailed(Exception):
    """The client's body broke off or was malformed: answer if there is an answer, and close."""

    def __init__(self, status: int | None, reason: str) -> None:
        super().__init__(reason)
        self.status = status

    def answer(self, cwriter: asyncio.StreamWriter) -> None:
        if self.status is not None:
            cwriter.write(simple_response(self.status, f"{self}\n", close=True))
            with contextlib.suppress(OSError):
                cwriter.write_eof()


async def _client_event(messages: MessageReader) -> tuple[int, Any]:
    try:
        return await messages.next()
    except BadMessage as exc:
        raise _ClientFailed(exc.status, str(exc)) from exc
    except OSError as exc:  # Truncated included: the client went away
        raise _ClientFailed(None, str(exc)) from exc


async def _read_body(messages: MessageReader) -> bytes:
    """The rest of a request's body, held whole (it is small: kept for a retry)."""
    parts: list[bytes] = []
    while True:
        kind, value = await _client_event(messages)
        if kind != BODY:
            return b"".join(parts)
        parts.append(value)


async def _send_body(messages: MessageReader, uwriter: asyncio.StreamWriter, chunked: bool) -> None:
    """Stream a request body upstream, chunk framing written afresh."""
    while True:
        kind, value = await _client_event(messages)
        if kind != BODY:
            if chunked:
                uwriter.write(LAST_CHUNK)
            await uwriter.drain()
            return
        uwriter.write(chunk(value) if chunked else value)
        await uwriter.drain()


async def _response_head(responses: MessageReader) -> tuple[Response, bytes]:
    """The final response head; interim (1xx) heads before it, regenerated."""
    interim = b""
    while True:
        kind, resp = await responses.next()
        if kind != HEAD:
            raise Truncated("the instance closed the connection without answering")
        if resp.status == 101:  # nobody asked to switch protocols
            raise BadMessage("instance switched protocols unasked", 502)
        if resp.status >= 200:
            return resp, interim
        interim += interim_head(resp)
        await responses.next()  # the end of the interim message


async def _copy_response(
    responses: MessageReader, cwriter: asyncio.StreamWriter, out: list[bytes], chunked: bool
) -> None:
    """Stream the body: whatever has arrived goes out at once, the head with the first bytes."""
    transport = cwriter.transport
    while True:
        if out and not responses.ready():
            cwriter.write(b"".join(out))
            out.clear()
            if transport.get_write_buffer_size() > HIGH_WATER:
                await cwriter.drain()
        kind, value = await responses.next()
        if kind != BODY:
            if chunked:
                out.append(LAST_CHUNK)
            cwriter.write(b"".join(out))
            return
        out.append(chunk(value) if chunked else value)
