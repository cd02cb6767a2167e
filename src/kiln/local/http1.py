"""HTTP/1.1 heads for a reverse proxy that trusts nothing it receives.

llhttp (through httptools, see ``kiln.local.messages``) tokenises every
message strictly: header names are tokens, values hold no CR, LF, NUL or
other control character, lines end in CRLF, there is no obs-fold, chunk
sizes are plain hex. This module adds what a parser leaves to its user and a
proxy must decide (RFC 9110, RFC 9112 sections 3, 6 and 7): exactly one Host,
a request target in origin form, ``chunked`` as the only transfer coding, no
Content-Length beside it, and which headers are hop-by-hop. What passes
becomes a ``Request`` or ``Response`` of validated fields, and the proxy
writes every head it forwards from those fields, never from the bytes it
read (HAProxy and h11 work the same way): two parsers cannot disagree about
a message nobody forwards verbatim.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

CHUNK = 64 * 1024
MAX_HEAD = 64 * 1024  # bytes of one head; more is 431
MAX_FIELDS = 100  # header fields in one head; more is 431
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})

# Headers the proxy consumes or regenerates rather than forwards as they are.
_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",  # trailers are dropped, so no field announces them
        b"upgrade",
        b"transfer-encoding",
        b"content-length",
        b"host",
        b"expect",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        *(b"x-forwarded-host", b"x-forwarded-port", b"x-real-ip", b"forwarded"),
    }
)
# What proxies say about the client beside X-Forwarded-For/-Proto: kept only
# from a trusted proxy, or a client could claim any address or host.
_CLAIMS = frozenset({b"x-forwarded-host", b"x-forwarded-port", b"x-real-ip", b"forwarded"})
_SCHEMES = (b"http", b"https")
# Connection may name hop-by-hop headers to drop, but never these: dropping
# Host or the framing would change what the next hop thinks the message is.
_NEVER_DROPPED = frozenset({b"host", b"content-length", b"transfer-encoding"})
_COMMON_CONNECTION = frozenset({b"close", b"keep-alive"})
_VERSIONS = {"1.0": b"1.0", "1.1": b"1.1"}

# Second locks behind llhttp's own checks (RFC 9110 5.1, 5.5, 5.6.2).
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VALUE = re.compile(rb"(?:[\x21-\x7e\x80-\xff](?:[\t\x20-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)?")
_PROTOCOL = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+(?:/[!#$%&'*+\-.^_`|~0-9A-Za-z]+)?"
_UPGRADE = re.compile(_PROTOCOL + rb"(?:[ \t]*,[ \t]*" + _PROTOCOL + rb")*")  # RFC 9110 7.8
_REASON = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
_ORIGIN = re.compile(rb"/[\x21-\x7e]*")  # origin-form: path and query, visible ASCII only
_ABSOLUTE = re.compile(rb"(?i:https?)://([^/?#@\s]+)([/?][\x21-\x7e]*)?")
_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]{0,5})?")
_REASON_OK = frozenset({b"OK", b"Not Found", b"No Content", b"Found", b"Not Modified", b""})
_REASONS = {
    400: b"Bad Request",
    404: b"Not Found",
    408: b"Request Timeout",
    417: b"Expectation Failed",
    431: b"Request Header Fields Too Large",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}


class BadMessage(Exception):
    """A message the proxy refuses; ``status`` is the answer a client gets."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(slots=True)
class Request:
    """A validated request head: what the proxy forwards, and how its body is framed."""

    method: bytes
    target: bytes  # origin-form (or ``*`` for OPTIONS)
    version: bytes  # b"1.0" or b"1.1"
    host: bytes | None
    fields: bytes  # end-to-end fields, validated, as the lines to forward
    chunked: bool = False
    length: int | None = None  # Content-Length; None when absent or chunked
    close: bool = False  # the client wants the connection closed after this exchange
    upgrade: bytes | None = None  # the protocol a client asked to switch to
    expect: bool = False  # Expect: 100-continue
    forwarded_for: bytes | None = None
    forwarded_proto: bytes | None = None
    claims: list[tuple[bytes, bytes]] = field(default_factory=list)  # Forwarded, X-Real-IP…
    affinity: str | None = None  # sticky fleets: the instance its cookie names ("" none)

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.length)


@dataclass(slots=True)
class Response:
    """A validated response head."""

    status: int
    reason: bytes
    version: bytes
    fields: bytes  # end-to-end fields, validated, as the lines to forward
    chunked: bool = False
    length: int | None = None
    close: bool = False
    upgrade: bytes | None = None


