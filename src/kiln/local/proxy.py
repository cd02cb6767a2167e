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
from typing import Any

from kiln.local.http1 import (
    CHUNK,
    LAST_CHUNK,
    BadMessage,
    Request,
    Response,
    chunk,
    interim_head,
    simple_response,
)
from kiln.local.messages import BODY, HEAD, MessageReader, Truncated

HIGH_WATER = 64 * 1024
LINGER = 1.0  # how long a refused client may go on sending before the connection is reset


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


class Client:
    """A client connection: its parser, and what it is doing since when."""

    __slots__ = (
        "body_start",
        "expired",
        "ip",
        "messages",
        "phase",
        "reader",
        "scheme",
        "since",
        "task",
        "trusted",
        "writer",
    )

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, trusted: Networks = ()
    ) -> None:
        self.task = asyncio.current_task()
        self.expired: str | None = None  # what the client was too slow to send
        self.reader = reader
        self.writer = writer
        self.messages = MessageReader(reader, request=True)
        peer = writer.get_extra_info("peername")
        self.ip = str(peer[0]).encode() if peer else b"unknown"
        self.trusted = bool(peer) and is_in(str(peer[0]), trusted)
        # the hook for TLS: a listener that terminates it makes every request https
        self.scheme = b"https" if writer.get_extra_info("sslcontext") is not None else b"http"
        self.phase = IDLE
        self.since = self.body_start = time.monotonic()

    def set(self, phase: int) -> None:
        self.phase = phase
        self.since = time.monotonic()

    def overdue(self, now: float, limits: Limits) -> None:
        """Act on a missed deadline: the task waiting for the client is told."""
        phase = self.phase
        if phase == IDLE:
            start = self.messages.head_start
            if start:
                if now - start > limits.header_timeout:
                    self._expire("request head")
            elif now - self.since > limits.client_idle_timeout:
                self.writer.close()  # idle between requests: closed without a word
        elif phase == BODY_IN:
            if now - self.body_start > limits.body_timeout:
                self._expire("request body")
            elif now - max(self.since, self.messages.last_read) > limits.body_idle_timeout:
                self._expire("request body (it stalled)")
        elif phase == SENDING and now - self.since > limits.client_idle_timeout:
            self.writer.transport.abort()  # not reading its response

    def _expire(self, what: str) -> None:
        if self.expired is None and self.task is not None:
            self.expired = what
            self.task.cancel()  # it waits in a read of this client (the phase says so)

    async def next(self) -> tuple[int, Any]:
        """The next event from the client; RequestTimeout when it was too slow."""
        try:
            return await self.messages.next()
        except asyncio.CancelledError:
            if self.expired is None or self.task is None:
                raise
            self.task.uncancel()
            raise RequestTimeout(f"{self.expired} not received in time") from None


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


class ClientFailed(Exception):
    """The client's body broke off, was malformed or too slow: answer if there is an
    answer, and close."""

    def __init__(self, status: int | None, reason: str) -> None:
        super().__init__(reason)
        self.status = status

    async def answer(self, client: Client) -> None:
        if self.status is not None:
            client.writer.write(simple_response(self.status, f"{self}\n", close=True))
            await linger(client.reader, client.writer)


async def client_event(client: Client) -> tuple[int, Any]:
    event = client.messages.take()
    if event is not None:
        return event
    try:
        return await client.next()
    except BadMessage as exc:
        raise ClientFailed(exc.status, str(exc)) from exc
    except RequestTimeout as exc:
        raise ClientFailed(408, str(exc)) from exc
    except OSError as exc:  # Truncated included: the client went away
        raise ClientFailed(None, str(exc)) from exc


async def read_body(client: Client, head: Request, limit: int) -> tuple[bytes, bool]:
    """Up to ``limit`` bytes of the body, and whether that was all of it.

    A body read whole before an instance is picked costs the instance
    nothing however slowly it arrives, and can be replayed on a retry.
    """
    if not head.has_body:  # its end came with its head (llhttp emits both in one feed)
        client.messages.take() or await client_event(client)
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


async def send_body(client: Client, uwriter: asyncio.StreamWriter, chunked: bool) -> None:
    """Stream the rest of a request body upstream, chunk framing written afresh."""
    client.set(BODY_IN)
    while True:
        kind, value = await client_event(client)
        if kind != BODY:
            if chunked:
                uwriter.write(LAST_CHUNK)
            break
        uwriter.write(chunk(value) if chunked else value)
        if uwriter.transport.get_write_buffer_size() > HIGH_WATER:
            client.phase = BUSY  # the instance's pace, not the client's
            await uwriter.drain()
            client.set(BODY_IN)
    client.set(BUSY)
    await uwriter.drain()


async def final_response(responses: MessageReader, switching: bool) -> tuple[Response, bytes]:
    """The final response head (or a 101 when ``switching`` was asked for); interim
    (1xx) heads before it, regenerated."""
    interim = b""
    while True:
        kind, resp = responses.take() or await responses.next()
        if kind != HEAD:
            raise Truncated("the instance closed the connection without answering")
        if resp.status == 101 and not switching:
            raise BadMessage("instance switched protocols unasked", 502)
        if resp.status >= 200 or resp.status == 101:
            return resp, interim
        interim += interim_head(resp)
        responses.take() or await responses.next()  # the end of the interim message


async def copy_response(
    responses: MessageReader, client: Client, out: list[bytes], chunked: bool
) -> None:
    """Stream the body: whatever has arrived goes out at once, the head with the first bytes."""
    cwriter = client.writer
    transport = cwriter.transport
    while True:
        if out and not responses.ready():
            cwriter.write(b"".join(out))
            out.clear()
            if transport.get_write_buffer_size() > HIGH_WATER:
                client.set(SENDING)
                await cwriter.drain()
                client.phase = BUSY
        kind, value = responses.take() or await responses.next()
        if kind != BODY:
            if chunked:
                out.append(LAST_CHUNK)
            cwriter.write(b"".join(out))
            return
        out.append(chunk(value) if chunked else value)


async def linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close, and read what the client still sends, briefly: closing with
    unread bytes makes the kernel reset the connection, and the client may
    never see the error it was just sent."""
    with contextlib.suppress(OSError, TimeoutError):
        if writer.can_write_eof():  # a TLS connection cannot half-close: just read on
            writer.write_eof()
        async with asyncio.timeout(LINGER):
            while await reader.read(CHUNK):
                pass


class Tunnel:
    """An upgraded connection (WebSocket…): bytes copied both ways until either side ends."""

    __slots__ = ("client", "upstream")

    def __init__(self, client: Client, upstream: Upstream) -> None:
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


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
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
