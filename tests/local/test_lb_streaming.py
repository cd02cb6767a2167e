"""Responses stream: the first bytes reach the client as they leave the instance.

The instance drips a small body (Content-Length, or chunked like server-sent
events); the client must see the head and the first piece long before the
last one is sent, as it would going direct.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from localtest import free_port

from kiln.local.lb import Balancer

PIECES = 5
PAUSE = 0.4


async def drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    if head.startswith(b"GET /chunked "):
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        frame = b"a\r\n%s\r\n"
        tail = b"0\r\n\r\n"
    else:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (10 * PIECES))
        frame, tail = b"%s", b""
    for n in range(PIECES):
        writer.write(frame % (b"piece %03d\n" % n))
        await writer.drain()
        await asyncio.sleep(PAUSE)
    writer.write(tail)
    await writer.drain()
    writer.close()


async def arrivals(path: bytes) -> tuple[float, float, bytes]:
    """Seconds until the first body byte, until the end, and the body as received."""
    port, lb_port = free_port(), free_port()
    server = await asyncio.start_server(drip, "127.0.0.1", port)
    lb = Balancer("t")
    await lb.start("127.0.0.1", lb_port)
    lb.add("i", "127.0.0.1", port)
    lb.set_routable(["i"])
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", lb_port)
        started = time.monotonic()
        writer.write(b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path)
        await reader.readuntil(b"\r\n\r\n")
        first_piece = await reader.readexactly(1)
        first = time.monotonic() - started
        rest = await asyncio.wait_for(reader.read(), 10)
        done = time.monotonic() - started
        writer.close()
    finally:
        await lb.close()
        server.close()
    return first, done, first_piece + rest


@pytest.mark.parametrize("path", [b"/sized", b"/chunked"])
def test_a_dripping_response_streams(path: bytes) -> None:
    first, done, body = asyncio.run(arrivals(path))
    assert done > (PIECES - 1) * PAUSE  # the instance really took its time
    assert first < PAUSE, f"the first byte waited {first:.2f}s for the rest"
    assert b"piece 000" in body and b"piece 004" in body