class _Fields:
    """What one pass over a head's fields found (a plain class: built on every message)."""

    __slots__ = (
        "chunked",
        "claims",
        "connection",
        "expect",
        "forwarded_for",
        "forwarded_proto",
        "hosts",
        "keep",
        "length",
        "upgrade",
    )

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        keep: list[bytes] = []  # the lines of the fields passed on: name, ": ", value, CRLF
        hosts: list[bytes] = []
        connection: set[bytes] = set()
        length: int | None = None
        te: bytes | None = None
        self.upgrade: bytes | None = None
        self.expect: bytes | None = None
        self.forwarded_for: bytes | None = None
        self.forwarded_proto: bytes | None = None
        self.claims: list[tuple[bytes, bytes]] = []
        # llhttp has checked every name is a token and every value free of control
        # characters (tests/local/test_smuggling.py holds it to that); only the
        # trailing whitespace it leaves on a value is ours to drop.
        for name, raw_value in raw:
            value = raw_value.rstrip(b" \t")
            lname = name.lower()
            if lname not in _HOP:
                if b"_" in lname and lname.replace(b"_", b"-") in _HOP:
                    continue  # CGI-style servers (wsgiref, Django) read it as ours
                keep += (name, b": ", value, b"\r\n")
            elif lname == b"host":
                hosts.append(value)
            elif lname == b"content-length":
                if not value.isdigit() or length is not None:
                    raise BadMessage("bad or repeated Content-Length")
                length = int(value)
            elif lname == b"transfer-encoding":
                if te is not None:
                    raise BadMessage("repeated Transfer-Encoding")
                te = value.lower()
            elif lname == b"connection":
                value = value.lower()
                if value in _COMMON_CONNECTION:
                    connection.add(value)
                    continue
                for token in value.split(b","):
                    token = token.strip(b" \t")
                    if token and not _TOKEN.fullmatch(token):
                        raise BadMessage("bad Connection")
                    connection.add(token)
            else:
                self._other(name, lname, value)
        if te is not None:
            if te != b"chunked":  # gzip, identity, xchunked, "chunked, x": nobody agrees on these
                raise BadMessage("only Transfer-Encoding: chunked is supported", 501)
            if length is not None:  # RFC 9112 6.3: a smuggling attempt until proven otherwise
                raise BadMessage("Transfer-Encoding together with Content-Length")
        if connection and not connection <= _COMMON_CONNECTION:
            named = connection - _NEVER_DROPPED - _COMMON_CONNECTION - {b""}
            if named:  # headers the sender declared hop-by-hop
                keep = [
                    part
                    for n in range(0, len(keep), 4)
                    if keep[n].lower() not in named
                    for part in keep[n : n + 4]
                ]
        self.keep = b"".join(keep)
        self.hosts = hosts
        self.chunked = te is not None
        self.length = length
        self.connection = connection

    def _other(self, name: bytes, lname: bytes, value: bytes) -> None:
        """The rarer hop-by-hop fields."""
        if lname == b"upgrade":
            self.upgrade = value
        elif lname == b"expect":
            self.expect = value.lower()
        elif lname == b"x-forwarded-for":
            had = self.forwarded_for
            self.forwarded_for = value if had is None else had + b", " + value
        elif lname == b"x-forwarded-proto":
            if self.forwarded_proto is None:
                self.forwarded_proto = value
        elif lname in _CLAIMS:
            self.claims.append((name, value))


def check_field(name: bytes, value: bytes) -> bytes:
    """The value without surrounding whitespace; BadMessage unless both are clean."""
    value = value.strip(b" \t")
    if not _TOKEN.fullmatch(name) or not _VALUE.fullmatch(value):
        raise BadMessage(f"bad header field {name[:40]!r}")
    return value


def make_request(
    method: bytes, target: bytes, version: str, raw: list[tuple[bytes, bytes]]
) -> Request:
    """Validate a request head llhttp parsed; BadMessage says why not."""
    if version not in ("1.0", "1.1"):
        raise BadMessage(f"unsupported HTTP version {version!r}", 505)
    if method == b"CONNECT":
        raise BadMessage("CONNECT is not supported", 501)
    f = _Fields(raw)
    ver = _VERSIONS[version]
    if f.chunked and ver == b"1.0":  # RFC 9112 6.1: framing is faulty
        raise BadMessage("Transfer-Encoding in an HTTP/1.0 request")
    if len(f.hosts) > 1:
        raise BadMessage("more than one Host")
    host = f.hosts[0] if f.hosts else None
    if host is None and ver == b"1.1":
        raise BadMessage("HTTP/1.1 request without Host")
    if host is not None and not _HOST.fullmatch(host):
        raise BadMessage("bad Host")
    if not _ORIGIN.fullmatch(target):
        target, host = _normalise_target(method, target, host)
    if f.expect is not None and f.expect != b"100-continue":
        raise BadMessage("unsupported Expect", 417)
    upgrade = f.upgrade if b"upgrade" in f.connection else None
    if upgrade is not None:
        if f.chunked or f.length:
            raise BadMessage("a body on an Upgrade request")
        if not _UPGRADE.fullmatch(upgrade):
            raise BadMessage("bad Upgrade")
    return Request(
        method,
        target,
        ver,
        host,
        f.keep,
        f.chunked,
        f.length,
        b"close" in f.connection or (ver == b"1.0" and b"keep-alive" not in f.connection),
        upgrade,
        f.expect is not None,
        f.forwarded_for,
        f.forwarded_proto,
        f.claims,
    )


