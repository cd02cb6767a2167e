"""The load balancer's HTTP handling, in-process against scripted asyncio backends.

Fast and precise: framing (chunked, close-delimited, HTTP/1.0 clients),
which failures are retried on another instance and which are not, 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from lbharness import balancer_process
from localtest import free_port

from kiln.local.health import probe
from kiln.local.lb import Balancer
from kiln.local.procs import cap_log, log_tail, loop_factory

CLOSE = b"Host: x\r\nConnection: close\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
# What an instance may answer and the balancer must not pass on: each is a 502.
BAD_RESPONSES = {
    b"/name-space": b"HTTP/1.1 200 OK\r\nA b: c\r\nContent-Length: 2\r\n\r\nok",
    b"/bare-lf": b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
    b"/cr-in-value": b"HTTP/1.1 200 OK\r\nX: a\rb\r\nContent-Length: 2\r\n\r\nok",
    b"/cl-te": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"2\r\nok\r\n0\r\n\r\n",
    b"/two-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    b"/gzip-te": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok",
    b"/status": b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok",
    b"/status-99": b"HTTP/1.1 099 OK\r\nContent-Length: 2\r\n\r\nok",
    b"/reason-ctl": b"HTTP/1.1 200 O\x01K\r\nContent-Length: 2\r\n\r\nok",
    b"/version": b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"/switch": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
}


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
                elif path == b"/double":
                    writer.write(OK + OK)
                elif path in BAD_RESPONSES:
                    writer.write(BAD_RESPONSES[path])
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
        assert sum(p.startswith(b"HTTP/1.1 502") for p in posts) == 2, posts
        assert sum(p.endswith(b"b POST") for p in posts) == 2

        chunked = await request(lb_port, b"GET /chunked HTTP/1.1\r\n" + close)
        assert b"Transfer-Encoding: chunked" in chunked
        assert chunked.endswith(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        old = await request(lb_port, b"GET /chunked HTTP/1.0\r\n\r\n")  # 1.0: de-chunked
        assert old.endswith(b"\r\n\r\nhello world") and b"Connection: close" in old
        interim = await request(lb_port, b"GET /interim HTTP/1.1\r\n" + close)
        assert interim.startswith(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n")
        assert interim.endswith(b"\r\n\r\nfull") and b"HTTP/1.1 200 OK" in interim
        eof = await request(lb_port, b"GET /eof HTTP/1.1\r\n" + close)  # re-framed as chunks
        assert eof.endswith(b"\r\n\r\nb\r\nuntil close\r\n0\r\n\r\n"), eof
        old_eof = await request(lb_port, b"GET /eof HTTP/1.0\r\n\r\n")  # 1.0: until close
        assert old_eof.endswith(b"\r\n\r\nuntil close") and b"Connection: close" in old_eof
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
            answer = await request(
                lb_port, b"GET / HTTP/1.1\r\nHost: x\r\n" + b"Connection: close\r\n\r\n"
            )
            assert answer.startswith(b"HTTP/1.1 200"), answer
        assert lb.retries == 0  # retried on a fresh connection, not counted as a failure
    finally:
        await lb.close()
        server.close()


def test_a_stale_keepalive_connection_is_retried_on_the_same_instance() -> None:
    asyncio.run(stale_scenario())


async def bad_responses_scenario() -> None:
    port = free_port()
    server = await asyncio.start_server(backend("only"), "127.0.0.1", port)
    lb = Balancer("t")
    lb_port = free_port()
    await lb.start("127.0.0.1", lb_port)
    try:
        lb.add("only", "127.0.0.1", port)
        lb.set_routable(["only"])
        for path in [*BAD_RESPONSES, b"/double"]:
            answer = await request(lb_port, b"GET %s HTTP/1.1\r\n%s" % (path, CLOSE))
            if path == b"/double":  # a second, unasked-for response must not reach anyone
                assert answer.count(b"HTTP/1.1") == 1 and answer.endswith(b"ok"), answer
            else:
                assert answer.startswith(b"HTTP/1.1 502"), (path, answer)
            after = await request(lb_port, b"GET /next HTTP/1.1\r\n" + CLOSE)
            assert after.endswith(b"\r\n\r\nonly GET"), (path, after)
    finally:
        await lb.close()
        server.close()


def test_bad_responses_are_not_passed_on() -> None:
    asyncio.run(bad_responses_scenario())


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


async def close_under_load() -> list[dict[str, object]]:
    """Close a balancer while 20 clients stream 100 kB answers through it."""
    errors: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, context: errors.append(context))
    body = b"x" * 100_000

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        writer.close()

    async def client(port: int) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            while True:
                writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(len(body))

    backend_port, port = free_port(), free_port()
    server = await asyncio.start_server(big, "127.0.0.1", backend_port)
    lb = Balancer("t")
    await lb.start("127.0.0.1", port)
    lb.add("a", "127.0.0.1", backend_port)
    lb.set_routable(["a"])
    clients = [asyncio.create_task(client(port)) for _ in range(20)]
    await asyncio.sleep(1.0)
    await lb.close()
    await asyncio.sleep(0.5)  # what was under way meets the closed connections
    for task in clients:
        task.cancel()
    server.close()
    return errors


def test_closing_under_load_raises_nothing() -> None:
    """It used to log a RuntimeError traceback per busy connection (writes to closed transports)."""
    runner = asyncio.Runner(loop_factory=loop_factory())
    with runner:
        errors = runner.run(close_under_load())
    assert errors == []


@pytest.mark.slow
def test_a_stop_with_the_agent_connected_logs_no_traceback(tmp_path: Path) -> None:
    """The agent keeps its control connection open; a SIGTERM used to log a
    CancelledError traceback for it in lb.log on every normal stop."""
    with balancer_process(tmp_path) as lb, socket.socket(socket.AF_UNIX) as agent:
        agent.connect(str(lb.socket))
        agent.sendall(b'{"op": "hello"}\n')
        agent.settimeout(30.0)
        assert b'"ok": true' in agent.recv(65536)
        lb.stop()
        assert lb.proc.returncode == 0
    text = lb.log.read_text()
    assert "stopped" in text and "Traceback" not in text, text
