"""How an instance was launched, comparable without revealing a secret.

Each instance records its *launch print*: the launch settings that change how
it runs, in clear (``isolate``), and ``secrets``, an HMAC-SHA256 of its
resolved secret names and values under a per-host key. ``kiln deploy``
computes the print a new instance would get and replaces the instances whose
print differs, so a changed secret or setting rolls out like a new image.

The key is 32 random bytes in ``KILN_HOME/agent/launch.key`` (0600): without
it, a print found in the agent's database or API cannot be used to test
guesses of a secret. The agent and the kiln command share it (same user).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
from collections.abc import Mapping
from pathlib import Path

from kiln.home import Home
from kiln.local.model import FleetSettings

LAUNCH_SETTINGS = ("isolate",)  # FleetSettings fields that change how an instance runs
KEY_BYTES = 32


def key_path(home: Home) -> Path:
    return home.agent_dir / "launch.key"


def load_key(home: Home) -> bytes:
    """The host's key, created (0600, atomically: first writer wins) if missing."""
    path = key_path(home)
    with contextlib.suppress(FileNotFoundError):
        return _read(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, os.urandom(KEY_BYTES))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another process created it meanwhile: use theirs
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return _read(path)


def _read(path: Path) -> bytes:
    data = path.read_bytes()
    if len(data) != KEY_BYTES:
        raise OSError(f"{path} is not a launch key ({len(data)} bytes)")
    return data


def launch_print(key: bytes, settings: FleetSettings, secrets: Mapping[str, str]) -> dict[str, str]:
    """setting -> value (JSON) for each launch setting, and the keyed digest of the secrets."""
    printed = {name: json.dumps(getattr(settings, name)) for name in LAUNCH_SETTINGS}
    canonical = json.dumps(sorted(secrets.items()), ensure_ascii=False).encode()
    printed["secrets"] = hmac.new(key, canonical, hashlib.sha256).hexdigest()[:32]
    return printed
