"""What a client giving up, and the balancer's own 5xx answers, look like to others.

Found by real clients: ten `curl --max-time 1` long polls through the balancer
left the instance working for nobody until it answered (a Starlette app's
``is_disconnected()`` never turned true; straight to it, at once); and a 502
the balancer made (an instance answering 120 header fields) showed in no
request or 5xx counter and no log line, so a dashboard of 5xx over requests
read 0% while every client got 502.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lbharness import BalancerProcess, balancer_process, exchange, free_port, wait_port

# One request per connection: /wait never answers and writes down whether (and how
# soon) its connection was closed under it; /fields answers 120 header fields.
INSTANCE = r"""
import socket, sys, threading, time

events = open(sys.argv[2], "a", buffering=1)

def serve(conn):
    f = conn.makefile("rb")
    line = f.readline()
    while f.readline() not in (b"\r\n", b""):
        pass
    target = line.split(b" ")[1] if b" " in line else b""
    if target.startswith(b"/wait"):
        started = time.monotonic()
        conn.settimeout(30)
        try:
            told = conn.recv(1) == b""
        except TimeoutError:
            told = False
        except OSError:
            told = True  # reset
        took = time.monotonic() - started
        events.write(f"{target.decode()} {'told' if told else 'not told'} {took:.1f}\n")
    elif target == b"/fields":
        fields = b"".join(b"X-%d: v\r\n" % n for n in range(120))
        conn.sendall(b"HTTP/1.1 200 OK\r\n" + fields + b"Content-Length: 0\r\n\r\n")
    else:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    conn.close()

server = socket.create_server(("127.0.0.1", int(sys.argv[1])))
while True:
    conn, _ = server.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BalancerProcess, int, Path]]:
    """The balancer, the port of a fleet of one such instance, and its events file."""
    directory = tmp_path_factory.mktemp("abort")
    (directory / "instance.py").write_text(INSTANCE)
    events = directory / "events"
    events.touch()
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(directory / "instance.py"), str(port), str(events)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        with balancer_process(directory / "home") as lb:
            yield lb, lb.serve(port, limits={"response_timeout": 40.0}), events
    finally:
        proc.kill()
        proc.wait(10)


def told(events: Path, target: str, within: float = 10.0) -> str:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for line in events.read_text().splitlines():
            if line.startswith(target + " "):
                return line
        time.sleep(0.1)
    return f"{target}: nothing within {within} s"


@pytest.mark.parametrize("how", ["close", "reset"])
def test_a_client_that_gives_up_waiting_closes_the_instances_connection(
    fleet: tuple[BalancerProcess, int, Path], how: str
) -> None:
    """The instance learns it at once, as behind nginx (proxy_ignore_client_abort off)."""
    _, port, events = fleet
    target = f"/wait-{how}"
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    time.sleep(0.5)  # sent on, and waiting
    if how == "reset":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    line = told(events, target)
    assert " told " in line, line
    assert float(line.rsplit(" ", 1)[1]) < 5.0, line


@pytest.mark.parametrize("after", [0.0, 0.5])
def test_a_client_that_half_closes_before_its_answer_has_given_up_whenever_it_does(
    fleet: tuple[BalancerProcess, int, Path], after: float
) -> None:
    """As behind nginx, a FIN before the answer begins is a client giving up, whether it
    came while the request waited for the instance or while the instance was still
    being reached. At once (with the request, a fresh instance connection to open), the
    request used to be sent anyway and the instance worked for nobody."""
    _, port, events = fleet
    target = f"/wait-half-{after:g}"
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    time.sleep(after)
    sock.shutdown(socket.SHUT_WR)
    started = time.monotonic()
    assert sock.recv(4096) == b"", "no answer: the client gave up"
    assert time.monotonic() - started < 5.0
    sock.close()
    time.sleep(1.0)
    line = told(events, target, within=1.0)
    # never sent on, or the instance was told at once
    assert line.endswith("nothing within 1.0 s") or " told " in line, line


def test_the_balancers_own_502_is_counted_and_logged(
    fleet: tuple[BalancerProcess, int, Path],
) -> None:
    lb, port, _ = fleet
    before = lb.call("stats", fleet="f0")["stats"]["f0i0"]
    answers = exchange(port, b"GET /fields HTTP/1.1\r\nHost: x\r\n\r\n", timeout=10)
    assert [status for status, _ in answers] == [502], answers
    after = lb.call("stats", fleet="f0")["stats"]["f0i0"]
    assert after["requests"] - before["requests"] == 1, (before, after)
    assert after["errors_5xx"] - before["errors_5xx"] == 1, (before, after)
    assert after["failures"] == before["failures"], "counted once: as the 5xx, not also a failure"
    text = lb.call("metrics")["text"]
    assert 'kiln_lb_fleet_responses_5xx_total{fleet="f0"} 1' in text, text
    deadline = time.monotonic() + 5
    while "answered 502" not in lb.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    logged = [line for line in lb.log.read_text().splitlines() if "answered 502" in line]
    assert logged and "GET /fields" in logged[0] and "too many header fields" in logged[0], logged
