"""The balancer's data path at its edges: the real balancer process, real backends, raw sockets.

What a rewrite of the hot path could break without the smuggling corpus
noticing: requests split at every byte, pipelined, with their body in the
same packet; chunked bodies cut inside a size line, between CR and LF or
inside the trailers; Expect: 100-continue; responses without a body (HEAD,
204, 304) or read to the close; either side going away mid-message; heads
over the limit; and that what reaches an instance is written afresh.
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lbharness import Backend, BalancerProcess, balancer_process, exchange, free_port, wait_port

pytestmark = pytest.mark.slow

# An instance that answers each path with exactly these bytes; /echo answers with
# the head it received and the body it read (de-chunked), so a test sees what the
# balancer sent on.
SCRIPTED = r"""
import socket, sys, threading

CANNED = {
    b"/head-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
    b"/204": b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
    b"/304": b"HTTP/1.1 304 Not Modified\r\nETag: \"e\"\r\nContent-Length: 5\r\n\r\n",
    b"/bad": b"HTTP/1.1 200 OK\r\nX: a\rb\r\nContent-Length: 2\r\n\r\nok",
}


def read_head(f):
    lines = []
    while True:
        line = f.readline(70000)
        if not line:
            return None
        lines.append(line)
        if line == b"\r\n":
            return b"".join(lines)


def read_body(f, head):
    fields = {}
    for line in head.split(b"\r\n")[1:]:
        if b":" in line:
            name, value = line.split(b":", 1)
            fields[name.strip().lower()] = value.strip()
    if fields.get(b"transfer-encoding") == b"chunked":
        body = b""
        while size := int(f.readline().split(b";")[0], 16):
            body += f.read(size + 2)[:-2]
        while f.readline() not in (b"\r\n", b""):
            pass
        return body
    return f.read(int(fields.get(b"content-length", b"0")))


def serve(conn):
    f = conn.makefile("rb")
    try:
        while (head := read_head(f)) is not None:
            method, path = head.split(b" ")[:2]
            body = read_body(f, head)
            if path == b"/eof":
                conn.sendall(b"HTTP/1.1 200 OK\r\n\r\nuntil close")
                break
            if path == b"/trailers":
                conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"5\r\nhello\r\n0\r\nX-Endless: ")
                for _ in range(64):
                    conn.sendall(b"a" * 16384)
                conn.sendall(b"\r\n\r\n")
                continue
            if path == b"/cut":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
                break
            if path == b"/interim":
                conn.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n")
            elif path in CANNED:
                conn.sendall(CANNED[path])
                continue
            answer = head + b"---\r\n" + body
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))
    except (OSError, ValueError):
        pass
    conn.close()


server = socket.create_server(("127.0.0.1", int(sys.argv[1])))
while True:
    conn, _ = server.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


class Scripted:
    """The scripted instance, as a process of its own."""

    def __init__(self, directory: Path) -> None:
        (directory / "scripted.py").write_text(SCRIPTED)
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, str(directory / "scripted.py"), str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def lb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BalancerProcess]:
    with balancer_process(tmp_path_factory.mktemp("lb")) as process:
        yield process


@pytest.fixture(scope="module")
def scripted(lb: BalancerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The balancer's port for a fleet of the scripted instance."""
    instance = Scripted(tmp_path_factory.mktemp("scripted"))
    yield lb.serve(instance.port)
    instance.stop()


@pytest.fixture(scope="module")
def gunicorn(
    lb: BalancerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Backend, int]]:
    """A recording gunicorn and the balancer's port for it."""
    backend = Backend("gunicorn", tmp_path_factory.mktemp("gunicorn"))
    yield backend, lb.serve(backend.port)
    backend.stop()


