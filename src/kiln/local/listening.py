"""Why an instance is not reachable on its $PORT: it listens elsewhere, or its port was taken.

An app that ignores $PORT (``app.listen(3000)``) fails its health checks with
'connection refused', and a second instance of it dies with EADDRINUSE. The
log tail shows either, but not why; these say it in one line. The ports an
instance listens on are read from /proc: its session's socket inodes (an
instance is its own session) matched against the listening sockets of its
network namespace. Linux only: elsewhere, or without the right to read
another user's /proc entries, nothing is said.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import socket
from pathlib import Path

from kiln.durations import format_duration
from kiln.errors import ProviderError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

HINT = "the app must listen on $PORT (and $HOST), not on a port of its own"


def address_taken(fleet: str, host: str, port: int) -> ProviderError:
    """The fleet's listen address is another program's."""
    return ProviderError(
        f"cannot serve fleet {fleet}: {host}:{port} is already in use",
        hint="stop what listens there, or set [provider.local] listen to a free address",
    )


def refuse_taken(fleet: str, host: str, port: int) -> None:
    """Refuse an address another program listens on, before a deploy bakes: found
    at the launch, it left an interrupted deployment behind, after the whole bake.
    Only while no balancer of this home runs (one of ours may hold it, rightly)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise address_taken(fleet, host, port) from None


_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp
_IN_USE = (
    re.compile(r"EADDRINUSE\b.*?:(\d{1,5})\s*$", re.MULTILINE),  # node
    re.compile(r"bind on address \('[^']*', (\d{1,5})\)"),  # uvicorn
    re.compile(r"Connection in use: \('[^']*', (\d{1,5})\)"),  # gunicorn
    re.compile(r"Port (\d{1,5}) is in use"),  # werkzeug
    re.compile(r"Port (\d{1,5}) not free on "),  # CherryPy (portend)
    re.compile(r"EADDRINUSE|[Aa]ddress already in use"),  # anything else: no port known
)


def wrong_port(leader: int, port: int) -> str | None:
    """'listens on :3000, not on $PORT=…' when the instance listens only elsewhere."""
    ports = listening_ports(leader) if leader > 0 else set()
    if not ports or port in ports:
        return None
    shown = ", ".join(f":{p}" for p in sorted(ports))
    return f"listens on {shown}, not on $PORT={port}: {HINT}"


def not_listening(leader: int, port: int, grace: float) -> str | None:
    """'nothing listens yet…' when a booting instance has no listening socket at all.

    An app still starting when grace ends (a lifespan that loads a model, a
    slow import) fails its checks with 'connection refused' like one that
    crashed; this says the likelier fix. None when its sockets cannot be read.
    """
    sockets = _socket_inodes(leader) if leader > 0 else None
    if sockets is None or _listening(leader, sockets):
        return None
    return (
        f"nothing in it listens yet when its [health] grace of {format_duration(grace)} "
        f"ends: if the app takes longer to boot, raise grace; it must listen on $PORT={port}"
    )


def port_in_use(log_tail: str, port: int) -> str | None:
    """What an instance's log says about an address already in use, if it does."""
    for pattern in _IN_USE:
        match = pattern.search(log_tail)
        if match is None:
            continue
        taken = int(match.group(1)) if match.groups() else None
        if taken == port:
            return f"its $PORT={port} was taken by another process before it listened"
        what = f"port {taken}" if taken is not None else "the address it listens on"
        return f"{what} was already in use (EADDRINUSE), and its $PORT is {port}: {HINT}"
    return None


def log_end(path: Path, size: int = 8192) -> str:
    """The last ``size`` bytes of a log: enough for a startup error, cheap to read."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - size))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def listening_ports(leader: int) -> set[int]:
    """TCP ports the processes of ``leader``'s session listen on; empty if unknown.

    Session 0 is no session: it is what /proc shows for processes whose session
    began outside this pid namespace (a container's, a CI runner's).
    """
    sockets = _socket_inodes(leader) if leader > 0 else None
    return _listening(leader, sockets) if sockets else set()


def _socket_inodes(leader: int) -> set[str] | None:
    """The socket inodes the session's processes hold; None when none could be read."""
    inodes: set[str] = set()
    read = False
    for pid in _session(leader):
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        read = True
        for fd in fds:
            try:
                target = str(fd.readlink())
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return inodes if read else None


def _listening(leader: int, inodes: set[str]) -> set[int]:
    """The TCP ports among ``inodes`` that are listening sockets."""
    return {port for _address, port in _listening_on(leader, inodes)}


def _listening_on(leader: int, inodes: set[str]) -> set[tuple[IPAddress, int]]:
    """(address, port) of each listening socket among ``inodes``."""
    found: set[tuple[IPAddress, int]] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{leader}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == _LISTEN and fields[9] in inodes:
                address, port = fields[1].rsplit(":", 1)
                found.add((_address(address), int(port, 16)))
    return found


def _address(hexed: str) -> IPAddress:
    """/proc/net/tcp{,6}'s local address: 32-bit words in host (little-endian) order."""
    raw = bytes.fromhex(hexed)
    return ipaddress.ip_address(b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4)))


def _loopback(address: IPAddress) -> bool:
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return (mapped or address).is_loopback


def exposed(leader: int, port: int) -> str | None:
    """'listens on every interface…' when the instance's $PORT is bound beyond loopback.

    kiln gives every instance HOST=127.0.0.1; an app that binds 0.0.0.0 or ::
    anyway (Node's ``listen(port)`` with no host, a framework's default) can
    be reached on the host's own addresses, around the balancer. Read from
    /proc, so it covers every framework; None when the sockets cannot be read.
    """
    sockets = _socket_inodes(leader) if leader > 0 else None
    if not sockets:
        return None
    wide = sorted(
        str(a) for a, p in _listening_on(leader, sockets) if p == port and not _loopback(a)
    )
    if not wide:
        return None
    shown = ", ".join(f"[{a}]:{port}" if ":" in a else f"{a}:{port}" for a in wide)
    return (
        f"listens on {shown}, not only on $HOST=127.0.0.1: reachable around kiln's load "
        "balancer on this host's other addresses (no TLS, no host routing); "
        "make the app listen on $HOST"
    )


def _session(leader: int) -> list[int]:
    """The pids in the session ``leader`` leads (the instance's process tree)."""
    pids = []
    try:
        entries = list(Path("/proc").iterdir())
    except OSError:
        return []
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if len(fields) > 3 and fields[3] == str(leader):  # state ppid pgrp session
            pids.append(int(entry.name))
    return pids
