"""One exchange through the balancer: the client's side, the instance's side, the copying.

Deadlines are not timers: each connection records what it is waiting for
and since when, and the balancer's sweeper (twice a second) acts on a missed
one: it cancels a client's read (which then answers 408, and can still drain
what the client sends so the answer is not lost to a reset) or fails an
instance's read with ``ResponseTimeout`` (504). Per-request timers would
cost more than the rest of the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any, Protocol

from kiln.local.http1 import (
    CHUNK,
    LAST_CHUNK,
    BadMessage,
    Request,
    chunk,
    forwarding,
    simple_response,
)
from kiln.local.messages import BODY, MessageReader
from kiln.local.stream import Stream

HIGH_WATER = 64 * 1024
LINGER = 1.0  # how long a refused client may go on sending before the connection is reset
_monotonic = time.monotonic  # bound once: read for every request


@dataclass(frozen=True, slots=True)
class Limits:
    """How long the balancer waits for each thing ([provider.local] *_timeout)."""

    header_timeout: float = 10.0  # a whole request head, from its first byte
    body_timeout: float = 60.0  # a whole request body
    body_idle_timeout: float = 10.0  # silence within a request body
    client_idle_timeout: float = 60.0  # a kept-alive client between requests, or not reading
    connect_timeout: float = 2.0  # a connection to an instance
    response_timeout: float = 60.0  # an instance's response head, once the request is sent
    tunnel_grace: float = 5.0  # an upgraded connection to an instance taken out of service


class ResponseTimeout(TimeoutError):
    """An instance was too slow to start answering (504)."""


# what a client connection is waiting for, for the sweeper
IDLE, BODY_IN, BUSY, SENDING, TUNNEL = range(5)
# A retiring balancer (a successor has the listener) closes a kept-alive connection
# idle this long: a client between two requests of a burst gets its next answer with
# Connection: close instead, so its request never meets the close
RETIRING_IDLE = 1.0


class Client(Stream):
    """A client connection: its parser, and what it is doing since when.

    Requests are parsed as bytes arrive; ``listener.pump(client)`` answers
    the ones waiting whenever the connection is not busy with one. A request
    that needs awaiting (a body to stream, a new instance connection, a
    retry) is served by a task that pulls events with ``next()``.
    """

    __slots__ = (
        "_waiter",
        "body_start",
        "busy",
        "exchange",
        "expired",
        "forwarded",
        "half_closed",
        "ip",
        "listener",
        "messages",
        "phase",
        "scheme",
        "sending",
        "since",
        "task",
        "trusted",
    )

    def __init__(self, listener: Listener) -> None:
        super().__init__()
        self.listener = listener
        self.task: asyncio.Task[Any] | None = None  # serving the current request, if a task does
        self.expired: str | None = None  # what the client was too slow to send
        self.messages = MessageReader()
        self.ip = b"unknown"
        self.trusted = False
        self.scheme = b"http"
        self.forwarded = b""  # the X-Forwarded lines of every request, unless ``trusted``
        self.busy = False  # a request is being answered
        self.half_closed = False  # it sent its FIN: a request not yet answered was given up
        self.sending: Any = None  # an instance connection waiting for this client to read
        self.exchange: Any = None  # the instance connection carrying this client's request
        self._waiter: asyncio.Future[None] | None = None
        self.phase = IDLE
        self.since = self.body_start = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self.ip = str(peer[0]).encode() if peer else b"unknown"
        self.trusted = bool(peer) and is_in(str(peer[0]), self.listener.trusted)
        # a listener that terminates TLS makes every request https
        self.scheme = b"https" if transport.get_extra_info("sslcontext") is not None else b"http"
        self.forwarded = forwarding(None, self.ip, self.scheme, False)
        self.listener.clients.add(self)

    def data_received(self, data: bytes) -> None:
        if self._raw is not None:
            self.raw_received(data)
            return
        messages = self.messages
        rest = messages.feed(data)
        if rest is not None:  # an upgrade: what follows is another protocol's
            self.raw(rest)
        if self._waiter is not None:
            self._wake()
        elif not self.busy:
            self.listener.pump(self)
        if messages.events and rest is None:  # not taken yet: read no further ahead
            self.pause()

    def eof_received(self) -> bool:
        if self._raw is not None:
            self.raw_eof()
        else:
            self.half_closed = True
            self.messages.feed_eof()
            self._wake()
            exchange = self.exchange
            if exchange is not None and not exchange.answered:
                # The client gave up waiting (curl --max-time, a closed tab): the
                # instance is told at once by the close of its connection, as nginx
                # does by default, rather than working on for nobody until it answers.
                exchange.client_gone()
        return self.get_extra_info("sslcontext") is None  # TLS cannot half-close

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.listener.clients.discard(self)
        messages = self.messages
        if messages.error is None and not messages.spent:
            messages.spent = True
            messages.error = exc or ConnectionResetError("the client went away")
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)  # a task reading from this client learns it is gone
        self.sending = None
        exchange = self.exchange
        if exchange is not None:  # waiting for its answer, or sending it: the instance is told
            exchange.client_gone()

    def resume_writing(self) -> None:
        super().resume_writing()
        sending, self.sending = self.sending, None
        if sending is not None:
            self.phase = BUSY
            sending.resume()
        elif not self.busy and self.phase == SENDING:
            self.set(IDLE)
            self.listener.pump(self)

    def forwarding(self, head: Request) -> bytes:
        """The X-Forwarded lines for ``head``: the same for every request unless a trusted
        proxy makes claims (``kiln.local.http1.forwarding``)."""
        if self.trusted:
            return forwarding(head, self.ip, self.scheme, True)
        return self.forwarded

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
        elif not self.busy:
            self.listener.pump(self)

    def finished(self, keep: bool) -> None:
        """The request is answered: serve the next one, or close (``keep`` false)."""
        self.busy = False
        self.task = None
        if not keep or self.closed:
            self.close()
            return
        if self.write_paused:  # answers pile up unread: wait for the client to read them
            self.set(SENDING)
            return
        self.phase = IDLE
        self.since = _monotonic()
        messages = self.messages
        if messages.events or messages.error is not None:
            self.listener.pump(self)  # the next request is here already
        elif self.read_paused:
            self.resume()

    def set(self, phase: int) -> None:
        self.phase = phase
        self.since = _monotonic()

    def overdue(self, now: float, limits: Limits) -> None:
        """Act on a missed deadline: whoever waits for the client is told."""
        phase = self.phase
        if phase == IDLE:
            start = self.messages.head_start
            if start:
                if now - start > limits.header_timeout:
                    self._expire("request head")
            elif now - self.since > limits.client_idle_timeout:
                self.close()  # idle between requests: closed without a word
            elif self.listener.retiring and now - self.since > RETIRING_IDLE:
                self.close()  # a successor serves: come back to it
        elif phase == BODY_IN:
            if now - self.body_start > limits.body_timeout:
                self._expire("request body")
            elif now - max(self.since, self.messages.last_read) > limits.body_idle_timeout:
                self._expire("request body (it stalled)")
        elif phase == SENDING and now - self.since > limits.client_idle_timeout:
            self.abort()  # not reading its response

    def _expire(self, what: str) -> None:
        if self.expired is not None:
            return
        self.expired = what
        if self.task is not None:
            self.task.cancel()  # it waits in a read of this client (the phase says so)
        elif not self.busy:  # a head that never completed: nobody waits, answer here
            self.busy = True
            self.task = asyncio.get_running_loop().create_task(
                ClientFailed(408, f"{what} not received in time").refuse(self)
            )

    async def next(self) -> tuple[int, Any]:
        """The next event from the client; RequestTimeout when it was too slow."""
        messages = self.messages
        events = messages.events
        try:
            while not events:
                if messages.error is not None:
                    raise messages.error
                self.resume()
                self._waiter = asyncio.get_running_loop().create_future()
                await self._waiter
        except asyncio.CancelledError:
            self._waiter = None
            if self.expired is None or self.task is None:
                raise
            self.task.uncancel()
            raise RequestTimeout(f"{self.expired} not received in time") from None
        event = events.popleft()
        if not events:
            self.resume()
        return event


class Listener(Protocol):
    """What a client connection needs from the balancer that accepted it."""

    trusted: Networks
    clients: set[Client]
    retiring: bool

    def pump(self, client: Client) -> None: ...


Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


def networks(cidrs: Iterable[str]) -> Networks:
    """Addresses or CIDR blocks ([provider.local] trusted_proxies), parsed."""
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def is_in(ip: str, nets: Networks) -> bool:
    if not nets:
        return False
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in net for net in nets)


def limits_from(values: dict[str, Any]) -> Limits:
    """Limits from their config names; unknown names (a newer agent's) are ignored."""
    known = {f.name for f in fields(Limits)}
    return Limits(**{k: float(v) for k, v in values.items() if k in known})


class RequestTimeout(TimeoutError):
    """A client was too slow sending its request (408)."""


class ClientFailed(Exception):
    """The client's request broke off, was malformed or too slow: answer if there is an
    answer, and close."""

    def __init__(self, status: int | None, reason: str) -> None:
        super().__init__(reason)
        self.status = status

    async def answer(self, client: Client) -> None:
        if self.status is not None:
            client.write(simple_response(self.status, f"{self}\n", close=True))
            await linger(client, client)

    async def refuse(self, client: Client) -> None:
        """Answer, then close: the connection serves nothing more."""
        try:
            await self.answer(client)
        finally:
            client.close()


def refusal(exc: BaseException) -> ClientFailed:
    """What the client gets for a request that could not be read."""
    if isinstance(exc, BadMessage):
        return ClientFailed(exc.status, str(exc))
    if isinstance(exc, RequestTimeout):
        return ClientFailed(408, str(exc))
    return ClientFailed(None, str(exc))  # the client went away: nobody to answer


async def client_event(client: Client) -> tuple[int, Any]:
    event = client.messages.take()
    if event is not None:
        return event
    try:
        return await client.next()
    except (BadMessage, RequestTimeout, OSError) as exc:  # Truncated included
        raise refusal(exc) from exc


async def read_body(client: Client, head: Request, limit: int) -> tuple[bytes, bool]:
    """Up to ``limit`` bytes of the body, and whether that was all of it.

    A body read whole before an instance is picked costs the instance
    nothing however slowly it arrives, and can be replayed on a retry.
    """
    if not head.has_body:  # its end came with its head (llhttp emits both in one feed)
        client.messages.take() or await client_event(client)
        if not client.messages.events:
            client.resume()  # a client giving up while it waits is seen (Client.eof_received)
        return b"", True
    client.set(BODY_IN)
    client.body_start = client.since
    parts: list[bytes] = []
    size = 0
    while size <= limit:
        kind, value = await client_event(client)
        if kind != BODY:
            return b"".join(parts), True
        parts.append(value)
        size += len(value)
    return b"".join(parts), False


async def send_body(client: Client, upstream: Stream, chunked: bool) -> None:
    """Stream the rest of a request body upstream, chunk framing written afresh."""
    client.set(BODY_IN)
    while True:
        kind, value = await client_event(client)
        if kind != BODY:
            if chunked:
                upstream.write(LAST_CHUNK)
            break
        upstream.write(chunk(value) if chunked else value)
        if upstream.write_paused:
            client.phase = BUSY  # the instance's pace, not the client's
            await upstream.drain()
            client.set(BODY_IN)
    client.set(BUSY)
    await upstream.drain()


async def linger(reader: Stream, writer: Stream) -> None:
    """Half-close, and read what the client still sends, briefly: closing with
    unread bytes makes the kernel reset the connection, and the client may
    never see the error it was just sent."""
    with contextlib.suppress(OSError, TimeoutError):
        if writer.can_write_eof() and not writer.is_closing():  # TLS cannot half-close
            writer.write_eof()
        async with asyncio.timeout(LINGER):
            while await reader.read(CHUNK):
                pass


class Tunnel:
    """An upgraded connection (WebSocket…): bytes copied both ways until either side ends."""

    __slots__ = ("client", "upstream")

    def __init__(self, client: Client, upstream: Stream) -> None:
        self.client = client
        self.upstream = upstream

    async def run(self) -> None:
        self.client.set(TUNNEL)
        await asyncio.gather(
            _pipe(self.client.reader, self.upstream.writer),
            _pipe(self.upstream.reader, self.client.writer),
        )
        self.close()

    def close(self) -> None:
        """Close both sides (after what is buffered is sent): the pipes then end."""
        self.upstream.writer.close()
        self.client.writer.close()


async def _pipe(src: Stream, dst: Stream) -> None:
    """One direction of a tunnel; the other side is told of the end with a half-close,
    or closed when this side broke (so the other direction ends too)."""
    try:
        while data := await src.read(CHUNK):
            dst.write(data)
            await dst.drain()
    except (OSError, RuntimeError):  # reset, or closed under us
        dst.close()
        return
    if dst.can_write_eof() and not dst.is_closing():
        with contextlib.suppress(OSError, RuntimeError):
            dst.write_eof()
