"""Which kiln code a process runs: an upgrade (pip, git pull) changes it.

The agent reports the identity it started with; a command whose own differs
restarts it, since an agent from before an upgrade would be handed settings
it does not know. Stat data (path, size, mtime) of the package's modules is
enough to notice a change and costs about a millisecond; hashing the bytes
would cost ten times that on every command. Compiled modules count too
(``kiln.local.compiled``): a rebuilt hot path is new code, and so is one that
now runs as Python source because its build went stale or away.
"""

from __future__ import annotations

import functools
import hashlib
import os
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

_CODE = (".py", ".pxd", *EXTENSION_SUFFIXES)


@functools.cache
def kiln_code() -> str:
    return fingerprint(Path(__file__).resolve().parents[1])


def fingerprint(root: Path) -> str:
    """Stat data of every module under ``root``: its sources and compiled extensions."""
    digest = hashlib.sha256()
    for directory, subdirs, names in os.walk(root):  # Path.walk is 3.12+
        subdirs[:] = sorted(d for d in subdirs if d != "__pycache__")
        for name in sorted(names):
            if name.endswith(_CODE):
                path = Path(directory, name)
                st = path.stat()
                digest.update(
                    f"{path.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode()
                )
    return digest.hexdigest()[:16]
