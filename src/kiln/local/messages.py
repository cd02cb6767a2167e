"""Requests arriving on one client connection, parsed by llhttp as the bytes come in.

httptools (llhttp, as uvicorn and Node.js use) pushes callbacks as bytes are
fed; ``MessageReader`` turns them into a queue of events: the next head,
then body pieces until the end. The connection feeds it from
``data_received`` and stops reading from the socket while events wait to be
taken, so at most one read is ever buffered ahead, and pipelined requests
are served one after another, each from its own parsed boundaries. llhttp
runs without any of its "dangerous leniencies".
"""

from __future__ import annotations

import time
from collections import deque
from types import SimpleNamespace
from typing import Any

import httptools

from kiln.local.http1 import MAX_HEAD, BadMessage, Fields, make_request

HEAD, BODY, END, UPGRADE, EOF = range(5)
Event = tuple[int, Any]


class Truncated(ConnectionError):
    """The peer closed the connection in the middle of a message."""


_monotonic = time.monotonic  # bound once: read for every request

_CALLBACKS = (
    "on_message_begin",
    "on_url",
    "on_status",
    "on_headers_complete",
    "on_body",
    "on_chunk_header",
    "on_chunk_complete",
    "on_message_complete",
)


def callbacks(owner: object, fields: Fields) -> SimpleNamespace:
    """What an httptools parser calls: ``owner``'s methods, and ``fields.add`` for each
    header field (straight, not through a method of ``owner`` that would pass it on)."""
    found = {name: getattr(owner, name) for name in _CALLBACKS if hasattr(owner, name)}
    return SimpleNamespace(**found, on_header=fields.add)


def version(parser: Any, fields: Fields, began: bytes | None, at: int) -> str:
    """The HTTP version of the head llhttp has just read, as ``get_http_version`` says it.

    That call formats a new string each time: two of them were a tenth of the
    balancer's Python per kept-alive request. So the version is read where
    llhttp accepted it, when ``began`` (the read the message began at the
    start of) holds it: a status line opens with it (``at`` 0), a request
    line ends with it, after its method, target and two spaces (``at``): the
    CRLF matched there can only be the line's end, as no CR is allowed
    within it. Else from llhttp, which accepts versions 0.9, 1.0, 1.1 and 2.0
    only and keeps only 1.1 alive without a Connection field
    (``fields.connection`` counts Proxy-Connection too): one C call.
    """
    if began is not None:
        if at:
            if began.startswith(b"HTTP/1.1\r\n", at):
                return "1.1"
            if began.startswith(b"HTTP/1.0\r\n", at):
                return "1.0"
        elif began.startswith(b"HTTP/1.1 "):
            return "1.1"
        elif began.startswith(b"HTTP/1.0 "):
            return "1.0"
    if fields.connection is None and parser.should_keep_alive():
        return "1.1"
    said: str = parser.get_http_version()
    return said


