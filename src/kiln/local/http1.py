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

try:
    import cython

    COMPILED: bool = cython.compiled  # True in the module compiled from this source
except ImportError:  # Cython is only needed to compile
    COMPILED = False

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
_COMMON_CONNECTIONS = {
    spelling: frozenset({spelling.lower()})
    for spelling in (b"close", b"keep-alive", b"Close", b"Keep-Alive")
}
_KEEP_ALIVE_TOKEN = _COMMON_CONNECTIONS[b"keep-alive"]

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
    414: b"URI Too Long",
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


class Request:
    """A validated request head: what the proxy forwards, and how its body is framed.

    A plain class rather than a dataclass: compiled (``http1.pxd``) it is an
    extension type whose fields the balancer reads as C struct members.
    """

    __slots__ = (
        "affinity",
        "chunked",
        "claims",
        "close",
        "expect",
        "fields",
        "forwarded_for",
        "forwarded_proto",
        "host",
        "length",
        "method",
        "target",
        "upgrade",
        "version",
    )

    def __init__(
        self,
        method: bytes,
        target: bytes,  # origin-form (or ``*`` for OPTIONS)
        version: bytes,  # b"1.0" or b"1.1"
        host: bytes | None,
        fields: bytes,  # end-to-end fields, validated, as the lines to forward
        chunked: bool = False,
        length: int | None = None,  # Content-Length; None when absent or chunked
        close: bool = False,  # the client wants the connection closed after this exchange
        upgrade: bytes | None = None,  # the protocol a client asked to switch to
        expect: bool = False,  # Expect: 100-continue
        forwarded_for: bytes | None = None,
        forwarded_proto: bytes | None = None,
        claims: tuple[tuple[bytes, bytes], ...] = (),  # Forwarded, X-Real-IP…
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.host = host
        self.fields = fields
        self.chunked = chunked
        self.length = length
        self.close = close
        self.upgrade = upgrade
        self.expect = expect
        self.forwarded_for = forwarded_for
        self.forwarded_proto = forwarded_proto
        self.claims = claims
        self.affinity: str | None = None  # sticky fleets: the instance its cookie names

    def reframe(self, length: int) -> None:
        """The body was read whole: it is forwarded with its length, not chunked."""
        self.chunked, self.length = False, length

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.length)

    def __repr__(self) -> str:
        return f"Request({self.method!r}, {self.target!r}, host={self.host!r})"


