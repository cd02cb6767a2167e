"""One instance as a balancer sees it: its own module so both the balancer and an
instance connection (``kiln.local.upstream``) can type it when compiled
(Cython .pxd files cannot cimport each other in a cycle)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kiln.local.metrics import Counters

if TYPE_CHECKING:
    from kiln.local.proxy import Tunnel
    from kiln.local.upstream import Upstream


class Backend:
    """One instance as the balancer sees it: address, idle connections, counters."""

    __slots__ = (
        "counters",
        "down_until",
        "draining_since",
        "host",
        "id",
        "idle",
        "outstanding",
        "port",
        "routable",
        "tunnels",
    )

    def __init__(
        self, instance_id: str, host: str, port: int, counters: Counters | None = None
    ) -> None:
        self.id = instance_id
        self.host = host
        self.port = port
        self.outstanding = 0
        self.idle: list[Upstream] = []
        self.counters = counters or Counters()
        self.down_until = 0.0
        self.routable = False
        self.draining_since = 0.0  # when it stopped being routable, while it has tunnels
        self.tunnels: set[Tunnel] = set()

    def close_tunnels(self) -> None:
        for tunnel in list(self.tunnels):
            tunnel.close()

    def close_idle(self) -> None:
        for upstream in self.idle:
            upstream.close()
        self.idle.clear()