class MessageReader:
    """One connection's incoming requests, as events.

    ``take()`` gives ``(HEAD, Request)``, then ``(BODY, bytes)`` pieces,
    then ``(END, None)``; ``(UPGRADE, bytes after the head)`` when the
    connection switches protocols, ``(EOF, None)`` when it closes between
    messages. A message llhttp or the proxy refuses sets ``error`` once the
    events before it were queued.
    """

    __slots__ = (
        "_began",
        "_chunk_at",
        "_fields",
        "_head_bytes",
        "_in_chunk",
        "_lead",
        "_owed",
        "_parser",
        "_trailer_bytes",
        "_trailing",
        "_url",
        "body",
        "error",
        "events",
        "head_start",
        "last_read",
        "mid",
        "spent",
    )

    def __init__(self) -> None:
        self.events: deque[Event] = deque()
        self._fields = Fields(431)  # the head's, then (after it) the trailers'
        self._parser: Any = httptools.HttpRequestParser(callbacks(self, self._fields))
        self._url = b""
        self._lead: bytes | None = None  # this read, while no message has begun in it
        self._began: bytes | None = None  # the read the current message began at the start of
        self.body = False
        self._head_bytes = 0
        self._in_chunk = False  # between a chunk's size line and its end (last chunk: trailers)
        self._chunk_at = 0  # how many events there were at this read's start or its size line
        self._trailing = False  # the last feed ended inside the last chunk's trailers
        self._trailer_bytes = 0
        self.error: BaseException | None = None
        self.mid = False  # inside a message
        self.spent = False  # the parser cannot go on (after an upgrade, an error, the end)
        self._owed = 0  # bytes of a body llhttp skipped (an Upgrade offer ignored) still due
        self.last_read = 0.0  # monotonic time of the last feed
        self.head_start = 0.0  # when the head being read began; 0.0 when none is

    # httptools callbacks --------------------------------------------------

    def on_message_begin(self) -> None:
        self._began = self._lead  # the first message of a read begun between messages
        self._lead = None
        self.mid = True
        self.head_start = self.last_read
        self._url = b""
        self._fields.reset()

    def on_url(self, url: bytes) -> None:
        self._url += url

    # each header field goes to ``Fields.add``: it counts them and their bytes, since
    # each read is measured too, but a head that begins in the read that ends the
    # previous body is not for that read: its fields are

    def on_headers_complete(self) -> None:
        parser = self._parser
        self.body = True
        self._head_bytes = 0
        self.head_start = 0.0
        if len(self._url) + self._fields.size > MAX_HEAD:
            raise self._too_large(self._fields.size)
        began = self._began
        self._began = None
        method = parser.get_method()
        url = self._url
        said = version(parser, self._fields, began, len(method) + len(url) + 2)
        request = make_request(method, url, said, self._fields)
        self.events.append((HEAD, request))

    def on_body(self, body: bytes) -> None:
        self.events.append((BODY, body))

    def on_chunk_header(self) -> None:
        self._in_chunk = True
        self._chunk_at = len(self.events)
        self._trailer_bytes = 0

    def on_chunk_complete(self) -> None:
        self._in_chunk = False

    def on_message_complete(self) -> None:
        self.mid = self.body = False
        if self._fields.trailers is not None:
            self._fields.end_trailers()
        self.events.append((END, None))

    # feeding --------------------------------------------------------------

    def feed(self, data: bytes) -> bytes | None:
        """Parse ``data``; the bytes after the head when the request switched protocols."""
        self.last_read = _monotonic()
        if self.spent:
            return None
        if not self.body:
            self._head_bytes += len(data)
        elif self._owed:  # the body of an Upgrade offer ignored (``_offered``)
            data = self._skipped_body(data)
        self._lead = None if self.mid else data  # a message begins at its start (or CRLF)
        trailing = self._trailing
        self._chunk_at = len(self.events)  # "no event since": since this read or a size line
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            try:
                rest = self._offered(data[exc.args[0] :])
            except httptools.HttpParserError as failed:
                self._failed(failed)
            else:
                if rest is not None:
                    return rest
        except httptools.HttpParserError as exc:
            self._failed(exc)
        if not self.body and self._head_bytes > MAX_HEAD and self.error is None:
            self.spent = True
            self.error = self._too_large(self._head_bytes - len(self._url))
        # A chunk that brought no data since its size line is the last one: what
        # follows is trailers, which httptools holds until each field ends. A read
        # that begins and ends in them is all trailer.
        self._trailing = self._in_chunk and len(self.events) == self._chunk_at
        if trailing and self._trailing and self.error is None:
            self._trailer_bytes += len(data)
            if self._trailer_bytes > MAX_HEAD:
                self.spent = True
                self.error = BadMessage("trailers too large", 431)
        return None

    def _offered(self, rest: bytes) -> bytes | None:
        """llhttp stopped after a request offering an upgrade; ``rest`` is what followed.

        The bytes after the head when the proxy takes the offer. One it ignored
        (kiln.local.http1.make_request) is followed by its body, which llhttp
        skipped and is counted out here, then by the next request, parsed on.
        """
        while True:
            # llhttp skips the body of an offer and stops after its end: (HEAD, END)
            _, request = self.events[-2]
            if request.upgrade is not None:  # taken
                self.spent = True
                self.mid = False
                return rest
            if request.length:
                self._owed = request.length
                self.events.pop()  # the end llhttp reported before the body
                self.mid = self.body = True
                rest = self._skipped_body(rest)
            if not rest:
                return None
            try:
                self._parser.feed_data(rest)
                return None
            except httptools.HttpParserUpgrade as exc:
                rest = rest[exc.args[0] :]

    def _failed(self, exc: httptools.HttpParserError) -> None:
        self.spent = True
        if isinstance(exc, httptools.HttpParserCallbackError):
            cause = exc.__context__
            self.error = cause if isinstance(cause, BadMessage) else BadMessage(str(exc))
        else:
            self.error = BadMessage(f"malformed: {exc}", 400)

    def _skipped_body(self, data: bytes) -> bytes:
        """The Content-Length body llhttp skipped, taken from ``data``; what follows it."""
        owed = self._owed
        if owed > len(data):
            self._owed -= len(data)
            self.events.append((BODY, data))
            return b""
        self._owed = 0
        if owed:
            self.events.append((BODY, data[:owed]))
        self.events.append((END, None))
        self.mid = self.body = False
        return data[owed:]

    def _too_large(self, rest: int) -> BadMessage:
        """414 when the request target is most of a head too large (RFC 9112 3: a
        server MUST answer a target longer than it parses so), else 431. ``rest`` is
        the size of the head but its target. llhttp hands the target over at the end
        of every feed, so a long one is measured while it is still arriving."""
        if len(self._url) > rest:
            return BadMessage("request target too long", 414)
        return BadMessage("head too large", 431)

    def feed_eof(self) -> None:
        """The peer closed its side: the end between messages, else a truncated one."""
        if self.error is not None or self.spent:
            return
        self.spent = True
        if self.mid or self._head_bytes:
            self.error = Truncated("the peer closed the connection in the middle of a message")
        else:
            self.events.append((EOF, None))

    def take(self) -> Event | None:
        """The next event if one is waiting."""
        return self.events.popleft() if self.events else None
