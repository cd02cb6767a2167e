"""What one kept-alive request costs the balancer in Python, counted, not timed.

Timing a proxy on a shared 2-core machine is noise; the number of Python
bytecode instructions the balancer's thread executes per exchange is not.
A real balancer (a ``Front`` routing to a fleet's ``Balancer``, as
``kiln.local.lbproc`` runs it, on uvloop when installed) proxies real
sockets between a client thread and a backend thread answering like node's
``http`` module; only the loop's thread is traced. The budget holds the hot
path to what benchmarks/lb.py was measured with (see benchmarks/README.md):
anything added to every request shows here first.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import pytest
from localtest import free_port, pytest_pure

from kiln.local import lbproc
from kiln.local.compiled import compiled_modules
from kiln.local.front import Front
from kiln.local.lb import Balancer
from kiln.local.procs import loop_factory

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"  # what wrk sends
BODY = b"x" * 128 + b"\n"
RESPONSE = (  # what node's http module answers benchmarks/lb.py
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 129\r\n"
    b"Date: Sun, 29 Nov 2026 14:16:37 GMT\r\nConnection: keep-alive\r\n"
    b"Keep-Alive: timeout=60\r\n\r\n" + BODY
)
BATCHES, PER_BATCH = 12, 20
# Python instructions per exchange on CPython 3.11 (other versions count differently):
# 2,027 before header fields were classified as llhttp hands them over, 1,911 after,
# 1,869 with fewer calls per exchange (routing, pooling, counting), 1,847 with each
# regenerated head written by one formatting operation; 1,990 with writes held to the
# end of the loop's turn (Stream.send_soon): more Python for an exchange alone, as here,
# and much less machine time per request under load (benchmarks/README.md). 2,239 with
# each head's HTTP version read from its first line (kiln.local.messages.version), heads
# joined from their parts, and header fields checked byte by byte: more bytecode in this
# form, whose machine cost stayed as it was (callgrind: 114k and 115k instructions per
# exchange), and 27% fewer machine instructions compiled (63.4k to 46.4k). 2,325 with
# field names classified by a table that needs no hash compiled, plain heads made
# without argument parsing, and the target, latency bucket and Content-Length read
# by loops compiled: 16% fewer machine instructions compiled (46.3k to 38.7k), 4% more
# in this form (115.7k to 120.4k).
BUDGET = 2350


def _serve_backend(listener: socket.socket) -> None:
    conn, _ = listener.accept()
    with conn:
        buffered = b""
        while True:
            while b"\r\n\r\n" not in buffered:
                data = conn.recv(65536)
                if not data:
                    return
                buffered += data
            buffered = buffered.split(b"\r\n\r\n", 1)[1]
            conn.sendall(RESPONSE)


@contextmanager
def _backend() -> Iterator[int]:
    listener = socket.create_server(("127.0.0.1", 0))
    thread = threading.Thread(target=_serve_backend, args=(listener,), daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


class _Counter:
    """Counts the bytecode instructions the thread it is installed on executes."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, frame: FrameType, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        return self._opcode

    def _opcode(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "opcode":
            self.count += 1
        return self._opcode


def _client(
    port: int, counter: _Counter, per_exchange: list[float], failed: list[str], done: Any
) -> None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            for batch in range(BATCHES + 1):  # the first batch warms the pool up
                before = counter.count
                for _ in range(PER_BATCH):
                    sock.sendall(REQUEST)
                    got = b""
                    while not got.endswith(BODY):
                        data = sock.recv(65536)
                        if not data:
                            raise ConnectionError(f"closed after {got!r}")
                        got += data
                    if not got.startswith(b"HTTP/1.1 200 "):
                        raise AssertionError(got)
                if batch:
                    per_exchange.append((counter.count - before) / PER_BATCH)
    except Exception as exc:  # reported by the test, in its own thread
        failed.append(repr(exc))
    finally:
        done()


async def _measure(backend_port: int) -> tuple[list[float], list[str]]:
    fleet = Balancer("web")
    fleet.add("i0", "127.0.0.1", backend_port)
    fleet.set_routable(["i0"])
    front = Front("web")
    front.routes.claim("web", [], fleet)
    port = free_port()
    await front.start("127.0.0.1", port)
    counter = _Counter()
    per_exchange: list[float] = []
    failed: list[str] = []
    loop = asyncio.get_running_loop()
    finished = loop.create_future()

    def done() -> None:
        loop.call_soon_threadsafe(finished.set_result, None)

    client = threading.Thread(target=_client, args=(port, counter, per_exchange, failed, done))
    sys.settrace(counter)
    try:
        client.start()
        await finished
    finally:
        sys.settrace(None)
        await front.close()
        await fleet.close()
    return per_exchange, failed


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="the budget is counted on 3.11")
def test_a_kept_alive_exchange_stays_within_its_python_budget() -> None:
    """Counted on the Python source: compiled modules run no bytecode (they would
    count as nothing), and the source is what runs wherever nothing is compiled."""
    if compiled_modules():  # this process loaded the compiled form: count in one that did not
        done = pytest_pure(
            f"{__file__}::{test_a_kept_alive_exchange_stays_within_its_python_budget.__name__}",
            "-s",
        )
        print(done.stdout[-2000:])
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "Python instructions per exchange" in done.stdout
        return
    with _backend() as backend_port, asyncio.Runner(loop_factory=loop_factory()) as runner:
        per_exchange, failed = runner.run(_measure(backend_port))
    assert not failed, failed
    cheapest = min(per_exchange)  # batches the sweeper or a poll ran in cost more
    print(f"Python instructions per exchange: {cheapest:.0f} (budget {BUDGET})")
    assert cheapest <= BUDGET


def test_the_balancer_process_freezes_its_start_up_heap() -> None:
    """A full collection in the balancer walks what serving made, not the ~19,000
    objects its imports left (10-17 ms of a stalled loop each time)."""
    walked = len(gc.get_objects())
    try:
        lbproc.settle_heap()
        assert gc.get_freeze_count() > 10_000
        assert len(gc.get_objects()) < walked / 4
    finally:
        gc.unfreeze()
