"""A connection to an instance: each response parsed as it arrives and copied on at once.

The response side of an exchange runs entirely in protocol callbacks: llhttp
parses what a read brought, the head is validated and regenerated
(``kiln.local.http1``), the body re-framed, and everything that read yielded
goes to the client in one write. When the client does not keep up, reading
from the instance pauses until it does. How the exchange ended (answered,
switched protocols, or failed and whether any byte had arrived) goes to
whoever started it: a waiting task, or the balancer's callback.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import httptools

from kiln.local.http1 import (
    LAST_CHUNK,
    MAX_HEAD,
    BadMessage,
    Fields,
    Request,
    Response,
    chunk,
    interim_head,
    length_line,
    make_response,
    response_head,
)
from kiln.local.messages import Truncated, callbacks, version
from kiln.local.proxy import SENDING, Client, ResponseTimeout
from kiln.local.stream import Stream

if TYPE_CHECKING:
    from kiln.local.backend import Backend
    from kiln.local.lb import Balancer

POOL_SIZE = 128  # idle connections kept per instance
_CHUNKED = b"Transfer-Encoding: chunked\r\n"

_monotonic = time.monotonic  # bound once: read for every request


class ClientGone(ConnectionError):
    """The client closed its connection while its answer was on the way."""


class _HeadOnly(Exception):
    """Stops the parser after the head of a response that has no body (to a HEAD)."""


class _Switch(Exception):
    """Stops the parser after a 101 head: what follows is another protocol's."""


