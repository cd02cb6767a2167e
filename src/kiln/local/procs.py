"""Instance processes: spawn detached, recognise after a restart, stop, log.

Instances run in their own session so they outlive the agent (even a
SIGKILLed one); a pid is only trusted together with its /proc start time, so
a recycled pid is never mistaken for an instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import socket
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

from kiln.runline import exec_form


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def spawn(
    run: str, cwd: Path, env: Mapping[str, str], log: Path, uid: int | None = None
) -> subprocess.Popen[bytes]:
    """Start the command line ``run`` through /bin/sh, in its own session, output to ``log``.

    Its last simple command is exec'd when that is safe (kiln.runline), so the
    server is the session leader and gets signals itself.

    With ``uid`` the process runs as that user and group, with no supplementary
    groups: the agent (root) opens the log and enters the directory first.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        return subprocess.Popen(
            ["/bin/sh", "-c", exec_form(run)],
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=fd,
            start_new_session=True,
            close_fds=True,
            user=uid,
            group=uid,
            extra_groups=[] if uid is not None else None,
        )
    finally:
        os.close(fd)


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot), None if gone or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def alive(pid: int, started: int | None) -> bool:
    now = start_time(pid)
    return now is not None and (started is None or now == started)


def group_alive(pid: int) -> bool:
    """Whether any process is left in the instance's process group (the leader's pid)."""
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone is there, running as another user
    return True


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the instance's whole process group (its session leader is the app)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def environ_of(pid: int, started: int | None) -> dict[str, str]:
    """The environment a process was started with ({} if gone or not the same process)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    if not alive(pid, started):  # read first, check after: a pid reused meanwhile is refused
        return {}
    pairs = (item.partition(b"=") for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, _, v in pairs}


def instance_processes() -> list[tuple[int, dict[str, str]]]:
    """(pid, environment) of every session leader carrying a KILN_INSTANCE_ID: the
    instances running on this host, whoever (if anyone) remembers them."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            if os.getsid(pid) != pid:
                continue
            raw = (entry / "environ").read_bytes()
        except OSError:
            continue
        if b"KILN_INSTANCE_ID=" not in raw:
            continue
        env = environ_of(pid, start_time(pid))
        if env.get("KILN_INSTANCE_ID"):
            found.append((pid, env))
    return found


def processes_with_env(name: str, value: str) -> list[int]:
    """Pids whose environment has NAME=value: finds an instance spawned but not recorded."""
    needle = f"{name}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def cap_log(path: Path, max_bytes: int) -> None:
    """Keep a log within ``max_bytes``: the older half moves to ``.1``, replacing it.

    The instance writes with O_APPEND, so truncating in place is safe: its
    next write lands at the new end.
    """
    try:
        size = path.stat().st_size
    except OSError:
        return
    if size <= max_bytes // 2:
        return
    keep = max_bytes // 2
    with path.open("rb") as f:
        f.seek(max(0, size - keep))
        tail = f.read()
    path.with_name(path.name + ".1").write_bytes(tail)
    os.truncate(path, 0)


def log_tail(path: Path, lines: int = 20, end: int | None = None) -> str:
    """The last ``lines`` lines of a log (and of its rotated half if needed), up to byte ``end``."""
    chunks = []
    for candidate, upto in ((path.with_name(path.name + ".1"), None), (path, end)):
        with contextlib.suppress(OSError):
            chunks.append(candidate.read_bytes()[:upto][-256 * 1024 :])
    text = b"".join(chunks).decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:]) if lines > 0 else ""


def log_end(path: Path) -> int:
    """Where a follower of the log starts: just past its last complete line (0 if none).

    Taken *before* the first lines are shown, and used as their end: a line
    written in between is then printed once by the follower, not lost (taking
    the size after showing them skipped it), and a line half written when
    this is taken is left whole to the follower.
    """
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            start = max(0, size - 64 * 1024)
            f.seek(start)
            data = f.read(size - start)
    except OSError:
        return 0
    cut = data.rfind(b"\n")
    if cut < 0:
        return size if start else 0  # a 64 KiB line is shown in pieces
    return start + cut + 1


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed: it roughly doubles what the load balancer can carry."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def raise_fd_limit() -> None:
    """Every proxied request holds two sockets: take all the descriptors allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 1 << 20), hard))


def kill_by_env(name: str, value: str) -> list[int]:
    """SIGKILL the group of every process whose environment has NAME=value (a thread)."""
    found = processes_with_env(name, value)
    for pid in found:
        signal_group(pid, signal.SIGKILL)
    return found
