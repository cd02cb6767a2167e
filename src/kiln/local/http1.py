"""Just enough HTTP/1.1 for a streaming reverse proxy: heads, framing, copies.

Bodies are never held whole: they move in chunks of at most ``CHUNK`` bytes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

CHUNK = 64 * 1024
# Headers the proxy consumes or rewrites rather than forwards as they are.
_HANDLED = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"upgrade",
        b"transfer-encoding",
        b"content-length",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"expect",
    }
)
_BLANK = (32, 9)  # space, tab: never at the start of a header line or before its colon
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})


class BadMessage(Exception):
    """A head that cannot be parsed; the connection cannot continue."""


@dataclass(slots=True)
class Head:
    """A parsed request or response head: what to forward, and its body framing."""

    first: list[bytes]  # request: method, target, version; response: version, status, reason
    keep: list[bytes]  # header lines to forward as they are (end-to-end ones)
    chunked: bool
    length: int | None  # Content-Length; None when absent or chunked
    close: bool  # the sender wants the connection closed after this message
    forwarded_for: bytes | None = None
    expect: bool = False


def parse_head(raw: bytes, *, request: bool) -> Head:
    """One pass over the header lines; hop-by-hop headers are consumed, not kept."""
    lines = raw[:-4].split(b"\r\n")
    first = lines[0].split(b" ", 2)
    if len(first) < (3 if request else 2):
        raise BadMessage(f"bad first line {lines[0][:80]!r}")
    version = first[2] if request else first[0]
    if not version.startswith(b"HTTP/1."):
        raise BadMessage(f"unsupported version {version[:20]!r}")
    keep: list[bytes] = []
    chunked = expect = False
    length: int | None = None
    connection = forwarded_for = None
    for line in lines[1:]:
        colon = line.find(b":")
        if colon <= 0 or line[0] in _BLANK or line[colon - 1] in _BLANK:
            raise BadMessage(f"bad header line {line[:80]!r}")
        lname = line[:colon].lower()
        if lname not in _HANDLED:
            keep.append(line)
            continue
        value = line[colon + 1 :].strip()
        if lname == b"content-length":
            if not value.isdigit() or (length is not None and length != int(value)):
                raise BadMessage("bad Content-Length")
            length = int(value)
        elif lname == b"transfer-encoding":
            chunked = value.lower().endswith(b"chunked")
        elif lname == b"connection":
            connection = value.lower() if connection is None else connection + b"," + value.lower()
        elif lname == b"x-forwarded-for":
            forwarded_for = value if forwarded_for is None else forwarded_for + b", " + value
        elif lname == b"expect":
            expect = True
    if chunked:
        length = None
    close = version == b"HTTP/1.0"
    if connection == b"keep-alive":
        close = False
    elif connection == b"close":
        close = True
    elif connection is not None:
        tokens = {t.strip() for t in connection.split(b",")}
        close = b"close" in tokens or (close and b"keep-alive" not in tokens)
        named = tokens - {b"close", b"keep-alive", b""}
        if named:  # headers the sender declared hop-by-hop
            keep = [line for line in keep if line.partition(b":")[0].lower() not in named]
    if len(first) == 2:
        first.append(b"")
    return Head(first, keep, chunked, length, close, forwarded_for, expect)


def framing_line(head: Head) -> list[bytes]:
    if head.chunked:
        return [b"Transfer-Encoding: chunked"]
    if head.length is not None:
        return [b"Content-Length: %d" % head.length]
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


async def read_response_head(reader: asyncio.StreamReader, resp: Head) -> tuple[Head, bytes]:
    """Past interim (1xx) heads to the final one; the interim ones are passed on."""
    interim = b""
    while True:
        status = resp.first[1]
        if len(status) != 3 or not status.isdigit():
            raise BadMessage(f"bad status {status[:10]!r}")
        if status[:1] != b"1" or status == b"101":
            return resp, interim
        interim += head_bytes(resp)
        resp = parse_head(await reader.readuntil(b"\r\n\r\n"), request=False)


def head_bytes(head: Head) -> bytes:
    return b"\r\n".join([b" ".join(head.first).rstrip(), *head.keep, b"", b""])


def partial_response(exc: BaseException) -> bool:
    """Whether some response bytes had arrived before the failure."""
    return isinstance(exc, asyncio.IncompleteReadError) and bool(exc.partial)


def make_upstream_head(head: Head, client_ip: bytes) -> bytes:
    method, target, _ = head.first
    forwarded = client_ip if head.forwarded_for is None else head.forwarded_for + b", " + client_ip
    parts = [method + b" " + target + b" HTTP/1.1", *head.keep, *framing_line(head)]
    parts.append(b"X-Forwarded-For: " + forwarded)
    parts.append(b"X-Forwarded-Proto: http\r\n\r\n")
    return b"\r\n".join(parts)
