"""Event streams (SSE) of an instance taken out of service end cleanly, after tunnel_grace.

Found by a helper deploying an Express app with a text/event-stream route: an
open stream held each batch of a rolling deploy for the whole [fleet] drain,
then was cut off (curl: exit 18, a transfer ended early). An event stream never
ends by itself; EventSource reconnects when it ends. So once its instance has
left, the balancer ends it as the instance would on shutting down: the last
chunk (or, to an HTTP/1.0 client, the close), and the drain is over.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from lbharness import free_port

from kiln.local.lb import Balancer
from kiln.local.proxy import Limits


async def _events(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An instance answering every request with an endless stream, an event each 0.1 s:
    an event stream at /events, plain text elsewhere (a long download, say)."""
    head = await reader.readuntil(b"\r\n\r\n")
    kind = b"text/event-stream" if b" /events " in head else b"text/plain"
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: " + kind + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    with contextlib.suppress(OSError):
        for n in range(1000):
            event = b"data: %d\n\n" % n
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()
            await asyncio.sleep(0.1)
    writer.close()


@contextlib.asynccontextmanager
async def fleet() -> AsyncIterator[tuple[Balancer, int]]:
    server = await asyncio.start_server(_events, "127.0.0.1", port := free_port())
    lb = Balancer("t", "round-robin", Limits(tunnel_grace=0.3))
    await lb.start("127.0.0.1", lb_port := free_port())
    lb.add("a", "127.0.0.1", port)
    lb.set_routable(["a"])
    try:
        yield lb, lb_port
    finally:
        await lb.close()
        server.close()


async def _read_until(reader: asyncio.StreamReader, marker: bytes, within: float) -> bytes:
    got = b""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within):
            while marker not in got:
                data = await reader.read(65536)
                if not data:
                    break
                got += data
    return got


async def stream_scenario(path: str, version: str) -> tuple[bytes, bytes, int]:
    """(what came before the drain, what came after, the instance's outstanding count)."""
    async with fleet() as (lb, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/{version}\r\nHost: x\r\n\r\n".encode())
        before = await _read_until(reader, b"data: 2", 5)
        assert lb.outstanding("a") == 1  # a stream counts against its instance: drain waits
        lb.set_routable([])  # taken out of service (a deploy's drain)
        after = await _read_until(reader, b"0\r\n\r\n" if version == "1.1" else b"\0", 3)
        if version == "1.0":
            assert await reader.read() == b""  # closed: the end of its body
        await asyncio.sleep(0.3)
        outstanding = lb.outstanding("a")
        writer.close()
        return before, after, outstanding


def test_an_event_stream_of_an_instance_taken_out_ends_with_its_last_chunk() -> None:
    before, after, outstanding = asyncio.run(stream_scenario("/events", "1.1"))
    assert b"Transfer-Encoding: chunked" in before and b"text/event-stream" in before
    assert after.endswith(b"0\r\n\r\n"), after[-60:]  # a complete response: EventSource reconnects
    assert outstanding == 0  # nothing left to wait for: the drain is over


def test_to_an_http_1_0_client_the_stream_ends_with_the_connection() -> None:
    before, _, outstanding = asyncio.run(stream_scenario("/events", "1.0"))
    assert b"text/event-stream" in before and b"chunked" not in before
    assert outstanding == 0


def test_any_other_endless_response_is_never_cut_short() -> None:
    """Only an event stream is ended: a download is the client's to finish, and its
    end (truncated) would be taken for the whole file."""
    before, after, outstanding = asyncio.run(stream_scenario("/download", "1.1"))
    assert b"text/plain" in before
    assert b"0\r\n\r\n" not in after and b"data: " in after  # it flows on
    assert outstanding == 1
