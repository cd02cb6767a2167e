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
        "streams",
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
        self.draining_since = 0.0  # when it stopped being routable: tunnel_grace counts from it
        self.tunnels: set[Tunnel] = set()
        # event streams (SSE) being answered: connection -> when its exchange began
        # (an entry whose connection moved on to another exchange is stale, and dropped)
        self.streams: dict[Upstream, float] = {}

    def close_tunnels(self) -> None:
        """Tunnels, and event streams, end once their instance has left (tunnel_grace):
        neither ends by itself, and each held the instance's drain to its very end."""
        for tunnel in list(self.tunnels):
            tunnel.close()
        streams, self.streams = self.streams, {}
        for upstream, started in streams.items():
            if upstream.started == started:
                upstream.end_stream()

    def prune_streams(self) -> None:
        """Forget the event streams that ended (their connection idle, or answering
        another exchange since)."""
        self.streams = {
            upstream: started
            for upstream, started in self.streams.items()
            if upstream.client is not None and upstream.started == started
        }

    def close_idle(self) -> None:
        for upstream in self.idle:
            upstream.close()
        self.idle.clear()
