"""OS failures a user can cause, as one line that says what to do.

A full disk, a file kiln may not read, a read-only KILN_HOME: these are not
bugs, so they become KilnErrors naming the path and the fix, never a
traceback. Anything else keeps its traceback: it is a bug to report.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

from kiln.errors import BuildError, HomeError, KilnError, StoreError

FULL = {errno.ENOSPC, errno.EDQUOT}
DENIED = {errno.EACCES, errno.EPERM}
USER_CAUSED = FULL | DENIED | {errno.EROFS, errno.ENAMETOOLONG, errno.ELOOP, errno.EMFILE}


def _where(exc: OSError, root: Path | None) -> tuple[str, bool]:
    """The path a failure is about (relative when it is inside ``root``), and whether it is."""
    if exc.filename is None:
        return "", False
    name = Path(os.fsdecode(exc.filename))
    if root is not None and name.is_relative_to(root):
        return str(name.relative_to(root)), True
    return str(name), False


def explain(exc: OSError, *, source: Path | None = None) -> KilnError | None:
    """The KilnError for ``exc``, or None when it is not one a user causes.

    ``source`` is the directory being read (an app being baked): failures
    inside it are about the app, anything else is about KILN_HOME.
    """
    if exc.errno not in USER_CAUSED:
        return None
    where, inside = _where(exc, source)
    what = exc.strerror or str(exc)
    if exc.errno in FULL:
        return StoreError(
            f"no space left on device{f' writing {where}' if where else ''}",
            hint="free space on that filesystem (in KILN_HOME, 'kiln prune' removes images "
            "nothing uses), or point KILN_HOME at a larger one; nothing half-written was kept",
        )
    if inside:
        return BuildError(
            f"cannot read {where}: {what}",
            hint="make it readable by this user, or exclude it in [app] exclude or .kilnignore",
        )
    if exc.errno in DENIED or exc.errno == errno.EROFS:
        return HomeError(
            f"{what}: {where or 'KILN_HOME'}",
            hint="kiln reads and writes KILN_HOME (or --home) as this user: check the owner "
            "and permissions of that path",
        )
    return KilnError(f"{where}: {what}" if where else what)


def explain_failure(exc: BaseException) -> KilnError | None:
    """The CLI's safety net: an OS or SQLite failure a user causes, or an install
    missing a dependency, as a KilnError."""
    if isinstance(exc, ModuleNotFoundError):
        return _incomplete_install(exc)
    if isinstance(exc, OSError):
        return explain(exc)
    sqlite3 = sys.modules.get("sqlite3")  # not imported: not the cause (and not paid for)
    if sqlite3 is not None and isinstance(exc, sqlite3.OperationalError):
        text = str(exc)
        if "disk is full" in text:
            return explain(OSError(errno.ENOSPC, text))
        if "disk I/O error" in text:  # SQLite's word for a journal it could not write
            return HomeError(
                f"cannot write kiln's state: {text}",
                hint="a full disk is the usual cause (df -h on KILN_HOME's filesystem): "
                "free some space and run the command again; nothing was changed",
            )
        if "readonly database" in text or "unable to open database" in text:
            return HomeError(
                f"cannot write kiln's state: {text}",
                hint="kiln reads and writes KILN_HOME (or --home) as this user: check the "
                "owner and permissions of its files",
            )
    return None


def _incomplete_install(exc: ModuleNotFoundError) -> KilnError | None:
    """A dependency kiln imports is not installed: an environment kiln was copied or
    upgraded into without its requirements (a checkout pulled without reinstalling).
    A module of kiln's own missing is a bug, and keeps its traceback."""
    name = exc.name or ""
    if not name or name.partition(".")[0] == "kiln":
        return None
    return KilnError(
        f"kiln's installation is incomplete: the module {name!r} it needs is missing "
        f"from {sys.prefix}",
        hint="install kiln again with its dependencies (pip install --upgrade kiln-deploy; "
        "in a checkout of kiln, pip install -e . or make demo)",
    )
