"""Instances still running code the host has since replaced on disk.

A security update of python3, OpenSSL or libc replaces files under /usr; a
process started before keeps the old copy mapped, and the kernel marks such
a mapping ``(deleted)`` in ``/proc/PID/maps`` (the check needrestart and
checkrestart make). The image is unchanged, so no deploy would ever replace
that instance: ``kiln status`` names it, ``kiln refresh`` replaces it from
the same image through the rolling engine.
"""

from __future__ import annotations

from pathlib import Path

# where the host's interpreters and libraries live; a deleted file elsewhere
# (the app's own temp files, shared memory, memfd) is the app's business
SYSTEM_PREFIXES = ("/usr/", "/lib", "/bin/", "/sbin/", "/opt/")
_DELETED = " (deleted)"


def replaced_files(pid: int, proc: Path = Path("/proc")) -> list[str]:
    """Host files this process maps that were replaced since it started (sorted, unique).

    Empty when the process is gone or its maps cannot be read (another uid).
    """
    try:
        text = (proc / str(pid) / "maps").read_text(encoding="utf-8", errors="surrogateescape")
    except OSError:
        return []
    found: set[str] = set()
    for line in text.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) < 6 or not parts[5].endswith(_DELETED):
            continue
        path = parts[5][: -len(_DELETED)]
        if path.startswith(SYSTEM_PREFIXES):
            found.add(path)
    return sorted(found)
