"""Replacing a running balancer with one running newer code, without refusing a connection.

After kiln is upgraded, the balancer that outlived the old agent still runs the
old code. The new agent notices (the balancer's ``code`` fingerprint differs
from its own), asks it for its listening sockets over the control socket
(``SCM_RIGHTS``), and starts the new balancer with them inherited. The old one
stops accepting, finishes the connections it has, and exits. The listening
sockets never close, so a connection that arrives in between waits in the
kernel's accept queue rather than being refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import os
import socket
from pathlib import Path
from typing import Any

from kiln.errors import ProviderError

# The code that serves: a change to any of these replaces a running balancer on upgrade
# (tests/local/test_lb_survives.py holds every kiln.local module it imports to the list).
_MODULES = (
    "kiln.errors",
    "kiln.local.affinity",
    "kiln.local.backend",
    "kiln.local.challenges",
    "kiln.local.compiled",
    "kiln.local.front",
    "kiln.local.handover",
    "kiln.local.http1",
    "kiln.local.lb",
    "kiln.local.listening",
    "kiln.local.lbproc",
    "kiln.local.messages",
    "kiln.local.metrics",
    "kiln.local.proxy",
    "kiln.local.routes",
    "kiln.local.stream",
    "kiln.local.tls",
    "kiln.local.upstream",
    "kiln.local.wsclose",
)
MAX_LISTENERS = 64
Listener = tuple[str, int, int]  # host, port, file descriptor


def _fingerprint() -> str:
    digest = hashlib.sha256()
    for name in _MODULES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            digest.update(Path(spec.origin).read_bytes())
    return digest.hexdigest()[:16]


CODE = _fingerprint()  # the balancer's code, as this process has it


class HandoverFailed(ProviderError):
    """The running balancer could not hand its sockets over (an older one cannot)."""


def send_listeners(writer: asyncio.StreamWriter, listeners: list[tuple[str, int, int]]) -> None:
    """Answer a handover request: the addresses as JSON, their sockets alongside."""
    line = json.dumps({"ok": True, "listeners": [[h, p] for h, p, _ in listeners]}) + "\n"
    raw = writer.get_extra_info("socket")
    with socket.socket(fileno=os.dup(raw.fileno())) as conn:  # the transport keeps its own
        socket.send_fds(conn, [line.encode()], [fd for _, _, fd in listeners])


def receive_listeners(path: Path, timeout: float = 10.0) -> list[Listener]:
    """Ask the balancer on ``path`` for its listening sockets (blocking: run in a thread)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(b'{"op": "handover"}\n')
        data, fds, _, _ = socket.recv_fds(sock, 1 << 16, MAX_LISTENERS)
    try:
        answer: dict[str, Any] = json.loads(data)
        if not answer.get("ok"):
            raise HandoverFailed(f"the balancer refused to hand over: {answer.get('error')}")
        addresses = [(str(h), int(p)) for h, p in answer["listeners"]]
        if len(addresses) != len(fds):
            raise HandoverFailed(f"{len(addresses)} listeners named, {len(fds)} received")
    except (ValueError, KeyError, TypeError, HandoverFailed) as exc:
        for fd in fds:
            os.close(fd)
        if isinstance(exc, HandoverFailed):
            raise
        raise HandoverFailed(f"bad handover answer: {exc}") from exc
    return [(h, p, fd) for (h, p), fd in zip(addresses, fds, strict=True)]


def inherited(spec: str | None) -> dict[tuple[str, int], socket.socket]:
    """The sockets a predecessor handed over, from ``--inherit`` (JSON [[host, port, fd]])."""
    out: dict[tuple[str, int], socket.socket] = {}
    for host, port, fd in json.loads(spec) if spec else []:
        out[(str(host), int(port))] = socket.socket(fileno=int(fd))
    return out
