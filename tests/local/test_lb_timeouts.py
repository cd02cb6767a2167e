"""Every wait has a deadline: slow heads, slow and endless bodies, silent instances.

The slow clients are real sockets that stop sending; the backends are real
servers (gunicorn with a fixed number of threads, so a client that held one
would show), behind the in-process balancer with short limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lbharness import Backend, LoopThread, balancer, exchange
from localtest import free_port, serving, write_config

from kiln.config import load_config
from kiln.home import Home
from kiln.local.provider import LocalProvider
from kiln.local.proxy import Limits

LIMITS = Limits(
    header_timeout=1.0,
    body_timeout=3.0,
    body_idle_timeout=1.0,
    client_idle_timeout=1.5,
    response_timeout=1.0,
)
GET = b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def gunicorn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    server = Backend("gunicorn", Path(tmp_path_factory.mktemp("gunicorn")), threads=2)
    yield server
    server.stop()


def answer_after(sock: socket.socket, timeout: float = 10.0) -> tuple[bytes, float]:
    """Everything the balancer sends until it closes, and how long that took."""
    started = time.monotonic()
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data, time.monotonic() - started


def stalled(port: int, sent: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(sent)
    return sock


def test_slow_head_gets_408(loop: LoopThread, gunicorn: Backend) -> None:
    with (
        balancer(loop, gunicorn.port, limits=LIMITS) as (_, port),
        stalled(port, b"GET /slow HTTP/1.1\r\nHost: x\r\n") as sock,
    ):
        data, took = answer_after(sock)
    assert data.startswith(b"HTTP/1.1 408 "), data
    assert 0.9 < took < 5.0
    assert "GET /slow" not in gunicorn.seen()


def test_idle_keepalive_connection_is_closed_quietly(loop: LoopThread, gunicorn: Backend) -> None:
    with balancer(loop, gunicorn.port, limits=LIMITS) as (_, port), stalled(port, b"") as sock:
        data, took = answer_after(sock)
    assert data == b"" and 1.4 < took < 6.0


def test_slow_small_body_gets_408_and_never_reaches_the_instance(
    loop: LoopThread, gunicorn: Backend
) -> None:
    head = b"POST /small HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
    with (
        balancer(loop, gunicorn.port, limits=LIMITS) as (_, port),
        stalled(port, head + b"x" * 10) as sock,
    ):
        data, took = answer_after(sock)
    assert data.startswith(b"HTTP/1.1 408 "), data
    assert 0.9 < took < 5.0
    assert "POST /small" not in gunicorn.seen()  # held by the balancer, never forwarded


def test_slow_large_body_is_cut_off_and_the_instance_freed(
    loop: LoopThread, gunicorn: Backend
) -> None:
    head = b"POST /large HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n"
    with balancer(loop, gunicorn.port, limits=LIMITS) as (_, port):
        socks = [stalled(port, head + b"x" * 200_000) for _ in range(2)]  # both threads
        try:
            for sock in socks:
                data, _ = answer_after(sock)
                assert data.startswith(b"HTTP/1.1 408 "), data
        finally:
            for sock in socks:
                sock.close()
        assert exchange(port, GET) == [(200, b"ECHO GET /ok host=x")]
    assert gunicorn.seen().count("POST /large") == 2  # streamed: the instance had them


def test_endless_chunked_body_gets_408_at_the_total_limit(
    loop: LoopThread, gunicorn: Backend
) -> None:
    head = b"POST /endless HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    with balancer(loop, gunicorn.port, limits=LIMITS) as (_, port):
        sock = stalled(port, head)
        stop = threading.Event()

        def drip() -> None:  # a byte every 0.2 s: never idle for long, never done
            while not stop.wait(0.2):
                try:
                    sock.sendall(b"1\r\nx\r\n")
                except OSError:
                    return

        dripper = threading.Thread(target=drip)
        dripper.start()
        try:
            data, took = answer_after(sock)
        finally:
            stop.set()
            dripper.join()
            sock.close()
    assert data.startswith(b"HTTP/1.1 408 "), data
    assert 2.9 < took < 8.0


def test_ten_slow_bodies_do_not_starve_a_threaded_backend(
    loop: LoopThread, gunicorn: Backend
) -> None:
    """Ten clients trickle bodies (never idle long enough for body_idle_timeout, so only
    buffering keeps them off the instance); normal requests are answered meanwhile."""
    sized = b"POST /slowloris HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + b"x" * 100
    chunked = b"POST /slowloris HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunked += b"64\r\n" + b"x" * 100 + b"\r\n"
    with balancer(loop, gunicorn.port, limits=LIMITS) as (_, port):
        slow = [stalled(port, sized if n % 2 else chunked) for n in range(10)]
        stop = threading.Event()

        def trickle() -> None:
            while not stop.wait(0.3):
                for n, sock in enumerate(slow):
                    with contextlib.suppress(OSError):
                        sock.sendall(b"x" if n % 2 else b"1\r\nx\r\n")

        trickler = threading.Thread(target=trickle)
        trickler.start()
        try:
            for n in range(20):  # gunicorn has 2 threads; ten slow clients would take them all
                started = time.monotonic()
                path = b"/ok%d" % n
                answer = exchange(port, GET.replace(b"/ok", path), timeout=5.0)
                assert answer == [(200, b"ECHO GET %s host=x" % path)]
                took = time.monotonic() - started  # a starved instance: body_timeout (3 s)
                assert took < 2.0, f"request {n} waited {took:.1f}s"
            stop.set()
            trickler.join()
            for sock in slow:  # and the trickles are cut off at body_timeout
                assert answer_after(sock)[0].startswith(b"HTTP/1.1 408 ")
            assert "POST /slowloris" not in gunicorn.seen()
        finally:
            stop.set()
            for sock in slow:
                sock.close()


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while await reader.read(65536):  # reads the request, never answers
        pass


def test_silent_instance_gets_504(loop: LoopThread) -> None:
    port = free_port()
    server = loop.run(asyncio.start_server(_silent, "127.0.0.1", port))
    try:
        with balancer(loop, port, limits=LIMITS) as (_, lb_port):
            started = time.monotonic()
            answer = exchange(lb_port, GET)
            took = time.monotonic() - started
    finally:
        server.close()
    assert [status for status, _ in answer] == [504]
    assert 0.9 < took < 5.0


def test_kiln_toml_timeouts_reach_the_balancer(
    local_home: Home, image: str, tmp_path: Path
) -> None:
    port = free_port()
    config = write_config(tmp_path / "app", port, extra='header_timeout = "1s"')
    provider = LocalProvider(local_home, load_config(config))
    provider.launch("web", image, 1)
    serving(provider, 1)
    with stalled(port, b"GET / HTTP/1.1\r\n") as sock:
        data, took = answer_after(sock)
    assert data.startswith(b"HTTP/1.1 408 ") and took < 5.0
