"""WebSocket tunnels that end with a close frame, not a dropped connection.

A tunnel of an instance taken out of service is closed after
``tunnel_grace``. Closing its TCP connections would show a WebSocket client
code 1006 (abnormal closure); instead the balancer sends each side a close
frame with code 1001 (Going Away), as the instance itself would when it
shuts down, and ends the connections once each side has answered with its
own close frame (RFC 6455 5.5.1), or after ``CLOSE_TIMEOUT``.

A close frame may only go between two frames, never inside one, so each
direction's frame boundaries are followed (frame headers only: payloads are
copied, not parsed or unmasked). When the close is asked for in the middle
of a frame, the rest of that frame is forwarded first; what comes after it
is dropped. Frames toward the instance are masked, as a client's must be.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

from kiln.local.http1 import CHUNK
from kiln.local.proxy import TUNNEL, Client, Tunnel
from kiln.local.stream import Stream
from kiln.local.upstream import Upstream

GOING_AWAY = 1001
CLOSE_TIMEOUT = 2.0  # for each side's answering close frame; then the connections are dropped
_CLOSE = 0x8


def close_frame(code: int, masked: bool) -> bytes:
    """A final close frame with ``code`` and no reason; masked as a client sends it."""
    payload = code.to_bytes(2, "big")
    if not masked:
        return bytes([0x80 | _CLOSE, len(payload)]) + payload
    key = os.urandom(4)
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | _CLOSE, 0x80 | len(payload)]) + key + body


def _header_size(head: bytes) -> int | None:
    """The length of the frame header that starts ``head``; None until two bytes are known."""
    if len(head) < 2:
        return None
    n = head[1] & 0x7F
    return 2 + (2 if n == 126 else 8 if n == 127 else 0) + (4 if head[1] & 0x80 else 0)


class Frames:
    """Where one direction of a WebSocket stream is: inside a frame, or between two."""

    __slots__ = ("closed", "head", "left")

    def __init__(self) -> None:
        self.head = b""  # a frame header seen in part
        self.left = 0  # payload bytes of the current frame still to come
        self.closed = False  # a close frame went by

    def at_boundary(self) -> bool:
        return not self.left and not self.head

    def feed(self, data: bytes, stop: bool = False) -> int:
        """Follow ``data``; how much of it was taken: all of it, or with ``stop`` only up to
        the first frame boundary in it (0 when already at one).

        A header that arrived whole is read in place (the common case: no copy);
        one cut by a read is gathered in ``head`` first.
        """
        pos, end = 0, len(data)
        left = self.left
        while pos < end:
            if left:
                step = left if left < end - pos else end - pos
                left -= step
                pos += step
                if stop and not left:
                    break
                continue
            if stop and not self.head:
                break
            if not self.head and end - pos >= 2:
                b1 = data[pos + 1]
                n = b1 & 0x7F
                size = (2 if n < 126 else 4 if n == 126 else 10) + (4 if b1 & 0x80 else 0)
                if end - pos >= size:
                    if n >= 126:
                        n = int.from_bytes(data[pos + 2 : pos + (4 if n == 126 else 10)], "big")
                    if data[pos] & 0x0F == _CLOSE:
                        self.closed = True
                    pos += size
                    left = n
                    if stop and not n:
                        break
                    continue
            more = data[pos : pos + 14 - len(self.head)]
            head = self.head + more
            header = _header_size(head)
            if header is None or len(head) < header:
                self.head = head
                pos += len(more)
                continue
            pos += header - len(self.head)
            self.head = b""
            n = head[1] & 0x7F
            if n >= 126:
                n = int.from_bytes(head[2 : 4 if n == 126 else 10], "big")
            left = n
            if head[0] & 0x0F == _CLOSE:
                self.closed = True
            if stop and not n:
                break
        self.left = left
        return pos


class _Direction:
    """One direction of the tunnel, and its close frame: to be sent, or sent."""

    __slots__ = ("dst", "frames", "masked", "pending", "sent", "src")

    def __init__(self, src: Stream, dst: Stream, masked: bool) -> None:
        self.src = src
        self.dst = dst
        self.masked = masked
        self.frames = Frames()
        self.pending = False  # a close is asked for, at the end of the current frame
        self.sent = False  # our close frame went out: what follows from src is dropped

    def go_away(self) -> None:
        if self.sent:
            return
        if self.frames.at_boundary():
            self._send_close()
        else:
            self.pending = True

    def _send_close(self) -> None:
        self.sent, self.pending = True, False
        if not self.dst.is_closing():
            self.dst.write(close_frame(GOING_AWAY, self.masked))

    async def pump(self) -> None:
        """Copy until src ends, or (once our close is sent) its answering close arrives."""
        try:
            while not (self.sent and self.frames.closed):
                data = await self.src.read(CHUNK)
                if not data:
                    break
                if self.sent:
                    self.frames.feed(data)  # dropped, looked at for the answering close
                    continue
                taken = self.frames.feed(data, stop=self.pending)
                self.dst.write(data if taken == len(data) else data[:taken])
                if self.pending and self.frames.at_boundary():
                    self._send_close()
                    self.frames.feed(data[taken:])
                await self.dst.drain()
        except (OSError, RuntimeError):  # reset, or closed under us
            self.dst.close()
            return
        if not self.sent and self.dst.can_write_eof() and not self.dst.is_closing():
            with contextlib.suppress(OSError, RuntimeError):
                self.dst.write_eof()


class WebSocketTunnel(Tunnel):
    """A WebSocket tunnel: ``close()`` ends it with 1001 Going Away on both sides."""

    __slots__ = ("deadline", "down", "up")

    def __init__(
        self, client: Client, upstream: Upstream, from_instance: bytes, from_client: bytes
    ) -> None:
        super().__init__(client, upstream)
        self.down = _Direction(upstream.reader, client.writer, masked=False)
        self.up = _Direction(client.reader, upstream.writer, masked=True)
        self.down.frames.feed(from_instance)  # already sent on, with the 101
        self.up.frames.feed(from_client)
        self.deadline: asyncio.TimerHandle | None = None

    async def run(self) -> None:
        self.client.set(TUNNEL)
        try:
            await asyncio.gather(self.down.pump(), self.up.pump())
        finally:
            if self.deadline is not None:
                self.deadline.cancel()
            Tunnel.close(self)

    def close(self) -> None:
        """Send both sides a close frame (each at its next frame boundary); the
        connections end when both have answered, or at the latest after CLOSE_TIMEOUT."""
        if self.deadline is not None:
            return
        self.down.go_away()
        self.up.go_away()
        self.deadline = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, Tunnel.close, self)


def tunnel_for(
    protocol: bytes | None,
    client: Client,
    upstream: Upstream,
    from_instance: bytes,
    from_client: bytes,
) -> Tunnel:
    """The tunnel for a switched connection: WebSocket ones know how to say goodbye."""
    if protocol is not None and protocol.lower() == b"websocket":
        return WebSocketTunnel(client, upstream, from_instance, from_client)
    return Tunnel(client, upstream)
