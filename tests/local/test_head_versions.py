"""Each head's HTTP version, as the balancer reads it without asking llhttp to format it.

``kiln.local.messages.version`` reads the version from a head's first line
when the read the message began with holds it, and otherwise from llhttp's
keep-alive verdict, or from llhttp. These hold it to what llhttp itself says
(``get_http_version``), however the bytes of pipelined requests and of
responses arrive, including the heads where the shortcuts must not be
taken: HTTP/1.0 kept alive by ``Connection`` or by ``Proxy-Connection``.
"""

from __future__ import annotations

import asyncio
import itertools

import httptools
from localtest import free_port

from kiln.local.lb import Balancer
from kiln.local.messages import HEAD, MessageReader
from kiln.local.procs import loop_factory

REQUESTS = [  # pipelined: each but the last is kept alive, or llhttp takes nothing after it
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
    b"DELETE /HTTP/1.1/HTTP/1.0 HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
    b"GET /p HTTP/1.0\r\nHost: a\r\nProxy-Connection: keep-alive\r\n\r\n",  # llhttp: kept alive
    b"POST /form HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nHTTP/",
    b"PUT /up HTTP/1.0\r\nHost: a\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nabc",
    b"GET /lower HTTP/1.0\r\nhost: a\r\nconnection: Keep-Alive\r\n\r\n",
    b"PATCH /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"GET /x?q=HTTP/1.1 HTTP/1.0\r\nHost: a\r\n\r\n",  # a target that looks like a version
]


class _Said:
    """What llhttp says each head's version is: the oracle."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.versions: list[str] = []

    def on_headers_complete(self) -> None:
        self.versions.append(self.parser.get_http_version())


def _versions_read(stream: bytes, cuts: tuple[int, ...]) -> list[str]:
    reader = MessageReader()
    start = 0
    for end in (*cuts, len(stream)):
        reader.feed(stream[start:end])
        start = end
    assert reader.error is None, reader.error
    return [event[1].version.decode() for event in reader.events if event[0] == HEAD]


def test_pipelined_requests_cut_anywhere_get_llhttps_version() -> None:
    stream = b"".join(REQUESTS)
    said = _Said()
    said.parser.feed_data(stream)
    assert said.versions == ["1.1", "1.1", "1.0", "1.0", "1.1", "1.0", "1.0", "1.1", "1.0"]
    for cut in range(len(stream)):  # every read boundary, one at a time
        assert _versions_read(stream, (cut,)) == said.versions, cut
    for cuts in itertools.combinations(range(0, len(stream), 7), 2):  # and pairs of them
        assert _versions_read(stream, cuts) == said.versions, cuts


def test_each_request_alone_in_its_read_gets_llhttps_version() -> None:
    for raw in REQUESTS:
        said = _Said()
        said.parser.feed_data(raw)
        assert _versions_read(raw, ()) == said.versions, raw


# What the instance answers each path with; the balancer reuses its connection
# only after an answer that keeps it alive: HTTP/1.1, or HTTP/1.0 with Connection.
ANSWERS = {
    b"/one-one": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"/one-oh": b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"/one-oh-kept": b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
    b"/one-oh-proxy": b"HTTP/1.0 200 OK\r\nProxy-Connection: keep-alive\r\n"
    b"Content-Length: 2\r\n\r\nok",
    # the final head begins in the middle of a read: the version comes from llhttp
    b"/hinted-one-oh-proxy": b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
    b"HTTP/1.0 200 OK\r\nProxy-Connection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
    b"/hinted-one-oh-kept": b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
    b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
}
REUSED = {
    b"/one-one": True,
    b"/one-oh": False,
    b"/one-oh-kept": True,
    b"/one-oh-proxy": False,
    b"/hinted-one-oh-proxy": False,
    b"/hinted-one-oh-kept": True,
}


async def _instance_connections_per_path() -> dict[bytes, int]:
    """How many new connections the instance saw for the second of two requests to each
    path in turn: none when the answer to the first kept its connection alive."""
    accepted = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                writer.write(ANSWERS[head.split(b" ")[1]])  # each in one write: one read
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    lb = Balancer("t")
    lb.add("i", "127.0.0.1", server.sockets[0].getsockname()[1])
    lb.set_routable(["i"])
    port = free_port()
    await lb.start("127.0.0.1", port)
    seen: dict[bytes, int] = {}
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for path in ANSWERS:
            for _ in range(2):
                before = accepted
                writer.write(b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % path)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                while head.startswith(b"HTTP/1.1 103"):
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
                assert await asyncio.wait_for(reader.readexactly(2), 5) == b"ok"
            seen[path] = accepted - before
        writer.close()
    finally:
        await lb.close()
        server.close()
    return seen


def test_an_instances_answer_keeps_its_connection_as_its_version_says() -> None:
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        seen = runner.run(_instance_connections_per_path())
    assert {path: n == 0 for path, n in seen.items()} == REUSED, seen