def talk(port: int, *parts: bytes, pause: float = 0.05, timeout: float = 20.0) -> bytes:
    """Send ``parts`` as separate packets, then read until the balancer closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for n, part in enumerate(parts):
            if n:
                time.sleep(pause)
            sock.sendall(part)
        return read_all(sock, timeout)


def read_all(sock: socket.socket, timeout: float = 20.0) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            more = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not more:
            break
        data += more
    return data


def statuses(raw: bytes) -> list[int]:
    return [int(s) for s in re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)]


def echoed(raw: bytes) -> tuple[bytes, bytes]:
    """The head and body an /echo answer says the instance received."""
    body = raw.split(b"\r\n\r\n", 1)[1]
    head, got = body.split(b"\r\n\r\n---\r\n", 1)
    return head, got


CLOSE = b"Host: x\r\nConnection: close\r\n\r\n"


def test_pipelined_requests_in_one_packet_are_answered_in_order(
    gunicorn: tuple[Backend, int],
) -> None:
    backend, port = gunicorn
    backend.seen()
    raw = b"".join(
        [
            *[b"GET /p/%d HTTP/1.1\r\nHost: x\r\n\r\n" % n for n in range(5)],
            b"POST /p/5 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
            b"POST /p/6 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\n\r\n",
            b"GET /p/7 HTTP/1.1\r\n" + CLOSE,
        ]
    )
    answers = exchange(port, raw, timeout=20.0)
    assert [s for s, _ in answers] == [200] * 8
    assert [body.split(b" host=")[0] for _, body in answers] == [
        b"ECHO %s /p/%d" % (b"POST" if n in (5, 6) else b"GET", n) for n in range(8)
    ]
    assert backend.seen() == [f"{'POST' if n in (5, 6) else 'GET'} /p/{n}" for n in range(8)]


CHUNKED = (
    b"POST /split HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
)


def test_a_request_split_at_every_byte_is_read_the_same(scripted: int) -> None:
    """Cut inside the head, the size lines, between CR and LF, inside the trailers."""
    follow = b"GET /echo HTTP/1.1\r\n" + CLOSE
    wrong = []
    for cut in range(1, len(CHUNKED)):
        raw = talk(scripted, CHUNKED[:cut], CHUNKED[cut:] + follow, pause=0.02)
        if statuses(raw) != [200, 200]:
            wrong.append((cut, raw[:200]))
            continue
        head, body = echoed(raw.split(b"HTTP/1.1 200 OK", 2)[1])
        if body != b"hello world" or b"Content-Length: 11\r\n" not in head:
            wrong.append((cut, head + body))
        if b"Transfer-Encoding" in head or b"X-Trailer" in head or b"ext" in head:
            wrong.append((cut, head))
    assert not wrong, wrong[:3]


def test_a_large_chunked_body_cut_at_awkward_points_is_reframed(scripted: int) -> None:
    """Over 64 KiB, the body streams: chunks are written afresh, whatever the cuts."""
    data = bytes(range(256)) * 300  # 76,800 bytes
    body = b"".join(b"%x\r\n%s\r\n" % (len(data[i : i + 10000]), data[i : i + 10000])
                    for i in range(0, len(data), 10000)) + b"0\r\nX-T: 1\r\n\r\n"  # fmt: skip
    head = (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    cuts = [body.index(b"\r\n") - 1, body.index(b"\r\n") + 1, len(body) - 9, len(body) - 3]
    pieces = [head + body[: cuts[0]]]
    pieces += [body[a:b] for a, b in zip(cuts, [*cuts[1:], len(body)], strict=True)]
    raw = talk(scripted, *pieces, pause=0.1)
    assert statuses(raw) == [200]
    got_head, got = echoed(raw)
    assert got == data
    assert b"Transfer-Encoding: chunked\r\n" in got_head and b"X-T" not in got_head


def test_expect_100_continue(scripted: int) -> None:
    with socket.create_connection(("127.0.0.1", scripted), timeout=20) as sock:
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: 5\r\nConnection: close\r\n\r\n"
        )
        first = b""
        while not first.endswith(b"\r\n\r\n"):
            more = sock.recv(1)
            assert more, first
            first += more
        assert first == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"hello")
        raw = read_all(sock)
    assert statuses(raw) == [200]
    head, body = echoed(raw)
    assert body == b"hello" and b"expect" not in head.lower()


def test_responses_without_a_body_keep_the_connection_in_step(scripted: int) -> None:
    """HEAD (with a Content-Length), 204 and 304: no body is waited for or passed on."""
    raw = talk(
        scripted,
        b"HEAD /head-cl HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /204 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /304 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /echo HTTP/1.1\r\n" + CLOSE,
    )
    heads = raw.split(b"\r\n\r\n")
    assert statuses(raw) == [200, 204, 304, 200]
    assert b"Content-Length: 100" in heads[0]
    assert heads[1].startswith(b"HTTP/1.1 204 ") and b"Content-Length" not in heads[1]
    assert heads[2].startswith(b"HTTP/1.1 304 ") and b"Content-Length: 5" in heads[2]
    assert heads[3].startswith(b"HTTP/1.1 200 OK")  # right after the 304: nothing in between


def test_a_response_read_to_the_close_is_rechunked_for_11_and_closes_for_10(
    scripted: int,
) -> None:
    raw = talk(
        scripted,
        b"GET /eof HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /echo HTTP/1.1\r\n" + CLOSE,
        pause=0.5,
    )
    assert statuses(raw) == [200, 200]
    assert b"Transfer-Encoding: chunked\r\n" in raw
    assert b"\r\n\r\nb\r\nuntil close\r\n0\r\n\r\nHTTP/1.1 200 OK" in raw
    old = talk(scripted, b"GET /eof HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
    assert old.endswith(b"\r\nConnection: close\r\n\r\nuntil close")


def test_an_instance_closing_mid_response_cuts_the_client_off(scripted: int) -> None:
    raw = talk(
        scripted,
        b"GET /cut HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /echo HTTP/1.1\r\n" + CLOSE,
        pause=0.5,
    )
    assert raw.startswith(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n")
    assert raw.endswith(b"\r\n\r\npartial") and statuses(raw) == [200]  # then the close
    assert statuses(talk(scripted, b"GET /echo HTTP/1.1\r\n" + CLOSE)) == [200]


def test_a_client_closing_mid_request_costs_the_next_clients_nothing(
    gunicorn: tuple[Backend, int],
) -> None:
    backend, port = gunicorn
    backend.seen()
    for n in range(10):
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall(
                b"POST /gone/%d HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n" % n
                + b"x" * 100000
            )
    for n in range(10):
        answers = exchange(port, b"GET /after/%d HTTP/1.1\r\n" % n + CLOSE, timeout=20.0)
        assert answers == [(200, b"ECHO GET /after/%d host=x" % n)]
    seen = backend.seen()
    assert [line for line in seen if not line.startswith("POST /gone/")] == [
        f"GET /after/{n}" for n in range(10)
    ]


def test_an_upgrade_offer_that_cannot_apply_is_ignored(scripted: int) -> None:
    """RFC 9110 7.8: a server MAY ignore Upgrade, and MUST in HTTP/1.0. A request with a
    body is served as the plain request it also is: `curl --http2 -d` offers h2c on every
    POST to an http:// URL, and got 400 here where it gets 200 from any server. The
    instance sees no offer (Upgrade and what Connection names are hop-by-hop), and the
    request after the body is a request, not another protocol's bytes."""
    offers = (
        (
            b"1.1",
            b"Connection: Upgrade\r\nUpgrade: websocket\r\n",
            b"Content-Length: 5\r\n\r\nhello",
        ),
        (b"1.1", b"Upgrade: websocket\r\n", b"Content-Length: 5\r\n\r\nhello"),  # no offer
        (
            b"1.1",
            b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
            b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n",
            b"Content-Length: 5\r\n\r\nhello",
        ),
        (b"1.0", b"Connection: Upgrade, keep-alive\r\nUpgrade: websocket\r\n", b"\r\n"),
    )
    for version, offer, framing in offers:
        raw = talk(
            scripted,
            b"POST /echo HTTP/"
            + version
            + b"\r\nHost: x\r\n"
            + offer
            + framing
            + b"GET /echo HTTP/1.1\r\n"
            + CLOSE,
        )
        assert statuses(raw) == [200, 200], raw
        seen = raw.split(b"---\r\n")[0].lower()
        assert b"upgrade" not in seen and b"http2-settings" not in seen, raw
        if version == b"1.1":
            assert b"---\r\nhello" in raw, raw
    # the body llhttp skips for an offer is counted out across reads, never parsed
    raw = talk(
        scripted,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
        b"Content-Length: 40\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n",
        b"\r\nabcde" + b"GET /echo HTTP/1.1\r\n" + CLOSE,  # 33 + 7 = 40
    )
    assert statuses(raw) == [200, 200], raw
    assert raw.count(b"/smuggled") == 1 and b"---\r\nGET /smuggled" in raw, raw
    # a chunked one would have to be parsed outside llhttp: refused
    raw = talk(
        scripted,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    assert statuses(raw) == [400], raw


def test_a_request_target_too_long_is_414_not_431(scripted: int) -> None:
    """RFC 9112 3: a target longer than the server parses MUST get 414 (gunicorn and
    nginx say so); kiln said 431, as for header fields too large. A head too large
    because of its fields is still 431."""
    for size in (70_000, 200_000):
        raw = talk(scripted, b"GET /" + b"a" * size + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert statuses(raw) == [414], (size, raw[:300])
    raw = talk(
        scripted,
        b"GET /" + b"a" * 60_000 + b" HTTP/1.1\r\nHost: x\r\nX: " + b"b" * 10_000 + b"\r\n\r\n",
    )
    assert statuses(raw) == [414], raw[:300]  # most of the head is its target
    raw = talk(scripted, b"GET /a HTTP/1.1\r\nHost: x\r\nX: " + b"b" * 70_000 + b"\r\n\r\n")
    assert statuses(raw) == [431], raw[:300]


def test_host_is_checked_on_a_listener_with_one_fleet(scripted: int) -> None:
    """The listener routes without looking at Host; the parser still refuses a bad one."""
    for fields in (
        b"",  # none on HTTP/1.1
        b"Host: x\r\nHost: y\r\n",
        b"Host: a b\r\n",
        b"Host: x/y\r\n",
        b"Host: x@y\r\n",
        b"Host: x:80:80\r\n",
    ):
        raw = talk(scripted, b"GET /echo HTTP/1.1\r\n" + fields + b"Connection: close\r\n\r\n")
        assert statuses(raw) == [400], (fields, raw)
    raw = talk(scripted, b"GET http://y/echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert statuses(raw) == [400]


def test_what_reaches_the_instance_is_written_afresh(scripted: int) -> None:
    raw = talk(
        scripted,
        b"GET /echo HTTP/1.1\r\nhOsT:   Example.COM:8080  \r\nx-lower:\t  v  \t\r\n"
        b"Connection: X-Drop, close\r\nX-Drop: secret\r\nKeep-Alive: timeout=5\r\n"
        b"Proxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X-T\r\n"
        b"X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Real-IP: 6.6.6.6\r\n"
        b"Forwarded: for=6.6.6.6\r\nX-Forwarded-Host: evil\r\n\r\n",
    )
    assert statuses(raw) == [200]
    head, _ = echoed(raw)
    assert head.split(b"\r\n") == [
        b"GET /echo HTTP/1.1",
        b"Host: Example.COM:8080",
        b"x-lower: v",
        b"X-Forwarded-For: 127.0.0.1",
        b"X-Forwarded-Proto: http",
    ]


def test_a_head_that_starts_in_the_read_ending_a_body_is_still_limited(scripted: int) -> None:
    """The head-size count began at a read that started inside a head: a head that
    began in the same read as the previous body's end went uncounted for that read,
    and a 100 KB head reached the instance."""
    for size in (70_000, 100_000):
        raw = talk(
            scripted,
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n",
            b"hello" + b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * size + b"\r\n\r\n",
            pause=0.3,
        )
        assert statuses(raw) == [200, 431], (size, raw[-300:])


def test_trailers_are_limited_like_a_head(scripted: int) -> None:
    """Trailer fields were counted (100) but not measured: one endless trailer was
    buffered until the body deadline (200 MB in 60 s)."""
    head = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", scripted), timeout=20) as sock:
        sock.sendall(head + b"0\r\nX-Endless: ")
        with contextlib.suppress(OSError):  # refused half-way: the rest is reset
            for _ in range(64):
                sock.sendall(b"a" * 16384)
                time.sleep(0.005)
            sock.sendall(b"\r\n\r\n")
        raw = read_all(sock)
    assert statuses(raw) == [431], raw[:300]
    assert time.monotonic() - started < 15.0  # not the body deadline
    many = b"".join(b"X-T%d: %s\r\n" % (n, b"t" * 2000) for n in range(40))  # 80 KB
    raw = talk(scripted, head + b"0\r\n" + many + b"\r\n")
    assert statuses(raw) == [431], raw[:300]


def test_underscore_spellings_of_the_balancers_fields_are_dropped(scripted: int) -> None:
    """CGI-style servers (wsgiref, Django's META) read X_Forwarded_Proto as
    X-Forwarded-Proto: kept, it let an untrusted client claim https (Django takes the
    first of "https,http") or any address."""
    raw = talk(
        scripted,
        b"GET /echo HTTP/1.1\r\nHost: x\r\nX_Forwarded_Proto: https\r\n"
        b"X_Forwarded_For: 6.6.6.6\r\nx_real_ip: 6.6.6.6\r\nX_Forwarded_Host: evil\r\n"
        b"Content_Length: 9\r\nTransfer_Encoding: chunked\r\nX_App: kept\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert statuses(raw) == [200]
    head, _ = echoed(raw)
    assert head.split(b"\r\n")[2:] == [
        b"X_App: kept",
        b"X-Forwarded-For: 127.0.0.1",
        b"X-Forwarded-Proto: http",
    ]


def test_an_instances_endless_trailers_are_cut_off(scripted: int) -> None:
    """The response side held an instance's trailers whole too (a response body has
    no deadline): past 64 KiB the client's answer is cut off instead."""
    started = time.monotonic()
    raw = talk(scripted, b"GET /trailers HTTP/1.1\r\n" + CLOSE)
    assert raw.startswith(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n")
    assert raw.endswith(b"\r\n\r\n5\r\nhello\r\n"), raw[-100:]  # no last chunk: cut off
    assert time.monotonic() - started < 15.0


def test_an_http_10_client_gets_no_interim_response(scripted: int) -> None:
    """RFC 9110 15.2 and 10.1.1: no 1xx to an HTTP/1.0 client, whose parser takes the
    first status line it reads for the answer (and 100-continue is ignored)."""
    new = talk(scripted, b"GET /interim HTTP/1.1\r\n" + CLOSE)
    assert statuses(new) == [103, 200]
    old = talk(scripted, b"GET /interim HTTP/1.0\r\nHost: x\r\n\r\n")
    assert statuses(old) == [200], old[:200]
    old = talk(
        scripted,
        b"POST /echo HTTP/1.0\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
        b"hello",
        pause=0.5,
    )
    assert statuses(old) == [200] and echoed(old)[1] == b"hello", old[:200]


def test_one_long_chunk_read_in_many_pieces_is_not_taken_for_trailers(scripted: int) -> None:
    """Only reads inside the last chunk count against the trailers' 64 KiB."""
    data = b"d" * 300_000
    body = b"%x\r\n%s\r\n0\r\nX-T: 1\r\n\r\n" % (len(data), data)
    head = (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    pieces = [head + body[:10], *[body[i : i + 50_000] for i in range(10, len(body), 50_000)]]
    raw = talk(scripted, *pieces, pause=0.1)
    assert statuses(raw) == [200]
    assert echoed(raw)[1] == data


def test_after_a_broken_response_the_next_requests_get_their_own_answers(scripted: int) -> None:
    """A response the balancer refuses (CR in a value) is a 502 that closes the client's
    connection; the instance's connection is not pooled, so nothing of it reaches the
    next clients, kept-alive or new."""
    for n in range(3):
        raw = talk(scripted, b"GET /bad HTTP/1.1\r\nHost: x\r\n\r\nGET /echo HTTP/1.1\r\n" + CLOSE)
        assert statuses(raw) == [502], raw[:200]
        raw = talk(
            scripted,
            b"GET /echo?a=%d HTTP/1.1\r\nHost: x\r\n\r\n" % n,
            b"GET /echo?b=%d HTTP/1.1\r\n" % n + CLOSE,
            pause=0.2,
        )
        assert statuses(raw) == [200, 200]
        first, second = raw.split(b"HTTP/1.1 200 OK")[1:]
        assert b"GET /echo?a=%d " % n in first and b"GET /echo?b=%d " % n in second
