"""Loopback addresses for the page: parsed once, refused when they are not loopback.

The page shows a fleet's instances, images and deployment logs, so it is
served where only this host can connect (``kiln ui``, and the local agent's
``[provider.local] ui_listen``); a token then keeps other users of this host
out (:mod:`kiln.ui.server`). No aiohttp here: the config validates with it.
"""

from __future__ import annotations

import ipaddress
import re

from kiln.errors import ConfigError

_ADDRESS = re.compile(r"^(?P<host>[^:\s\[\]]+|\[[0-9a-fA-F:.]+\]):(?P<port>\d{1,5})$")
HINT = "use 127.0.0.1 (or [::1]); to look from another machine, use an SSH tunnel"


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or ``localhost``; never a name that DNS could point elsewhere."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def problem(text: str) -> str | None:
    """What is wrong with ``text`` as the page's ``HOST:PORT``, or None."""
    match = _ADDRESS.match(text)
    if match is None or not 0 < int(match.group("port")) < 65536:
        return f"{text!r} is not HOST:PORT, e.g. '127.0.0.1:8700'"
    if not is_loopback(match.group("host")):
        return f"{text!r} is not a loopback address: the page would be open to the network"
    return None


def parse_loopback(text: str, what: str) -> tuple[str, int]:
    """``HOST:PORT`` with a loopback HOST, as (host without brackets, port)."""
    wrong = problem(text)
    if wrong is not None:
        raise ConfigError(f"{what} {wrong}", hint=HINT)
    host, port = text.rsplit(":", 1)
    return host.strip("[]"), int(port)


def origin(host: str, port: int) -> str:
    """``host:port`` as a browser writes it (and sends it in Host): IPv6 in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def browser_hosts(host: str, port: int) -> frozenset[str]:
    """The Host headers a browser sends to this address: a rebinding page sends others."""
    return frozenset({origin(host, port), f"localhost:{port}"})
