"""Instance users for ``[provider.local] isolate``: handed out once, emptied when done.

A process group is no boundary: an instance can ``setsid`` a child that
outlives it. The uid is the boundary, so it is handled as one:

* uids are handed out in increasing order and never given to a second
  instance (the last one is kept in ``agent/last-uid``, which outlives the
  agent's database); at the end of the range the lowest free one is taken;
* a uid that still owns a process (or an instance directory) is never handed
  out, whatever the bookkeeping says;
* when an instance finishes, every process its uid owns is killed: first with
  ``kill(-1, SIGKILL)`` run *as that uid* (the kernel walks the process table
  itself, so a process forking as fast as it can is still caught), then by a
  scan of ``/proc`` until nothing of that uid is left.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger("kiln.agent")
FIRST = 2_000_000_000  # far above any account a system creates
LAST = 4_000_000_000  # below (uid_t)-1, which means "no change" to setuid
KILL = "/bin/kill"


def owners(pid_dir: Path) -> set[int]:
    """Every uid (real, effective, saved, fs) of one /proc/<pid> entry; none if a zombie."""
    try:
        status = (pid_dir / "status").read_text()
    except OSError:
        return set()
    found: set[int] = set()
    for line in status.splitlines():
        if line.startswith("State:") and line.split()[1] in ("Z", "X"):
            return set()  # a zombie runs nothing and holds nothing
        if line.startswith("Uid:"):
            found = {int(u) for u in line.split()[1:]}
    return found


def processes_of(uid: int) -> list[int]:
    """Pids of the live processes that run with ``uid`` in any of their ids."""
    return [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and uid in owners(entry)
    ]


def busy_uids(low: int = FIRST, high: int = LAST) -> set[int]:
    """The uids in [low, high) that own at least one live process."""
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            found |= {u for u in owners(entry) if low <= u < high}
    return found


def kill_all(uid: int, attempts: int = 50) -> list[int]:
    """SIGKILL every process of ``uid``; the pids that survived (normally none)."""
    if not FIRST <= uid < LAST:
        raise ValueError(f"uid {uid} is not an instance uid")  # never a real account
    left = processes_of(uid)
    for attempt in range(attempts):
        if not left:
            return []
        if Path(KILL).exists():
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(
                    [KILL, "-s", "KILL", "--", "-1"],
                    user=uid,
                    group=uid,
                    extra_groups=[],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    timeout=10,
                    check=False,
                )
        for pid in processes_of(uid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(min(0.01 * (attempt + 1), 0.1))  # let the kernel finish them off
        left = processes_of(uid)
    return left


class UidPool:
    """Hands out instance uids; thread-safe (allocation runs off the event loop)."""

    def __init__(self, last_path: Path) -> None:
        self.last_path = last_path
        self._lock = threading.Lock()

    def take(self, known: Iterable[int], dirs: Path) -> int:
        """A uid no instance ever had here, owning no process and no instance directory.

        ``known`` are the uids of every instance record the agent holds.
        """
        with self._lock:
            busy = busy_uids()
            owned = _dir_owners(dirs)
            used = set(known) | busy | owned
            start = max([self._last(), *used, FIRST - 1]) + 1
            candidates = range(start, LAST) if start < LAST else range(FIRST, LAST)
            uid = next((u for u in candidates if u not in used), None)
            if uid is None:
                uid = next(u for u in range(FIRST, LAST) if u not in used)
            self._remember(uid)
            return uid

    def _last(self) -> int:
        try:
            return int(self.last_path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return FIRST - 1

    def _remember(self, uid: int) -> None:
        tmp = self.last_path.with_name(self.last_path.name + ".tmp")
        tmp.write_text(f"{uid}\n")
        tmp.replace(self.last_path)


def _dir_owners(dirs: Path) -> set[int]:
    found: set[int] = set()
    with contextlib.suppress(OSError):
        for entry in dirs.iterdir():
            with contextlib.suppress(OSError):
                owner = entry.lstat().st_uid
                if FIRST <= owner < LAST:
                    found.add(owner)
    return found


def reap(uid: int) -> bool:
    """Kill what an instance's uid left behind; whether nothing of it is left running.

    Loud if a process survives: that uid is then never handed out again.
    """
    started = time.monotonic()
    left = kill_all(uid)
    if left:
        log.error("uid %s still owns processes %s; it will never be handed out again", uid, left)
        return False
    log.info("uid %s emptied in %.3fs", uid, time.monotonic() - started)
    return True
