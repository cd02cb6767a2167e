"""The load balancer's HTTP handling, in-process against scripted asyncio backends.

Fast and precise: framing (chunked, close-delimited, HTTP/1.0 clients),
which failures are retried on another instance and which are not, 503.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from localtest import free_port

from kiln.local.health import probe
from kiln.local.http1 import BadMessage, make_upstream_head, parse_head
from kiln.local.lb import Balancer
from kiln.local.procs import cap_log, log_tail


def backend(name: str) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                served += 1
                if name == "stale" and served > 1:
                    break  # closes a kept-alive connection as the next request arrives
                method, path = head.split(b" ")[:2]
                length = next(
                    (int(line.split(b":")[1]) for line in head.split(b"\r\n")
                     if line.lower().startswith(b"content-length:")), 0,
                )  # fmt: skip
                await reader.readexactly(length)
                if path == b"/flaky" and name == "a":
                    break  # dies before answering
                if path == b"/chunked":
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
                    )
                elif path == b"/interim":
                    writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n")
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfull")
                elif path == b"/eof":
                    writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil close")
                    await writer.drain()
                    break
                else:
                    body = f"{name} {method.decode()}".encode()
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
                    )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    return handle


async def request(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return data


async def scenario() -> None:
    servers = {}
    for name in ("a", "b"):
        port = free_port()
        servers[name] = (await asyncio.start_server(backend(name), "127.0.0.1", port), port)
    lb = Balancer("t", "round-robin")
    lb_port = free_port()
    await lb.start("127.0.0.1", lb_port)
    try:
        close = b"Host: x\r\nConnection: close\r\n\r\n"
        assert (await request(lb_port, b"GET / HTTP/1.1\r\n" + close)).startswith(b"HTTP/1.1 503")
        for name, (_, port) in servers.items():
            lb.add(name, "127.0.0.1", port)
        lb.set_routable(["a", "b"])

        for _ in range(4):  # a dies before answering: GET is retried on b, every time
            answer = await request(lb_port, b"GET /flaky HTTP/1.1\r\n" + close)
            assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"b GET"), answer
        posts = [
            await request(
                lb_port, b"POST /flaky HTTP/1.1\r\nContent-Length: 3\r\n" + close + b"abc"
            )
            for _ in range(4)
        ]  # a POST already sent is never replayed: 502 when a took it
        assert sum(p.startswith(b"HTTP/1.1 502") for p in posts) == 2
        assert sum(p.endswith(b"b POST") for p in posts) == 2

        chunked = await request(lb_port, b"GET /chunked HTTP/1.1\r\n" + close)
        assert b"Transfer-Encoding: chunked" in chunked
        assert chunked.endswith(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        old = await request(lb_port, b"GET /chunked HTTP/1.0\r\n\r\n")  # 1.0: de-chunked
        assert old.endswith(b"\r\n\r\nhello world") and b"Connection: close" in old
        interim = await request(lb_port, b"GET /interim HTTP/1.1\r\n" + close)
        assert interim.startswith(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n")
        assert interim.endswith(b"\r\n\r\nfull") and b"HTTP/1.1 200 OK" in interim
        eof = await request(lb_port, b"GET /eof HTTP/1.1\r\nHost: x\r\n\r\n")
        assert eof.endswith(b"until close")
        bad = await request(lb_port, b"NONSENSE\r\n\r\n")
        assert bad.startswith(b"HTTP/1.1 400")

        # the TCP health check (no [health] path) and the HTTP one
        assert await probe("127.0.0.1", servers["b"][1], None, 1.0) is None
        assert await probe("127.0.0.1", servers["b"][1], "/", 1.0) is None
        assert "cannot connect" in (await probe("127.0.0.1", free_port(), None, 1.0) or "")
    finally:
        await lb.close()
        for server, _ in servers.values():
            server.close()


def test_framing_retries_and_503() -> None:
    asyncio.run(scenario())


async def stale_scenario() -> None:
    port = free_port()
    server = await asyncio.start_server(backend("stale"), "127.0.0.1", port)
    lb = Balancer("t")
    lb_port = free_port()
    await lb.start("127.0.0.1", lb_port)
    try:
        lb.add("only", "127.0.0.1", port)
        lb.set_routable(["only"])
        for _ in range(3):  # each reuse of the pooled connection meets a close
            answer = await request(lb_port, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 200"), answer
        assert lb.retries == 0  # retried on a fresh connection, not counted as a failure
    finally:
        await lb.close()
        server.close()


def test_a_stale_keepalive_connection_is_retried_on_the_same_instance() -> None:
    asyncio.run(stale_scenario())


def test_log_cap_keeps_the_newest_lines(tmp_path: Path) -> None:
    log = tmp_path / "i.log"
    log.write_text("".join(f"line {n}\n" for n in range(2000)))  # ~19 KB
    cap_log(log, 8192)
    assert log.stat().st_size == 0
    rotated = tmp_path / "i.log.1"
    assert rotated.stat().st_size <= 4096
    with log.open("a") as f:
        f.write("after\n")
    assert log_tail(log, 2) == "line 1999\nafter"


@pytest.mark.parametrize(
    "raw",
    [
        b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",  # space before the colon (smuggling vector)
        b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",  # obsolete line folding
        b"GET / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"GET / HTTP/2.0\r\n\r\n",
        b"GET /\r\n\r\n",
        b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
    ],
)
def test_malformed_heads_are_refused(raw: bytes) -> None:
    with pytest.raises(BadMessage):
        parse_head(raw, request=True)


def test_heads_lose_hop_by_hop_headers_and_gain_forwarding() -> None:
    head = parse_head(
        b"POST /x HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Trace\r\nX-Trace: 1\r\n"
        b"Keep-Alive: 5\r\nX-Forwarded-For: 10.0.0.1\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 9\r\nExpect: 100-continue\r\n\r\n",
        request=True,
    )
    assert head.chunked and head.length is None and head.expect and not head.close
    upstream = make_upstream_head(head, b"127.0.0.1")
    assert upstream == (
        b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
        b"X-Forwarded-For: 10.0.0.1, 127.0.0.1\r\nX-Forwarded-Proto: http\r\n\r\n"
    )
    assert parse_head(b"GET / HTTP/1.0\r\n\r\n", request=True).close
    assert not parse_head(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", request=True).close