class Response:
    """A validated response head."""

    __slots__ = (
        "chunked",
        "close",
        "fields",
        "length",
        "reason",
        "status",
        "upgrade",
        "version",
    )

    def __init__(
        self,
        status: int,
        reason: bytes,
        version: bytes,
        fields: bytes,  # end-to-end fields, validated, as the lines to forward
        chunked: bool = False,
        length: int | None = None,
        close: bool = False,
        upgrade: bytes | None = None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.version = version
        self.fields = fields
        self.chunked = chunked
        self.length = length
        self.close = close
        self.upgrade = upgrade

    def __repr__(self) -> str:
        return f"Response({self.status}, {self.reason!r})"


# What a field name is to the proxy, by its spelling as received: a field is
# classified once per spelling, not once per message (names are few and repeat).
KEEP, HOST, LENGTH, CODING, CONNECTION, UPGRADE, EXPECT, XFF, XFP, CLAIM, IMPOSTOR, PROXY_CONN = (
    range(12)
)
_HOP_KIND = {
    b"host": HOST,
    b"proxy-connection": PROXY_CONN,
    b"content-length": LENGTH,
    b"transfer-encoding": CODING,
    b"connection": CONNECTION,
    b"upgrade": UPGRADE,
    b"expect": EXPECT,
    b"x-forwarded-for": XFF,
    b"x-forwarded-proto": XFP,
    **dict.fromkeys(_CLAIMS, CLAIM),
}
# Each spelling classified is remembered in the slot its length and first and last
# bytes pick (compiled; its hash in the source form), so the next field of that
# spelling is classified by one comparison: compiled, a dict lookup would cost more
# to hash the name (a new object each time, for every field) than all the rest of
# its classification. Spellings that share a slot take turns in it (each is still
# classified right, only not remembered), and the table never grows.
_SLOTS = 1024  # a power of two: Fields.add masks with 1023
_SPELLINGS: list[bytes] = [b""] * _SLOTS  # llhttp refuses an empty name: b"" never matches
_SPELLING_KINDS = bytearray(_SLOTS)
_GOOD_HOSTS_MAX = 4096


_FIELDS_LIMIT = MAX_FIELDS  # compiled, these are C integers (http1.pxd)
_HEAD_LIMIT = MAX_HEAD


def _trimmed(value: bytes) -> bytes:
    """``value`` without the trailing whitespace llhttp leaves (rarely any)."""
    end = len(value)
    if end and (value[end - 1] == 32 or value[end - 1] == 9):  # SP, HTAB
        return value.rstrip(b" \t")
    return value


def _digits(value: bytes) -> int:
    """The number ``value`` (ASCII digits only) spells. Compiled, added up digit by
    digit: ``int()`` of bytes costs more than the rest of a field's handling."""
    if not COMPILED or len(value) > 18:  # beyond 18 digits a C long long could overflow
        return int(value)
    number = 0
    for c in value:
        number = number * 10 + (c - 48)
    return number


def _kind(name: bytes, slot: int) -> int:
    """What a field of this spelling is, remembered in its ``slot`` (``Fields.add``)."""
    lname = name.lower()
    if lname in _HOP:
        kind = _HOP_KIND.get(lname, IMPOSTOR)  # keep-alive, te, trailer…: dropped
    elif b"_" in lname and lname.replace(b"_", b"-") in _HOP:
        kind = IMPOSTOR  # CGI-style servers (wsgiref, Django) read it as ours
    else:
        kind = KEEP
    if len(name) <= 64:  # longer ones are classified each time
        _SPELLINGS[slot] = name
        _SPELLING_KINDS[slot] = kind
    return kind


class Fields:
    """One head's fields, classified as llhttp hands them over (its ``on_header``).

    llhttp has checked every name is a token and every value free of control
    characters (tests/local/test_smuggling.py holds it to that); only the
    trailing whitespace it leaves on a value is ours to drop. Classifying
    each field as it comes, rather than in a second pass over a list, is what
    keeps the per-request cost of a regenerated head low. One per parser,
    ``reset`` at each message; after the head, fields are trailers.
    """

    __slots__ = (
        "after_head",
        "claims",
        "coding",
        "connection",
        "count",
        "expect",
        "forwarded_for",
        "forwarded_proto",
        "good_host",
        "host",
        "hosts",
        "keep",
        "length",
        "rare",
        "size",
        "status",
        "trailers",
        "upgrade",
    )

    def __init__(self, status: int) -> None:
        self.status = status  # what a head too large is answered: 431, or 502 for an instance's
        self.good_host = b""  # the last Host found valid, kept from message to message
        self.rare = True
        self.reset()

    def reset(self) -> None:
        self.keep: list[bytes] = []  # the lines of the fields passed on: name, ": ", value, CRLF
        self.host: bytes | None = None  # the first Host
        self.hosts = 0  # how many there were
        self.count = self.size = 0
        self.length: int | None = None
        self.connection: frozenset[bytes] | set[bytes] | None = None
        self.after_head = False
        self.trailers: list[tuple[bytes, bytes]] | None = None
        if self.rare:  # only a head that had the rarer fields has them to forget
            self.rare = False
            self.coding: bytes | None = None
            self.upgrade: bytes | None = None
            self.expect: bytes | None = None
            self.forwarded_for: bytes | None = None
            self.forwarded_proto: bytes | None = None
            self.claims: list[tuple[bytes, bytes]] = []

    def add(self, name: bytes, value: bytes) -> None:
        """One field (llhttp's ``on_header`` callback)."""
        self.count += 1
        self.size += len(name) + len(value)
        if self.count > _FIELDS_LIMIT or self.size > _HEAD_LIMIT:
            self._too_large()
        if self.after_head:
            if self.trailers is None:
                self.trailers = []
            self.trailers.append((name, value))
            return
        if COMPILED:  # a few C operations (a token: llhttp refuses an empty name)
            slot = (len(name) * 61 + name[0] * 37 + name[-1] * 7) & 1023
        else:  # fewer bytecodes
            slot = hash(name) & 1023
        kind = _SPELLING_KINDS[slot] if _SPELLINGS[slot] == name else _kind(name, slot)
        if kind == KEEP:
            end = len(value)  # _trimmed(), inlined for the fields most heads are made of
            if end and (value[end - 1] == 32 or value[end - 1] == 9):
                value = value.rstrip(b" \t")
            self.keep.extend((name, b": ", value, b"\r\n"))
        elif kind == HOST:
            self.hosts += 1
            if self.host is None:
                self.host = _trimmed(value)
        elif kind == LENGTH:
            value = _trimmed(value)
            if not value.isdigit() or self.length is not None:
                raise self._bad("bad or repeated Content-Length")
            self.length = _digits(value)
        elif kind == CONNECTION:
            value = _trimmed(value)
            common = _COMMON_CONNECTIONS  # as nearly every message spells it
            tokens = _KEEP_ALIVE_TOKEN if value == b"keep-alive" else common.get(value)
            if tokens is None:
                tokens = common.get(value.lower())
            if tokens is not None and self.connection is None:
                self.connection = tokens
            else:
                self._connection(value.lower())
        elif kind != IMPOSTOR:
            self.rare = True
            self._hop(kind, name, _trimmed(value))

    def _too_large(self) -> None:
        many = self.count > MAX_FIELDS
        if self.status == 502:
            what = "too many header fields" if many else "a head too large"
            raise BadMessage(f"instance answered {what}", 502)
        raise BadMessage("too many header fields" if many else "head too large", 431)

    def _bad(self, reason: str, status: int = 400) -> BadMessage:
        if self.status == 502:
            return BadMessage(f"instance answered: {reason}", 502)
        return BadMessage(reason, status)

    def _connection(self, value: bytes) -> None:
        """A Connection field beyond a single ``close`` or ``keep-alive``."""
        connection = set(self.connection or ())
        for token in value.split(b","):
            token = token.strip(b" \t")
            if token and not _TOKEN.fullmatch(token):
                raise self._bad("bad Connection")
            connection.add(token)
        self.connection = connection
        self.rare = True

    def _hop(self, kind: int, name: bytes, value: bytes) -> None:
        """The rarer hop-by-hop fields."""
        if kind == CODING:
            if self.coding is not None:
                raise self._bad("repeated Transfer-Encoding")
            self.coding = value.lower()
        elif kind == UPGRADE:
            self.upgrade = value
        elif kind == EXPECT:
            self.expect = value.lower()
        elif kind == XFF:
            had = self.forwarded_for
            self.forwarded_for = value if had is None else had + b", " + value
        elif kind == XFP:
            if self.forwarded_proto is None:
                self.forwarded_proto = value
        elif kind == CLAIM:
            self.claims.append((name, value))
        elif kind == PROXY_CONN and self.connection is None:
            # dropped, its tokens unread (it is no HTTP/1.1 field), but llhttp keeps an
            # HTTP/1.0 message alive for it: a Connection field with no token, for
            # ``kiln.local.messages.version``, means what no Connection field means
            self.connection = _NO_TOKENS

    def end_head(self) -> bytes:
        """The head is complete: check its framing; the field lines to forward.

        What follows (the fields of a chunked body's trailers) is held for
        ``end_trailers``.
        """
        self.after_head = True
        self.count = self.size = 0  # trailers have a head's allowance
        if not self.rare:
            return b"".join(self.keep)
        if self.coding is not None:
            if self.coding != b"chunked":  # gzip, identity, xchunked, "chunked, x": nobody agrees
                raise self._bad("only Transfer-Encoding: chunked is supported", 501)
            if self.length is not None:  # RFC 9112 6.3: a smuggling attempt until proven otherwise
                raise self._bad("Transfer-Encoding together with Content-Length")
        keep = self.keep
        connection = self.connection
        if connection and not connection <= _COMMON_CONNECTION:
            named = connection - _NEVER_DROPPED - _COMMON_CONNECTION - {b""}
            if named:  # headers the sender declared hop-by-hop
                keep = [
                    part
                    for n in range(0, len(keep), 4)
                    if keep[n].lower() not in named
                    for part in keep[n : n + 4]
                ]
        return b"".join(keep)

    def end_trailers(self) -> None:
        """Trailer fields are validated, then dropped: RFC 9110 6.5.1 lets a proxy discard
        them, and many servers choke on them (werkzeug answers 500). Called at the end
        of a message that had any (``trailers`` is not None)."""
        for name, value in self.trailers or ():
            check_field(name, value)


def check_field(name: bytes, value: bytes) -> bytes:
    """The value without surrounding whitespace; BadMessage unless both are clean."""
    value = value.strip(b" \t")
    if not _TOKEN.fullmatch(name) or not _VALUE.fullmatch(value):
        raise BadMessage(f"bad header field {name[:40]!r}")
    return value


def make_request(method: bytes, target: bytes, version: str, f: Fields) -> Request:
    """Validate a request head llhttp parsed (its fields in ``f``); BadMessage says why not."""
    ver = b"1.1" if version == "1.1" else b"1.0" if version == "1.0" else None
    if ver is None:
        raise BadMessage(f"unsupported HTTP version {version!r}", 505)
    if method == b"CONNECT":
        raise BadMessage("CONNECT is not supported", 501)
    keep = f.end_head()
    host = f.host
    if f.hosts != 1:
        if f.hosts:
            raise BadMessage("more than one Host")
        if ver == b"1.1":
            raise BadMessage("HTTP/1.1 request without Host")
    elif host is not None and host != f.good_host:  # a connection's requests share one
        good = _GOOD_HOSTS
        if host not in good:
            _check_host(host)
        f.good_host = host
    if not _origin(target):
        target, host = _normalise_target(method, target, host)
    if not f.rare:  # no field beyond the common ones: no coding, Connection or Upgrade
        connection = f.connection
        close = ver == b"1.0" if connection is None else _closes(ver, connection)
        return _plain_request(method, target, ver, host, keep, f.length, close)
    chunked = f.coding is not None
    if chunked and ver == b"1.0":  # RFC 9112 6.1: framing is faulty
        raise BadMessage("Transfer-Encoding in an HTTP/1.0 request")
    if f.expect is not None and f.expect != b"100-continue":
        raise BadMessage("unsupported Expect", 417)
    connection = f.connection or _NO_TOKENS
    upgrade = f.upgrade if b"upgrade" in connection else None
    # RFC 9110 7.8: an HTTP/1.0 Upgrade MUST be ignored, and any other MAY be. One
    # with a body (curl --http2 asks for h2c on every POST) is served as the plain
    # request it also is: Upgrade and Connection are hop-by-hop, so the instance
    # never sees the offer. llhttp skips such a body (kiln.local.messages counts
    # a Content-Length one out itself); a chunked one would need parsing outside
    # llhttp, and is refused.
    if upgrade is not None:
        if chunked:
            raise BadMessage("a chunked body on an Upgrade request")
        if ver == b"1.0" or f.length:
            upgrade = None
        elif not _UPGRADE.fullmatch(upgrade):
            raise BadMessage("bad Upgrade")
    return Request(
        method,
        target,
        ver,
        host,
        keep,
        chunked,
        f.length,
        _closes(ver, connection),
        upgrade,
        f.expect is not None,
        f.forwarded_for,
        f.forwarded_proto,
        tuple(f.claims),
    )


_NO_TOKENS: frozenset[bytes] = frozenset()


def _origin(target: bytes) -> bool:
    """Whether ``target`` is in origin-form (``_ORIGIN``): llhttp admits nothing but
    visible ASCII in a target, this is the second lock. Compiled, a loop over the
    bytes: a regular expression's set-up costs more than a whole target's check."""
    if not COMPILED:
        return _ORIGIN.fullmatch(target) is not None
    n = len(target)
    if n == 0 or target[0] != 47:  # "/"
        return False
    for i in range(1, n):
        c = target[i]
        if c < 0x21 or c > 0x7E:
            return False
    return True


def _closes(version: bytes, connection: frozenset[bytes] | set[bytes] | None) -> bool:
    """Whether the connection ends after this message (RFC 9112 9.3)."""
    if connection is None:
        return version == b"1.0"
    return b"close" in connection or (version == b"1.0" and b"keep-alive" not in connection)


_GOOD_HOSTS: set[bytes] = set()  # Host values seen valid (few, and repeated on every request)


def _check_host(host: bytes) -> None:
    if not _HOST.fullmatch(host):
        raise BadMessage("bad Host")
    if len(host) <= 255 and len(_GOOD_HOSTS) < _GOOD_HOSTS_MAX:
        _GOOD_HOSTS.add(host)


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


def make_response(status: int, reason: bytes, version: str, f: Fields) -> Response:
    """Validate a response head from an instance (its fields in ``f``); BadMessage (a 502)
    says why not."""
    ver = b"1.1" if version == "1.1" else b"1.0" if version == "1.0" else None
    if ver is None:
        raise BadMessage(f"instance answered HTTP version {version!r}", 502)
    reasons = _REASON_OK
    if not 100 <= status <= 599 or (
        reason != b"OK" and reason not in reasons and not _REASON.fullmatch(reason)
    ):
        raise BadMessage(f"instance answered a bad status line ({status})", 502)
    keep = f.end_head()
    if not f.rare:
        connection = f.connection
        close = ver == b"1.0" if connection is None else _closes(ver, connection)
        return _plain_response(status, reason, ver, keep, f.length, close)
    upgrade = f.upgrade if status == 101 else None
    if status == 101 and (upgrade is None or not _UPGRADE.fullmatch(upgrade)):
        raise BadMessage("instance switched protocols without a valid Upgrade", 502)
    connection = f.connection or _NO_TOKENS
    close = _closes(ver, connection)
    return Response(status, reason, ver, keep, f.coding is not None, f.length, close, upgrade)


# Nearly every head is plain: no coding, Upgrade, Expect or forwarded claims. Compiled,
# these make one without the argument parsing a call to the class costs.


def _plain_request(
    method: bytes,
    target: bytes,
    version: bytes,
    host: bytes | None,
    fields: bytes,
    length: int | None,
    close: bool,
) -> Request:
    req = Request.__new__(Request)
    req.method = method
    req.target = target
    req.version = version
    req.host = host
    req.fields = fields
    req.chunked = False
    req.length = length
    req.close = close
    req.upgrade = None
    req.expect = False
    req.forwarded_for = None
    req.forwarded_proto = None
    req.claims = ()
    req.affinity = None
    return req


def _plain_response(
    status: int, reason: bytes, version: bytes, fields: bytes, length: int | None, close: bool
) -> Response:
    resp = Response.__new__(Response)
    resp.status = status
    resp.reason = reason
    resp.version = version
    resp.fields = fields
    resp.chunked = False
    resp.length = length
    resp.close = close
    resp.upgrade = None
    return resp


# writing ------------------------------------------------------------------


def _field_lines(fields: tuple[tuple[bytes, bytes], ...]) -> bytes:
    return b"".join([name + b": " + value + b"\r\n" for name, value in fields])  # claims


def forwarding(req: Request | None, client_ip: bytes, scheme: bytes, trusted: bool) -> bytes:
    """X-Forwarded-For/-Proto lines for the next hop.

    A trusted proxy's claims are kept and extended with its own address;
    anyone else's are replaced by what the connection shows (its address,
    and https only when this listener terminated TLS).
    """
    if not trusted or req is None:
        return b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\n" % (client_ip, scheme)
    chain = client_ip if req.forwarded_for is None else req.forwarded_for + b", " + client_ip
    claimed = (req.forwarded_proto or b"").split(b",")[0].strip(b" \t").lower()
    proto = claimed if claimed in _SCHEMES else scheme
    lines = b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\n" % (chain, proto)
    return _field_lines(req.claims) + lines


def request_head(req: Request, forwarded: bytes) -> bytes:
    """The head sent upstream, written from the validated fields."""
    if req.upgrade is None and not req.chunked and req.host is not None:  # nearly every one
        length = b"" if req.length is None else length_line(req.length)
        return b"".join(
            (
                req.method,
                b" ",
                req.target,
                b" HTTP/1.1\r\nHost: ",
                req.host,
                b"\r\n",
                req.fields,
                length,
                forwarded,
                b"\r\n",
            )
        )
    parts = [req.method, b" ", req.target, b" HTTP/1.1\r\n"]
    if req.host is not None:
        parts += [b"Host: ", req.host, b"\r\n"]
    parts.append(req.fields)
    if req.upgrade is not None:
        parts += [b"Connection: Upgrade\r\nUpgrade: ", req.upgrade, b"\r\n"]
    if req.chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    elif req.length is not None:
        parts.append(length_line(req.length))
    parts += [forwarded, b"\r\n"]
    return b"".join(parts)


# Heads are joined from their parts: formatting with ``%`` parses its template each
# time, and formatting an integer costs more than the rest of a head.
_STATUS_CODES = [b"%d " % status for status in range(600)]  # as a status line writes them
_KEEP_ALIVE = b"Connection: keep-alive\r\n\r\n"
_CLOSE = b"Connection: close\r\n\r\n"
_LENGTH_LINES: dict[int, bytes] = {}  # lengths repeat: the same page, the same asset
_LENGTHS_MAX = 1024


def length_line(length: int) -> bytes:
    """The ``Content-Length`` field line for ``length``."""
    lines = _LENGTH_LINES
    line = lines.get(length)
    if line is None:
        line = b"Content-Length: %d\r\n" % length
        if len(lines) >= _LENGTHS_MAX:
            lines.clear()
        lines[length] = line
    return line


def response_head(resp: Response, framing: bytes, keep_alive: bool) -> bytes:
    """The head sent to the client; ``framing`` is its Content-Length or TE line, or empty."""
    return b"".join(
        (
            b"HTTP/1.1 ",
            _STATUS_CODES[resp.status],
            resp.reason,
            b"\r\n",
            resp.fields,
            framing,
            _KEEP_ALIVE if keep_alive else _CLOSE,
        )
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
