"""Session affinity (``[fleet] sticky = "cookie"``): a client stays with one instance.

Apps that keep sessions in the process need it: Socket.IO and engine.io
(their long-polling transport sends each poll as a new request, and only the
instance that opened the session knows it), SockJS, python-socketio, anything
with in-memory sessions. Like HAProxy's ``cookie ... insert indirect``:

- a request without a valid cookie is balanced as usual, and its answer sets
  one naming the instance that answered;
- a request with one goes to that instance while it is in service (healthy,
  not draining, not refusing connections); otherwise it is balanced as usual
  and the cookie set again, so a rolling deploy moves sticky clients over one
  request at a time;
- the cookie is taken out of the request forwarded to the instance: the app
  never sees it;
- an answer that sets the cookie is marked ``Cache-Control: private`` unless
  the app already kept shared caches from storing it (``private`` or
  ``no-store``), as HAProxy's ``nocache`` does: a CDN or shared cache in front
  would otherwise hand one client's cookie, and so one instance, to everyone
  who gets that answer from it.

The value is opaque: an HMAC of the fleet and instance id under a secret the
balancer keeps in ``KILN_HOME/agent/affinity.key`` (0600), so it reveals no
instance id or port, cannot be made up for an instance, and stays valid across
balancer restarts and handovers. A value that names no instance (forged,
stale, malformed) is treated as no cookie. Nothing here runs for a fleet
without ``sticky``: the balancer's hot path tests one attribute.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kiln.local.backend import Backend
    from kiln.local.http1 import Request
    from kiln.local.lb import Balancer
    from kiln.local.upstream import Upstream

KEY_BYTES = 32
_COOKIE = b"cookie"
# a Cache-Control field of a regenerated head that already keeps shared caches out
_KEPT_PRIVATE = re.compile(rb"^cache-control:[^\r\n]*\b(?:private|no-store)\b", re.I | re.M)
_PRIVATE = b"Cache-Control: private\r\n"


def cookie_name(fleet: str) -> str:
    """The fleet's cookie: one per fleet, since browsers share cookies across ports."""
    return f"kiln_{fleet}"


def load_key(path: Path) -> bytes:
    """The balancer's secret, made once (0600) and kept: cookies outlive a restart."""
    with contextlib.suppress(FileNotFoundError):
        key = path.read_bytes()
        if len(key) == KEY_BYTES:
            return key
    key = os.urandom(KEY_BYTES)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, key)
    finally:
        os.close(fd)
    tmp.replace(path)
    return key


class Affinity:
    """One fleet's sticky cookie: its name, attributes, and instance <-> token tables."""

    __slots__ = ("_key", "_plain", "_secure", "fleet", "ids", "max_age", "name", "tokens")

    def __init__(self, fleet: str, key: bytes, max_age: int | None = None) -> None:
        self.fleet = fleet
        self.max_age = max_age
        self.name = cookie_name(fleet).encode()
        self._key = key
        life = b"" if max_age is None else b"; Max-Age=%d" % max_age
        self._plain = b"; Path=/" + life + b"; HttpOnly; SameSite=Lax\r\n"
        self._secure = b"; Path=/" + life + b"; Secure; HttpOnly; SameSite=Lax\r\n"
        self.tokens: dict[str, bytes] = {}  # instance id -> cookie value
        self.ids: dict[bytes, str] = {}  # cookie value -> instance id

    def token(self, instance_id: str) -> bytes:
        token = self.tokens.get(instance_id)
        if token is None:
            mac = hmac.new(self._key, f"{self.fleet}\0{instance_id}".encode(), hashlib.sha256)
            token = base64.urlsafe_b64encode(mac.digest()[:16]).rstrip(b"=")
            self.tokens[instance_id] = token
            self.ids[token] = instance_id
        return token

    def update(self, instance_ids: Iterable[str]) -> None:
        """Know exactly these instances' tokens (the fleet's backends)."""
        wanted = set(instance_ids)
        for gone in [i for i in self.tokens if i not in wanted]:
            del self.ids[self.tokens.pop(gone)]
        for instance_id in wanted:
            self.token(instance_id)

    # the request ------------------------------------------------------------

    def arrive(self, head: Request) -> None:
        """Note which instance the request's cookie names (``head.affinity``, "" for none)
        and take the cookie out of the fields forwarded. Runs once per request."""
        if head.affinity is not None:
            return
        head.affinity = ""
        fields = head.fields
        if self.name not in fields:  # cookie names are case-sensitive: not ours anywhere
            return
        lines = fields.split(b"\r\n")
        changed = False
        for n, line in enumerate(lines):
            name, _, value = line.partition(b": ")
            if name.lower() != _COOKIE:
                continue
            kept = self._take(head, value)
            if kept is not None:
                lines[n] = name + b": " + kept if kept else b""
                changed = True
        if changed:
            head.fields = b"".join([line + b"\r\n" for line in lines if line])

    def _take(self, head: Request, value: bytes) -> bytes | None:
        """The Cookie value without ours (None when it had none); the first valid one of
        ours names the instance. Any bytes are safe here: llhttp and http1 let no control
        character through, and what is kept is a subset of what came."""
        pairs = value.split(b";")
        ours = False
        kept: list[bytes] = []
        for pair in pairs:
            name, eq, token = pair.strip(b" \t").partition(b"=")
            if eq and name.rstrip(b" \t") == self.name:
                ours = True
                if not head.affinity:
                    head.affinity = self.ids.get(token.strip(b' \t"'), "")
            elif pair.strip(b" \t"):
                kept.append(pair.strip(b" \t"))
        return b"; ".join(kept) if ours else None

    def pick(self, balancer: Balancer, head: Request, tried: tuple[str, ...]) -> Backend | None:
        """The cookie's instance while it is in service; else the balancer's usual pick."""
        pinned = head.affinity
        if pinned and pinned not in tried:
            backend = balancer.backends.get(pinned)
            if (
                backend is not None
                and backend.routable
                and (not backend.down_until or backend.down_until <= time.monotonic())
            ):
                return backend
        return balancer._pick(tried)

    # the response -----------------------------------------------------------

    def set_cookie(self, upstream: Upstream, fields: bytes, final: bool) -> bytes:
        """The lines to add to an answer whose other field lines are ``fields``: b"" when
        the request's cookie already named the instance that answered, else the
        Set-Cookie line and (a ``final`` answer that shared caches may store)
        ``Cache-Control: private``."""
        head = upstream.head
        backend = upstream.backend
        if head is not None and head.affinity == backend.id:
            return b""
        client = upstream.client
        secure = client is not None and (
            client.scheme == b"https"
            or (client.trusted and head is not None and _says_https(head.forwarded_proto))
        )
        tail = self._secure if secure else self._plain
        line = b"Set-Cookie: " + self.name + b"=" + self.token(backend.id) + tail
        if final and not _KEPT_PRIVATE.search(fields):
            return line + _PRIVATE
        return line


def _says_https(proto: bytes | None) -> bool:
    return proto is not None and proto.split(b",")[0].strip(b" \t").lower() == b"https"


def configure(balancer: Balancer, spec: dict[str, Any] | None, key: bytes) -> None:
    """Set a fleet's affinity from the agent's ``sticky`` spec (None: off)."""
    if not spec:
        balancer.sticky = None
        return
    max_age = spec.get("max_age")
    age = None if max_age is None else int(max_age)
    sticky = balancer.sticky
    if sticky is None or sticky.max_age != age or sticky.fleet != balancer.fleet:
        sticky = balancer.sticky = Affinity(balancer.fleet, key, age)
    sticky.update(balancer.backends)
