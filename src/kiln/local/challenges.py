"""The plain-HTTP side of ACME in the balancer: challenge tokens, and https redirects.

The agent gets certificates (``kiln.local.acme``, on its threads) and tells
the balancer, with the rest of its configuration, which tokens to serve on
which plain listener for which host. The balancer only looks them up: a
request for ``/.well-known/acme-challenge/<token>`` with the Host of a fleet
that uses ACME gets the key authorization, any other request for such a host
is redirected to its https address (as kamal-proxy and Caddy do), and
anything else goes on as usual (a plain fleet on the same address still
serves its own hosts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kiln.local.http1 import Request, simple_response
from kiln.local.routes import host_name

PREFIX = b"/.well-known/acme-challenge/"


@dataclass
class Challenges:
    """One plain listener's ACME duties: host -> token -> key authorization, and
    host -> the https origin its other requests are sent to."""

    tokens: dict[str, dict[str, str]] = field(default_factory=dict)
    redirects: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Challenges:
        return cls(
            {str(h): {str(t): str(k) for t, k in v.items()} for h, v in spec["tokens"].items()},
            {str(h): str(o) for h, o in spec["redirects"].items()},
        )

    def claims(self, head: Request) -> bool:
        """A request for one of our hosts: answered here."""
        return host_name(head.host) in self.redirects

    def answer(self, head: Request) -> bytes | None:
        """The answer for a request to one of our hosts; None for anyone else's."""
        host = host_name(head.host)
        if host is None or host not in self.redirects:
            return None
        close = head.has_body or head.close  # a body is never read here
        if head.target.startswith(PREFIX):
            token = head.target[len(PREFIX) :].decode("latin-1")
            key_authorization = self.tokens.get(host, {}).get(token)
            if key_authorization is None:
                return simple_response(404, "no such ACME challenge\n", close=close)
            return simple_response(200, key_authorization, close=close)
        if head.upgrade is not None:
            close = True
        path = head.target if head.target.startswith(b"/") else b"/"
        location = self.redirects[host].encode() + path
        return (
            b"HTTP/1.1 308 Permanent Redirect\r\nLocation: %s\r\nContent-Length: 0\r\n"
            b"Connection: %s\r\n\r\n" % (location, b"close" if close else b"keep-alive")
        )
