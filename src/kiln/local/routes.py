"""Host-based routing: which fleet answers a Host (or a TLS server name) on a shared listener.

Several fleets may listen on one address, like kamal-proxy's services: each
claims host names (``a.example.com``, or ``*.example.com`` for any of its
subdomains), and at most one claims none, answering every Host the others do
not. The agent uses the same table to refuse a conflicting claim before
anything changes, and the balancer to route each request.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Generic, TypeVar

from kiln.errors import ProviderError

T = TypeVar("T")
HOSTS_HINT = "give each fleet on a shared listen address its own [provider.local] hosts"
HOST_NAME = re.compile(
    r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
)


def valid_host(name: str) -> bool:
    """A lowercase DNS name or IPv4 address, optionally ``*.`` first; no port."""
    return len(name) <= 253 and HOST_NAME.match(name) is not None


def host_name(value: bytes | str | None) -> str | None:
    """The name in a Host header or SNI: lowercased, without port or trailing dot."""
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    text = text.strip().lower()
    if text.startswith("["):  # an IPv6 literal, with or without a port
        return text[: text.find("]") + 1] or None
    return text.rsplit(":", 1)[0].rstrip(".") or None


class Routes(Generic[T]):
    """Host name → target; exact names beat wildcards, the longest wildcard wins."""

    def __init__(self) -> None:
        self.exact: dict[str, T] = {}
        self.wildcard: dict[str, T] = {}  # ".example.com" -> target
        self.default: T | None = None
        self.owners: dict[str, str] = {}  # claimed name ("" for every other) -> fleet
        self.single = False  # one fleet answers every Host: ``default``, without a look

    def claim(self, fleet: str, hosts: Iterable[str], target: T) -> str | None:
        """Add a fleet's claims; the conflict, said for people, if any (nothing added then)."""
        names = list(hosts)
        for name in names or [""]:
            owner = self.owners.get(name)
            if owner is not None and owner != fleet:
                if not name:
                    return f"fleet {owner} already answers every Host there"
                return f"host {name} is already fleet {owner}'s"
        for name in names:
            self.owners[name] = fleet
            if name.startswith("*."):
                self.wildcard[name[1:]] = target
            else:
                self.exact[name] = target
        if not names:
            self.owners[""] = fleet
            self.default = target
        self.single = self.default is not None and len(self.owners) == 1
        return None

    def pick(self, host: bytes | str | None) -> T | None:
        if not self.owners or (self.default is not None and len(self.owners) == 1):
            return self.default  # one fleet for every Host: nothing to parse
        name = host_name(host)
        if name is None:
            return self.default
        target = self.exact.get(name)
        if target is not None:
            return target
        dot = name.find(".")
        while dot >= 0:
            target = self.wildcard.get(name[dot:])
            if target is not None:
                return target
            dot = name.find(".", dot + 1)
        return self.default


def tls_mismatch(other: str, other_tls: object) -> str:
    """Fleets sharing an address all terminate TLS, or none does."""
    speaks = "terminates TLS" if other_tls else "speaks plain HTTP"
    return f"fleet {other} there {speaks}; fleets sharing an address all use TLS or none"


def claim_error(fleet: str, address: tuple[str, int], problem: str) -> ProviderError:
    return ProviderError(
        f"cannot serve fleet {fleet} on {address[0]}:{address[1]}: {problem}", hint=HOSTS_HINT
    )
