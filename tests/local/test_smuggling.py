"""Request smuggling and response-queue poisoning, against real backends.

Every vector goes through the in-process load balancer to a real server
(Python's http.server, werkzeug, gunicorn) that records each request line it
parses. After each vector a second client, on a new connection, asks for its
own page. The invariant: every request the backend parsed was answered to
the client that sent it (the only exception is the vector's own request,
which the balancer may abort mid-body), and the second client always gets
its own answer. A smuggled request shows up as a backend line nobody got an
answer for, or as somebody else's answer.

The corpus is our own vectors (with the status the balancer must answer)
plus the header mutations of the public scanner defparam/smuggler (its
``default.py`` and ``exhaustive.py`` configs), each sent in a CL.TE and a
TE.CL shape with a real request hidden in the body.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from lbharness import BACKENDS, Backend, LoopThread, balancer, exchange

SMUGGLED = b"GET /smuggled/{n} HTTP/1.1\r\nHost: x\r\n\r\n"


def message(
    headers: list[bytes],
    body: bytes = b"",
    *,
    first: bytes = b"POST /v/{n} HTTP/1.1",
    host: bool = True,
    length: bool = True,
) -> bytes:
    lines = [first, *([b"Host: x"] if host else []), *headers]
    if length:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join([*lines, b"", b""]) + body


CLTE = b"0\r\n\r\n" + SMUGGLED  # for a backend that sees chunked where the balancer sees length
CHUNKED_SMUGGLE = b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)

TE = b"Transfer-Encoding: chunked"


def chunked(body: bytes, *headers: bytes) -> bytes:
    return message([*headers, TE], body, length=False)


def te(value: bytes, *more: bytes) -> bytes:
    return message([b"Transfer-Encoding: " + value, *more], CHUNKED_SMUGGLE, length=False)


def cl(value: bytes, body: bytes) -> bytes:
    return message([b"Content-Length: " + value], body, length=False)


def first(line: bytes, *headers: bytes) -> bytes:
    return message(list(headers), first=line)


HELLO = b"5\r\nhello\r\n0\r\n\r\n"
TEN = (400, 501)
# (name, raw, statuses the balancer may answer); {n} becomes the vector's number.
OWN: list[tuple[str, bytes, tuple[int, ...]]] = [
    ("space in name", message([b"A b: c"], SMUGGLED), (400,)),
    ("NUL in name", message([b"A\x00b: c"], SMUGGLED), (400,)),
    ("VT in name", message([b"A\x0bb: c"], SMUGGLED), (400,)),
    ("space before colon", message([b"Transfer-Encoding : chunked"], CLTE), (400,)),
    ("bare CR in value", message([b"X: a\rTransfer-Encoding: chunked"], CLTE), (400,)),
    ("bare LF in value", message([b"X: a\nTransfer-Encoding: chunked"], CLTE), (400,)),
    ("NUL in value", message([b"X: a\x00b"], SMUGGLED), (400,)),
    ("obs-fold", message([b"X: a", b" Transfer-Encoding: chunked"], CLTE), (400,)),
    ("bare LF line ends", b"POST /v/{n} HTTP/1.1\nHost: x\nContent-Length: 0\n\n", (400,)),
    ("junk after version", first(b"POST /v/{n} HTTP/1.1 x"), (400,)),
    ("bare LF in target", b"GET /v/{n}\n" + SMUGGLED, (400,)),
    ("HTTP/0.9", b"GET /v/{n}\r\n\r\n", (400, 505)),
    ("HTTP/2.0 line", first(b"GET /v/{n} HTTP/2.0"), (400, 505)),
    ("two Hosts", message([b"Host: y"]), (400,)),
    ("no Host on 1.1", message([], host=False), (400,)),
    ("absolute form, other host", first(b"GET http://evil/v/{n} HTTP/1.1"), (400,)),
    ("xchunked", te(b"xchunked"), TEN),
    ("chunked, identity", te(b"chunked, identity"), TEN),
    ("identity, chunked", te(b"identity, chunked"), TEN),
    ("two TE headers", te(b"chunked", b"Transfer-Encoding: identity"), TEN),
    ("TE and CL", message([TE], CLTE), (400,)),
    ("CL and TE", te(b"chunked", b"Content-Length: 4"), (400,)),
    ("TE on HTTP/1.0", chunked(b"0\r\n\r\n").replace(b"HTTP/1.1", b"HTTP/1.0"), (400,)),
    ("CL 5, 5", cl(b"5, 5", b"hello"), (400,)),
    ("CL +5", cl(b"+5", b"hello"), (400,)),
    ("two CLs", cl(b"5\r\nContent-Length: 41", b"hello" + SMUGGLED), (400,)),
    ("chunk size 0x", chunked(b"0" + b"x" + HELLO + SMUGGLED), (400,)),
    ("chunk size 1_0", chunked(b"0_" + HELLO + SMUGGLED), (400,)),
    ("chunk size +5", chunked(b"+" + HELLO + SMUGGLED), (400,)),
    ("chunk size space", chunked(b" " + HELLO + SMUGGLED), (400,)),
    ("chunk without CRLF", chunked(b"5\r\nhelloXX0\r\n\r\n" + SMUGGLED), (400,)),
    ("chunk LF only", chunked(b"5\nhello\n0\n\n" + SMUGGLED), (400,)),
    ("bad chunk extension", chunked(b"5;a\x00=b\r\nhello\r\n0\r\n\r\n"), (400,)),
    ("bad trailer", chunked(b"5\r\nhello\r\n0\r\nX Y: z\r\n\r\n"), (400,)),
    ("unknown Expect", message([b"Expect: something"], b"x"), (417,)),
    ("too many fields", message([b"X-%d: y" % i for i in range(150)]), (431,)),
    ("huge head", message([b"X: " + b"y" * 70000]), (431,)),
    # accepted: the balancer forwards them, regenerated
    ("absolute form", first(b"GET http://x/v/{n} HTTP/1.1"), (200,)),
    ("Connection: Host keeps Host", message([b"Connection: Host, Content-Length"]), (200,)),
    ("chunk extension dropped", chunked(b"5;a=b\r\nhello\r\n0\r\nX-T: 1\r\n\r\n"), (200,)),
    ("obs-text value", message([b"X: caf\xe9"]), (200,)),
    ("pipelined", message([]) + b"GET /v/{n} HTTP/1.1\r\nHost: x\r\n\r\n", (200,)),
]


def smuggler_gadgets() -> dict[str, bytes]:
    """The header mutations of defparam/smuggler's default and exhaustive configs."""
    te = b"Transfer-Encoding"
    gadgets = {
        "nameprefix1": b" Transfer-Encoding: chunked",
        "tabprefix1": b"Transfer-Encoding:\tchunked",
        "tabprefix2": b"Transfer-Encoding\t:\tchunked",
        "spacejoin1": b"Transfer Encoding: chunked",
        "underjoin1": b"Transfer_Encoding: chunked",
        "smashed": b"Transfer Encoding:chunked",
        "space1": b"Transfer-Encoding : chunked",
        "valueprefix1": b"Transfer-Encoding:  chunked",
        "vertprefix1": b"Transfer-Encoding:\x0bchunked",
        "commaCow": b"Transfer-Encoding: chunked, cow",
        "cowComma": b"Transfer-Encoding: cow, chunked",
        "contentEnc": b"Content-Encoding: chunked",
        "linewrapped1": b"Transfer-Encoding:\n chunked",
        "quoted": b'Transfer-Encoding: "chunked"',
        "aposed": b"Transfer-Encoding: 'chunked'",
        "lazygrep": b"Transfer-Encoding: chunk",
        "sarcasm": b"TrAnSFer-EnCODinG: cHuNkeD",
        "yelling": b"TRANSFER-ENCODING: CHUNKED",
        "0dsuffix": b"Transfer-Encoding: chunked\r",
        "tabsuffix": b"Transfer-Encoding: chunked\t",
        "revdualchunk": b"Transfer-Encoding: cow\r\nTransfer-Encoding: chunked",
        "0dspam": b"Transfer\r-Encoding: chunked",
        "nested": b"Transfer-Encoding: cow chunked bar",
        "spaceFF": b"Transfer-Encoding:\xffchunked",
        "accentCH": b"Transfer-Encoding: ch\x96nked",
        "accentTE": b"Transf\x82r-Encoding: chunked",
        "x-rout": b"X:X\rTransfer-Encoding: chunked",
        "x-nout": b"X:X\nTransfer-Encoding: chunked",
    }
    # every control byte, and a sample of the high ones (they all behave alike)
    for i in [*range(0x00, 0x21), 0x7F, 0x80, 0x85, 0xA0, 0xFF]:
        c = bytes([i])
        gadgets |= {
            f"midspace-{i:02x}": te + b":" + c + b"chunked",
            f"postspace-{i:02x}": te + c + b": chunked",
            f"prespace-{i:02x}": c + te + b": chunked",
            f"endspace-{i:02x}": te + b": chunked" + c,
            f"xprespace-{i:02x}": b"X: X" + c + te + b": chunked",
            f"endspacex-{i:02x}": te + b": chunked" + c + b"X: X",
            f"rxprespace-{i:02x}": b"X: X\r" + c + te + b": chunked",
            f"xnprespace-{i:02x}": b"X: X" + c + b"\n" + te + b": chunked",
            f"endspacerx-{i:02x}": te + b": chunked\r" + c + b"X: X",
            f"endspacexn-{i:02x}": te + b": chunked" + c + b"\nX: X",
        }
    return gadgets