class Upstream(Stream):
    """One connection to an instance, and the exchange it is carrying, if any."""

    __slots__ = (
        "_began",
        "_chunk_at",
        "_fields",
        "_head_bytes",
        "_heads",
        "_in_chunk",
        "_in_trailers",
        "_last",
        "_lead",
        "_reason",
        "_trailer_bytes",
        "_trailing",
        "answered",
        "backend",
        "balancer",
        "chunked",
        "client",
        "complete",
        "eof_body",
        "final",
        "head",
        "keep_client",
        "mid",
        "out",
        "parser",
        "received",
        "request",
        "resp",
        "reusable",
        "spent",
        "started",
        "stray",
        "switched",
        "waiter",
    )

    def __init__(self, backend: Backend) -> None:
        super().__init__()
        self.backend = backend
        self._fields = Fields(502)  # the head's, then (after it) the trailers'
        self.parser: Any = httptools.HttpResponseParser(callbacks(self, self._fields))
        self._reason = b""
        self._in_trailers = False
        self._head_bytes = 0
        self._in_chunk = False  # between a chunk's size line and its end (last chunk: trailers)
        self._chunk_at = 0  # how much was queued for the client at this read's start or size line
        self._trailing = False  # the last read ended inside the last chunk's trailers
        self._trailer_bytes = 0
        self._heads = 0  # heads completed by the current read
        self._last = b""  # the previous read: a head's end may straddle two
        self._lead: bytes | None = None  # this read, while no response has begun in it
        self._began: bytes | None = None  # the read the current response began at the start of
        self.mid = False  # inside a response
        self.spent = False  # the parser cannot go on (after a HEAD answer, a switch, an error)
        self.stray = False  # bytes came that nobody asked for
        self.out: list[bytes] = []  # for the client, written at the end of each read
        self.balancer: Balancer | None = None
        self.client: Client | None = None  # the exchange under way: whose answer this is
        self.head: Request | None = None
        self.waiter: asyncio.Future[BaseException | None] | None = None
        self.resp: Response | None = None
        self.started = 0.0
        self.request = b""  # what was sent, when it can be sent again
        self.received = self.answered = self.complete = self.switched = self.final = False
        self.keep_client = self.reusable = self.chunked = self.eof_body = False

    # the exchange ---------------------------------------------------------

    def begin(
        self,
        balancer: Balancer,
        client: Client,
        head: Request,
        started: float,
        waiter: asyncio.Future[BaseException | None] | None = None,
    ) -> None:
        """Carry ``head``'s exchange; its end goes to ``waiter``, else to the balancer."""
        self.balancer = balancer
        self.client = client
        client.exchange = self
        self.head = head
        self.started = started
        self.waiter = waiter
        self.resp = None
        self.received = self.answered = self.complete = self.switched = self.final = False

    def send(self, request: bytes, deadline: float) -> None:
        """Send a whole request, kept for a retry; its response head is due by ``deadline``."""
        self.request = request
        self.send_soon(request)
        assert self.balancer is not None
        self.balancer.waiting[self] = deadline
        if self.read_paused:
            self.resume()

    def expect_response(self, deadline: float) -> None:
        """The request is sent: the response head is due by ``deadline``."""
        assert self.balancer is not None
        self.balancer.waiting[self] = deadline
        if self.read_paused:
            self.resume()

    def hold(self) -> None:
        """Read nothing until the request is sent (its body streams first)."""
        self.pause()

    def usable(self) -> bool:
        """Open, between responses, and nothing arrived that was not asked for.

        Bytes an instance sent while the connection sat idle would otherwise
        be taken as the answer to the next client's request.
        """
        return not (
            self.closed or self.spent or self.mid or self.stray or self.transport.is_closing()
        )

    def abandon(self) -> None:
        """Drop the exchange (its client failed or went away); the connection closes."""
        if self.balancer is not None:
            self.balancer.waiting.pop(self, None)
        client = self.client
        if client is not None and client.exchange is self:
            client.exchange = None
        self.client = None
        self.waiter = None
        self.spent = True
        self.close()

    def timed_out(self) -> None:
        if self.client is not None:
            self._end(ResponseTimeout("no response in time"))

    def end_stream(self) -> None:
        """End an event stream (SSE) whose instance has left, as the instance would on
        shutting down: the client gets the end of the response (the last chunk, or the
        close of an HTTP/1.0 connection) and EventSource reconnects, to an instance in
        service. Cut off at the end of the drain instead, curl saw a truncated
        transfer, and the stream held every batch of a rolling deploy for all of it."""
        client = self.client
        if client is None or not self.answered or self.complete or self._raw is not None:
            return
        if self.chunked:
            self.out.append(LAST_CHUNK)
        client.write(b"".join(self.out))
        self.out.clear()
        self.complete = True
        self.reusable = False  # mid-stream from the instance's side: never pooled
        self.keep_client = self.keep_client and not self.eof_body
        self._end(None)

    def client_gone(self) -> None:
        if self.client is not None and self._raw is None:
            self._end(ClientGone("the client went away"))

    def _end(self, error: BaseException | None) -> None:
        balancer = self.balancer
        client = self.client
        assert balancer is not None and client is not None
        if error is not None or not self.final:  # a final head took its deadline off
            balancer.waiting.pop(self, None)
        self.client = None
        client.exchange = None  # one exchange at a time: a retry's begins after this
        if client.sending is self:
            client.sending = None
        if error is not None:
            self.spent = True
            self.close()
        elif not self.switched:
            # answered: counted, and the connection kept for the next request if it can be
            self.request = b""  # kept for a retry only: a pooled connection holds no body
            resp = self.resp
            assert resp is not None
            backend = self.backend
            elapsed = _monotonic() - self.started
            backend.counters.record_with(balancer.totals, resp.status, elapsed)
            idle = backend.idle
            if self.reusable and backend.routable and len(idle) < POOL_SIZE and self.usable():
                idle.append(self)
            else:
                self.spent = True
                self.close()
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(error)
        else:
            balancer.fast_end(self, client, error)

    # protocol callbacks ---------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._raw is not None:
            self.raw_received(data)
            return
        client = self.client
        if client is None or self.spent:  # idle in the pool, or after the end of a message
            self.stray = True
            self.close()
            return
        self.received = True
        if not self._in_trailers:
            self._head_bytes += len(data)
        self._heads = 0
        error: BaseException | None = None
        trailing = self._trailing
        self._chunk_at = 0  # "nothing queued since" this read (``out`` is empty) or a size line
        self._lead = None if self.mid else data
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            self.spent = True
            cause = exc.__context__
            if isinstance(cause, _Switch):
                self.raw(self._after_heads(data))
            elif isinstance(cause, _HeadOnly):
                self.complete = True
            else:
                error = cause if isinstance(cause, BadMessage) else BadMessage(str(exc), 502)
        except httptools.HttpParserError as exc:
            self.spent = True
            error = BadMessage(f"malformed: {exc}", 502)
        self._last = data
        if not self._in_trailers and self._head_bytes > MAX_HEAD and error is None:
            error = BadMessage("instance answered a head too large", 502)
        # trailers are held by httptools until each field ends: measured like a head
        self._trailing = self._in_chunk and len(self.out) == self._chunk_at
        if trailing and self._trailing and error is None:
            self._trailer_bytes += len(data)
            if self._trailer_bytes > MAX_HEAD:
                self.spent = True
                error = BadMessage("instance answered trailers too large", 502)
        out = self.out
        if out:
            if client.closed or client.transport.is_closing():
                out.clear()
                self._end(ClientGone("the client went away"))
                return
            client.send_soon(out[0] if len(out) == 1 else b"".join(out))
            out.clear()
        if self.complete or self.switched:
            self._end(None)  # whatever came after the end (an error now) is never used
        elif error is not None:
            self._end(error)
        elif client.write_paused:  # the client is slower than the instance: wait for it
            self.pause()
            client.sending = self
            client.set(SENDING)

    def eof_received(self) -> bool:
        if self._raw is not None:
            self.raw_eof()
            return True  # half-closed: the other direction of the tunnel goes on
        client = self.client
        if client is None:
            return False
        if self.mid and self.eof_body:  # a body delimited by the connection's end
            self.mid = False
            if self.chunked:
                self.out.append(LAST_CHUNK)
            if self.out:
                client.write(b"".join(self.out))
            self.out.clear()
            self.spent = True
            self._end(None)
        elif self.answered:
            self._end(Truncated("the instance closed the connection in the middle of a response"))
        else:
            self._end(Truncated("the instance closed the connection without answering"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.client is not None and self._raw is None:
            self._end(exc or ConnectionResetError("the instance closed the connection"))

    # httptools callbacks --------------------------------------------------

    def on_message_begin(self) -> None:
        if self.final:  # a second response to one request
            raise BadMessage("instance answered more than it was asked", 502)
        self._began = self._lead  # the first response of a read begun between responses
        self._lead = None
        self.mid = True
        self.eof_body = False
        self._reason = b""
        self._fields.reset()

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    # each header field goes to ``Fields.add``

    def on_headers_complete(self) -> None:
        parser = self.parser
        self._in_trailers = True
        self._head_bytes = 0
        self._heads += 1
        began = self._began
        self._began = None
        resp = make_response(
            parser.get_status_code(),
            self._reason,
            version(parser, self._fields, began, 0),
            self._fields,
        )
        status = resp.status
        head = self.head
        assert head is not None
        balancer = self.balancer
        assert balancer is not None
        sticky = balancer.sticky
        if sticky is not None and (status >= 200 or status == 101):
            resp.fields += sticky.set_cookie(self, resp.fields, status >= 200)
        if status < 200:
            self._interim(resp, head)
            return
        self.resp = resp
        self.final = True
        balancer.waiting.pop(self, None)  # the deadline was for the head
        keep = not head.close and head.upgrade is None
        length = resp.length
        if length is not None and status != 204 and status != 304 and head.method != b"HEAD":
            # the usual answer: a body of a known length
            self.keep_client = keep
            self.reusable = not resp.close
            self.chunked = self.eof_body = False
            self.answered = True
            self.out.append(response_head(resp, length_line(length), keep))
            return
        is_head = head.method == b"HEAD"
        no_body = is_head or status in (204, 304)
        reusable = not resp.close and not is_head  # after a HEAD answer the parser is spent
        chunked = False
        if status == 204:
            framing = b""
        elif resp.length is not None:
            framing = length_line(resp.length)
        elif head.version != b"1.0" and (resp.chunked or not no_body):
            framing = _CHUNKED
            chunked = not no_body  # re-framed: the instance's chunk sizes are never forwarded
        else:  # a body delimited by close, for an HTTP/1.0 client
            framing = b""
            keep = keep and no_body
        self.eof_body = (
            not is_head and resp.length is None and not resp.chunked and status not in (204, 304)
        )
        if self.eof_body:
            reusable = False
        self.keep_client = keep
        self.reusable = reusable
        self.chunked = chunked
        self.answered = True
        self.out.append(response_head(resp, framing, keep))
        if is_head:
            raise _HeadOnly
        if b"text/event-stream" in resp.fields:  # never ends by itself: see end_stream
            self.backend.streams[self] = self.started

    def _interim(self, resp: Response, head: Request) -> None:
        """A 1xx head: passed on, or (a 101 the client asked for) the switch to a tunnel."""
        if resp.status == 101:
            if head.upgrade is None:
                raise BadMessage("instance switched protocols unasked", 502)
            self.resp = resp
            self.switched = True
            raise _Switch
        if head.version != b"1.0":  # RFC 9110 15.2: it would take it for the answer
            self.out.append(interim_head(resp))

    def on_body(self, body: bytes) -> None:
        self.out.append(chunk(body) if self.chunked else body)

    def on_chunk_header(self) -> None:
        self._in_chunk = True
        self._chunk_at = len(self.out)
        self._trailer_bytes = 0

    def on_chunk_complete(self) -> None:
        self._in_chunk = False

    def on_message_complete(self) -> None:
        self.mid = False
        self._in_trailers = False
        if not self.final:  # the end of an interim (1xx) response
            return
        if self._fields.trailers is not None:
            self._fields.end_trailers()
        if self.chunked:
            self.out.append(LAST_CHUNK)
        self.complete = True

    def _after_heads(self, data: bytes) -> bytes:
        """The bytes of ``data`` after the heads this read completed (1xx ones and a 101).

        httptools gives no offset for a paused response parser, but llhttp
        accepted these heads only if each ended in exactly CRLF CRLF, and
        1xx responses have no body: the n-th CRLF CRLF ends the n-th head.
        """
        joined = self._last[-3:] + data
        end = 0
        for _ in range(self._heads):
            end = joined.index(b"\r\n\r\n", end) + 4
        return joined[end:]
