"""A KILN_HOME others can read is made private, or refused with what to do.

It holds manifests (with [env]), the deployment state and the agent's
database: a home made beforehand with ``mkdir`` (umask 022, mode 0755) used
to leave all of it readable by every user of the machine.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bake.apps import write_app
from kiln.errors import HomeError
from kiln.home import Home
from kilntest import Kiln


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_a_home_made_beforehand_with_0755_is_tightened(
    kiln: Kiln, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "shared"
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    monkeypatch.setenv("KILN_HOME", str(home))
    write_app(kiln.cwd)
    kiln("bake")
    for entry in (home, *home.iterdir()):  # as an earlier kiln, or a careless copy, left it
        entry.chmod(0o755 if entry.is_dir() else 0o644)
    (home / "state.db").write_bytes(b"")
    (home / "state.db").chmod(0o644)

    kiln("images")

    assert _mode(home) == 0o700
    assert _mode(home / "store") == 0o700 and _mode(home / "state.db") == 0o600
    manifests = list((home / "store" / "images").iterdir())
    assert manifests  # still there, now behind a private directory


def test_isolations_traverse_only_home_is_kept(tmp_path: Path) -> None:
    home = Home(tmp_path / "kiln").ensure()
    (home.root / "instances").mkdir()
    for traverse_only in (home.root, home.root / "instances"):
        traverse_only.chmod(0o711)
    home.ensure()
    assert _mode(home.root) == 0o711 and _mode(home.root / "instances") == 0o711


def test_a_home_kiln_cannot_make_private_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to make a home this user does not own")
    home = tmp_path / "theirs"
    home.mkdir()
    (home / "store").mkdir()
    (home / "tmp").mkdir(mode=0o777)
    (home / "tmp").chmod(0o777)
    home.chmod(0o777)
    os.chown(home, 65534, 65534)  # owned by nobody, writable by all: kiln cannot chmod it
    result = subprocess.run(
        [
            "setpriv",
            "--bounding-set",
            "-fowner,-dac_override,-dac_read_search",
            sys.executable,
            "-m",
            "kiln.cli",
            "images",
        ],
        env={**os.environ, "KILN_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == HomeError.exit_code, result.stderr
    assert f"KILN_HOME {home} is open to other users (mode 777)" in result.stderr
    assert "chmod -R go-rwx" in result.stderr and "Traceback" not in result.stderr


def test_an_entry_that_vanishes_while_the_home_is_checked_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite removes its -wal file when another process closes the database: `kiln status`
    listing the home at that moment crashed with FileNotFoundError (seen in the full suite)."""
    home = Home(tmp_path / "kiln").ensure()
    ghost = home.root / "state.db-wal"  # listed, then gone before its lstat
    real = Path.iterdir

    def listing(self: Path) -> Iterator[Path]:
        yield from real(self)
        if self == home.root:
            yield ghost

    monkeypatch.setattr(Path, "iterdir", listing)
    assert home.ensure() is home
