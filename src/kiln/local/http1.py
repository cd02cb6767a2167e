"""Just enough HTTP/1.1 for a streaming reverse proxy: heads, framing, copies.

Bodies are never held whole: they move in chunks of at most ``CHUNK`` bytes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

CHUNK = 64 * 1024
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"upgrade",
        b"transfer-encoding",
        b"content-length",
    }
)
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})


class BadMessage(Exception):
    """A head that cannot be parsed; the connection cannot continue."""


@dataclass
class Head:
    """A parsed request or response head, with its body framing."""

    first: list[bytes]  # request: method, target, version; response: version, status, reason
    headers: list[tuple[bytes, bytes]]
    chunked: bool
    length: int | None  # None with chunked, or a response delimited by close
    close: bool  # the sender wants the connection closed after this message

    def names(self) -> set[bytes]:
        return {n.lower() for n, _ in self.headers}


def parse_head(raw: bytes, *, request: bool) -> Head:
    lines = raw[:-4].split(b"\r\n")
    first = lines[0].split(b" ", 2)
    if len(first) < (3 if request else 2):
        raise BadMessage(f"bad first line {lines[0][:80]!r}")
    version = first[2] if request else first[0]
    if not version.startswith(b"HTTP/1."):
        raise BadMessage(f"unsupported version {version[:20]!r}")
    headers: list[tuple[bytes, bytes]] = []
    chunked = False
    length: int | None = None
    connection = b""
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise BadMessage(f"bad header line {line[:80]!r}")
        value = value.strip()
        lname = name.lower()
        if lname == b"transfer-encoding":
            chunked = value.lower().endswith(b"chunked")
        elif lname == b"content-length":
            if not value.isdigit() or (length is not None and length != int(value)):
                raise BadMessage("bad Content-Length")
            length = int(value)
        elif lname == b"connection":
            connection += b"," + value.lower()
        headers.append((name, value))
    if chunked:
        length = None
    http10 = version == b"HTTP/1.0"
    close = b"close" in connection or (http10 and b"keep-alive" not in connection)
    if request and length is None and not chunked:
        length = 0
    if len(first) == 2:
        first.append(b"")
    return Head(first, headers, chunked, length, close)


def forward_headers(head: Head) -> list[bytes]:
    """Header lines minus hop-by-hop ones (and those named in Connection)."""
    named = set()
    for name, value in head.headers:
        if name.lower() == b"connection":
            named |= {t.strip() for t in value.lower().split(b",")}
    drop = HOP_BY_HOP | named
    return [n + b": " + v for n, v in head.headers if n.lower() not in drop]


def framing_lines(head: Head) -> list[bytes]:
    if head.chunked:
        return [b"Transfer-Encoding: chunked"]
    if head.length is not None:
        return [b"Content-Length: " + str(head.length).encode()]
    return []


async def copy_exact(src: asyncio.StreamReader, dst: asyncio.StreamWriter | None, n: int) -> None:
    """Move exactly ``n`` bytes; ``dst=None`` discards them."""
    while n > 0:
        chunk = await src.read(min(n, CHUNK))
        if not chunk:
            raise asyncio.IncompleteReadError(b"", n)
        n -= len(chunk)
        if dst is not None:
            dst.write(chunk)
            await dst.drain()


async def copy_chunked(
    src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, raw: bool = True
) -> None:
    """Move one chunked body; ``raw=False`` strips the framing (for HTTP/1.0 peers)."""
    while True:
        line = await src.readuntil(b"\r\n")
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError as exc:
            raise BadMessage("bad chunk size") from exc
        if raw:
            dst.write(line)
        if size == 0:
            while True:
                trailer = await src.readuntil(b"\r\n")
                if raw:
                    dst.write(trailer)
                if trailer == b"\r\n":
                    await dst.drain()
                    return
        await copy_exact(src, dst, size)
        crlf = await src.readexactly(2)
        if raw:
            dst.write(crlf)
        await dst.drain()


async def copy_until_eof(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    while chunk := await src.read(CHUNK):
        dst.write(chunk)
        await dst.drain()


def simple_response(status: int, reason: str, body: str, *, close: bool = False) -> bytes:
    data = body.encode()
    lines = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(data)}",
        f"Connection: {'close' if close else 'keep-alive'}",
    ]
    if status == 503:
        lines.append("Retry-After: 1")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data