def _normalise_target(method: bytes, target: bytes, host: bytes | None) -> tuple[bytes, bytes]:
    """Absolute form becomes origin form (RFC 9112 3.2.2); anything else is refused."""
    if target == b"*" and method == b"OPTIONS":
        return target, host or b""
    absolute = _ABSOLUTE.fullmatch(target)
    if absolute is None:
        raise BadMessage("bad request target")
    authority = absolute.group(1)
    if not _HOST.fullmatch(authority) or (host is not None and host.lower() != authority.lower()):
        raise BadMessage("request target and Host disagree")
    path = absolute.group(2) or b"/"
    if path[:1] == b"?":
        path = b"/" + path
    return path, authority


def make_response(
    status: int, reason: bytes, version: str, raw: list[tuple[bytes, bytes]]
) -> Response:
    """Validate a response head from an instance; BadMessage (a 502) says why not."""
    if version not in ("1.0", "1.1"):
        raise BadMessage(f"instance answered HTTP version {version!r}", 502)
    if not 100 <= status <= 599 or (reason not in _REASON_OK and not _REASON.fullmatch(reason)):
        raise BadMessage(f"instance answered a bad status line ({status})", 502)
    try:
        f = _Fields(raw)
    except BadMessage as exc:
        raise BadMessage(f"instance answered: {exc}", 502) from exc
    ver = _VERSIONS[version]
    upgrade = f.upgrade if status == 101 else None
    if status == 101 and (upgrade is None or not _UPGRADE.fullmatch(upgrade)):
        raise BadMessage("instance switched protocols without a valid Upgrade", 502)
    close = b"close" in f.connection or (ver == b"1.0" and b"keep-alive" not in f.connection)
    return Response(status, reason, ver, f.keep, f.chunked, f.length, close, upgrade)


# writing ------------------------------------------------------------------


def _field_lines(fields: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join([name + b": " + value + b"\r\n" for name, value in fields])  # claims


def forwarding(req: Request, client_ip: bytes, scheme: bytes, trusted: bool) -> bytes:
    """X-Forwarded-For/-Proto lines for the next hop.

    A trusted proxy's claims are kept and extended with its own address;
    anyone else's are replaced by what the connection shows (its address,
    and https only when this listener terminated TLS).
    """
    if not trusted:
        return b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\n" % (client_ip, scheme)
    chain = client_ip if req.forwarded_for is None else req.forwarded_for + b", " + client_ip
    claimed = (req.forwarded_proto or b"").split(b",")[0].strip(b" \t").lower()
    proto = claimed if claimed in _SCHEMES else scheme
    lines = b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\n" % (chain, proto)
    return _field_lines(req.claims) + lines


def request_head(req: Request, forwarded: bytes) -> bytes:
    """The head sent upstream, written from the validated fields."""
    parts = [req.method, b" ", req.target, b" HTTP/1.1\r\n"]
    if req.host is not None:
        parts += [b"Host: ", req.host, b"\r\n"]
    parts.append(req.fields)
    if req.upgrade is not None:
        parts += [b"Connection: Upgrade\r\nUpgrade: ", req.upgrade, b"\r\n"]
    if req.chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    elif req.length is not None:
        parts.append(b"Content-Length: %d\r\n" % req.length)
    parts += [forwarded, b"\r\n"]
    return b"".join(parts)


def response_head(resp: Response, framing: bytes, keep_alive: bool) -> bytes:
    """The head sent to the client; ``framing`` is its Content-Length or TE line, or empty."""
    return b"".join(
        [
            b"HTTP/1.1 %d " % resp.status,
            resp.reason,
            b"\r\n",
            resp.fields,
            framing,
            b"Connection: keep-alive\r\n\r\n" if keep_alive else b"Connection: close\r\n\r\n",
        ]
    )


def switching_head(resp: Response) -> bytes:
    """A 101 answer, sent on once the client asked to switch to what the instance chose."""
    fields = resp.fields
    upgrade = resp.upgrade or b""
    return b"HTTP/1.1 101 %s\r\n%sConnection: Upgrade\r\nUpgrade: %s\r\n\r\n" % (
        resp.reason or b"Switching Protocols",
        fields,
        upgrade,
    )


def interim_head(resp: Response) -> bytes:
    return b"HTTP/1.1 %d %s\r\n%s\r\n" % (resp.status, resp.reason, resp.fields)


def chunk(data: bytes) -> bytes:
    """One chunk, framed afresh: sizes and extensions as received are never forwarded."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def check_trailers(raw: list[tuple[bytes, bytes]]) -> None:
    """Trailer fields are validated, then dropped: RFC 9110 6.5.1 lets a proxy discard
    them, and many servers choke on them (werkzeug answers 500)."""
    for name, value in raw:
        check_field(name, value)


LAST_CHUNK = b"0\r\n\r\n"


def simple_response(status: int, body: str, *, close: bool = False) -> bytes:
    data = body.encode()
    lines = [
        b"HTTP/1.1 %d %s" % (status, _REASONS.get(status, b"Error")),
        b"Content-Type: text/plain; charset=utf-8",
        b"Content-Length: %d" % len(data),
        b"Connection: close" if close else b"Connection: keep-alive",
    ]
    if status == 503:
        lines.append(b"Retry-After: 1")
    return b"\r\n".join(lines) + b"\r\n\r\n" + data
