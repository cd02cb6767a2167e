"""Messages arriving on one connection, parsed by llhttp and pulled one event at a time.

httptools (llhttp, as uvicorn and Node.js use) pushes callbacks as bytes are
fed; a proxy wants to pull: the next head, then body pieces until the end.
``MessageReader`` reads from the socket only when no parsed event is
waiting, so at most one read (``CHUNK`` bytes) is ever buffered ahead, and
pipelined requests are served one after another, each from its own parsed
boundaries. llhttp runs without any of its "dangerous leniencies".
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

import httptools

from kiln.local.http1 import (
    CHUNK,
    MAX_FIELDS,
    MAX_HEAD,
    BadMessage,
    check_trailers,
    make_request,
    make_response,
)

HEAD, BODY, END, UPGRADE, EOF = range(5)
Event = tuple[int, Any]


class Truncated(ConnectionError):
    """The peer closed the connection in the middle of a message."""


class _HeadOnly(Exception):
    """Stops the parser after the head of a response that has no body (to a HEAD)."""


class _Switch(Exception):
    """Stops the parser after a 101 head: what follows is another protocol's."""


class MessageReader:
    """One connection's incoming requests (``request=True``) or responses.

    ``next()`` gives ``(HEAD, Request|Response)``, then ``(BODY, bytes)``
    pieces, then ``(END, None)``; ``(UPGRADE, bytes after the head)``
    when the connection switches protocols, ``(EOF, None)`` when it closes
    between messages. A message llhttp or the proxy refuses raises
    BadMessage once the events before it were taken.
    """

    __slots__ = (
        "_body",
        "_error",
        "_events",
        "_fields",
        "_head_bytes",
        "_heads",
        "_in_trailers",
        "_parser",
        "_reader",
        "_reason",
        "_request",
        "_tail",
        "_trailers",
        "_url",
        "eof_body",
        "head_start",
        "last_read",
        "mid",
        "no_body",
        "received",
        "spent",
    )

    def __init__(self, reader: asyncio.StreamReader, *, request: bool) -> None:
        self._reader = reader
        self._request = request
        self._events: deque[Event] = deque()
        self._parser: Any = (
            httptools.HttpRequestParser(self) if request else httptools.HttpResponseParser(self)
        )
        self._url = self._reason = b""
        self._fields: list[tuple[bytes, bytes]] = []
        self._trailers: list[tuple[bytes, bytes]] = []
        self._in_trailers = self._body = False
        self._head_bytes = 0
        self._heads = 0  # heads completed by the current feed
        self._tail = b""  # the last bytes of the previous feed: a head's end may straddle
        self._error: BaseException | None = None
        self.mid = False  # inside a message
        self.received = False  # any byte arrived since the flag was last cleared
        self.no_body = False  # the next response answers HEAD: it has a head only
        self.eof_body = False  # the current response's body runs until the connection closes
        self.spent = False  # the parser cannot go on (after a HEAD answer, an upgrade, an error)
        self.last_read = 0.0  # monotonic time of the last read that brought bytes
        self.head_start = 0.0  # when the head being read began; 0.0 when none is

    # httptools callbacks --------------------------------------------------

    def on_message_begin(self) -> None:
        self.mid = True
        self.head_start = self.last_read
        self.eof_body = False
        self._url = self._reason = b""
        self._fields = []
        self._trailers = []
        self._in_trailers = False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        target = self._trailers if self._in_trailers else self._fields
        target.append((name, value))
        if len(target) > MAX_FIELDS:
            raise BadMessage("too many header fields", 431)

    def on_headers_complete(self) -> None:
        parser = self._parser
        version = parser.get_http_version()
        self._in_trailers = self._body = True
        self._head_bytes = 0
        self._heads += 1
        self.head_start = 0.0
        if self._request:
            request = make_request(parser.get_method(), self._url, version, self._fields)
            self._events.append((HEAD, request))
            return
        resp = make_response(parser.get_status_code(), self._reason, version, self._fields)
        self._events.append((HEAD, resp))
        if resp.status == 101:
            raise _Switch
        if resp.status < 200:
            return
        if self.no_body:
            self.no_body = False
            raise _HeadOnly
        self.eof_body = resp.length is None and not resp.chunked and resp.status not in (204, 304)

    def on_body(self, body: bytes) -> None:
        self._events.append((BODY, body))

    def on_message_complete(self) -> None:
        self.mid = self._body = False
        check_trailers(self._trailers)
        self._events.append((END, None))

    # pulling --------------------------------------------------------------

    def ready(self) -> bool:
        """Whether an event is waiting, so ``next()`` will not read."""
        return bool(self._events)

    @property
    def reusable(self) -> bool:
        """Cleanly between two messages, with nothing unasked-for read."""
        return not (self.spent or self.mid or self._events or self._head_bytes)

    def take(self) -> Event | None:
        """The next event if one is waiting (no await: the common case costs no task switch)."""
        return self._events.popleft() if self._events else None

    async def next(self) -> Event:
        events = self._events
        while not events:
            if self._error is not None:
                raise self._error
            await self._fill()
        return events.popleft()

    async def _fill(self) -> None:
        data = await self._reader.read(CHUNK)
        if not data:
            if self.eof_body and self.mid:
                self.mid = self.eof_body = False
                self._events.append((END, None))
            elif self.mid or self._head_bytes:
                raise Truncated("the peer closed the connection in the middle of a message")
            else:
                self._events.append((EOF, None))
            return
        self.received = True
        self.last_read = time.monotonic()
        if self.spent:
            self._error = BadMessage("bytes after the end of a message", 502)
            return
        if not self._body:
            self._head_bytes += len(data)
        self._heads = 0
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.spent = True
            self.mid = False
            self._events.append((UPGRADE, data[exc.args[0] :]))
        except httptools.HttpParserCallbackError as exc:
            self.spent = True
            cause = exc.__context__
            if isinstance(cause, _Switch):
                self.mid = False
                self._events.append((END, None))
                self._events.append((UPGRADE, self._after_heads(data)))
            elif not isinstance(cause, _HeadOnly):
                self._error = cause if isinstance(cause, BadMessage) else BadMessage(str(exc))
        except httptools.HttpParserError as exc:
            self.spent = True
            self._error = BadMessage(f"malformed: {exc}", 400 if self._request else 502)
        self._tail = data[-3:]
        if not self._body and self._head_bytes > MAX_HEAD and self._error is None:
            self.spent = True
            self._error = BadMessage("head too large", 431)

    def _after_heads(self, data: bytes) -> bytes:
        """The bytes of ``data`` after the heads this feed completed (1xx ones and a 101).

        httptools gives no offset for a paused response parser, but llhttp
        accepted these heads only if each ended in exactly CRLF CRLF, and
        1xx responses have no body: the n-th CRLF CRLF ends the n-th head.
        """
        joined = self._tail + data
        end = 0
        for _ in range(self._heads):
            end = joined.index(b"\r\n\r\n", end) + 4
        return joined[end:]
