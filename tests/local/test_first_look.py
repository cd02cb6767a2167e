"""The one GET / after a TCP check first passes: only a 5xx answer is a failure."""

from __future__ import annotations

import asyncio

import pytest

from kiln.local.health import first_look, probe


async def _serve(answer: bytes | None) -> tuple[asyncio.Server, int, list[bytes]]:
    heads: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        if answer is None:
            await asyncio.sleep(5)  # never answers within the look's timeout
        else:
            writer.write(answer)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], heads


@pytest.mark.parametrize(
    ("status", "broken"), [(200, False), (302, False), (404, False), (500, True), (503, True)]
)
def test_only_a_5xx_is_broken(status: int, broken: bool) -> None:
    async def scenario() -> tuple[str | None, str | None, list[bytes]]:
        answer = f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n".encode()
        server, port, heads = await _serve(answer)
        async with server:
            tcp = await probe("127.0.0.1", port, None, 2.0)  # the TCP check: a connect
            looked, seen = await first_look("127.0.0.1", port, 2.0, "www.example.com")
            assert seen == f"GET / answered {status}"
            return tcp, looked, heads

    tcp, looked, heads = asyncio.run(scenario())
    assert tcp is None
    assert (looked == f"GET / answered {status} once its port accepted connections") is broken
    assert broken or looked is None
    assert heads[-1].startswith(b"GET / HTTP/1.1\r\nHost: www.example.com\r\n")


def test_no_answer_in_time_tells_nothing() -> None:
    async def scenario() -> tuple[str | None, str]:
        server, port, _ = await _serve(None)
        async with server:
            return await first_look("127.0.0.1", port, 0.3)

    assert asyncio.run(scenario()) == (None, "no answer within 0.3s")