def smuggler_vectors() -> Iterator[tuple[str, bytes]]:
    for name, gadget in smuggler_gadgets().items():
        # CL.TE: the balancer frames by Content-Length, a backend by chunked
        yield f"{name} CL.TE", message([gadget], CLTE)
        # TE.CL: the balancer frames by chunked, a backend by Content-Length
        prefix = CHUNKED_SMUGGLE[: CHUNKED_SMUGGLE.index(b"\r\n") + 2]
        length = b"Content-Length: %d" % len(prefix)
        yield f"{name} TE.CL", message([gadget, length], CHUNKED_SMUGGLE, length=False)


class Desync(AssertionError):
    pass


def check(backend: Backend, port: int, n: int, name: str, raw: bytes) -> list[int]:
    """Send one vector and a follow-up client; the statuses the vector's connection got."""
    vector = raw.replace(b"{n}", str(n).encode())
    last = b"GET /again/%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % n
    answers = exchange(port, vector, then=last, timeout=8.0)
    probe = exchange(port, b"GET /probe/%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % n)
    if [s for s, _ in probe] != [200] or not probe[0][1].startswith(b"ECHO GET /probe/%d " % n):
        raise Desync(f"{name}: the next client got {probe!r}")
    echoed = Counter(
        body[5:].split(b" host=")[0].decode("latin-1")
        for _, body in [*answers, *probe]
        if body.startswith(b"ECHO ")
    )
    seen = Counter(backend.seen())
    own = f"POST /v/{n}"
    unanswered = seen - echoed
    if unanswered and set(unanswered) != {own}:  # the vector's own request may be cut off
        raise Desync(f"{name}: {backend.kind} parsed {dict(unanswered)} nobody was answered for")
    if echoed - seen:
        raise Desync(f"{name}: answers {dict(echoed - seen)} for requests {backend.kind} never saw")
    hidden = not name.endswith("TE.CL")  # by Content-Length, the request is inside the body
    if hidden and any(b"/smuggled/" in body for _, body in answers):
        raise Desync(f"{name}: the smuggled request was answered: {answers!r}")
    return [status for status, _ in answers]


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.stop()


@pytest.fixture(scope="module", params=BACKENDS)
def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    server = Backend(request.param, Path(tmp_path_factory.mktemp("backend")))
    yield server
    server.stop()


def test_own_vectors_are_refused_or_forwarded_intact(loop: LoopThread, backend: Backend) -> None:
    failures = []
    backend.seen()
    with balancer(loop, backend.port) as (_, port):
        for n, (name, raw, allowed) in enumerate(OWN):
            try:
                statuses = check(backend, port, n, name, raw)
            except Desync as exc:
                failures.append(str(exc))
            else:
                if not statuses or statuses[0] not in allowed:
                    failures.append(f"{name}: answered {statuses}, wanted one of {allowed}")
                elif allowed == (400,) and len(statuses) > 1:
                    failures.append(f"{name}: 400 but the connection went on: {statuses}")
            if len(failures) >= 8:
                break
    assert not failures, "\n".join(failures)


def test_echo_of_forwarded_fields(loop: LoopThread, backend: Backend) -> None:
    """What the backend got: Host kept under `Connection: Host`, absolute form normalised."""
    with balancer(loop, backend.port) as (_, port):
        kept = exchange(port, message([b"Connection: Host, close"], first=b"GET /h HTTP/1.1"))
        normalised = exchange(port, first(b"GET http://x/a?b HTTP/1.1", b"Connection: close"))
    assert kept == [(200, b"ECHO GET /h host=x")]
    assert normalised == [(200, b"ECHO GET /a?b host=x")]


def test_smuggler_mutations_keep_boundaries(loop: LoopThread, backend: Backend) -> None:
    failures = []
    backend.seen()
    with balancer(loop, backend.port) as (_, port):
        for n, (name, raw) in zip(itertools.count(1000), smuggler_vectors(), strict=False):
            try:
                statuses = check(backend, port, n, name, raw)
            except Desync as exc:
                failures.append(str(exc))
            else:
                if not statuses:
                    failures.append(f"{name}: no answer")
            if len(failures) >= 8:
                break
    assert not failures, "\n".join(failures)
