"""OS failures a user can cause are one line with what to do, never a traceback.

The real CLI in a subprocess, as a user runs it: a KILN_HOME on a full disk
(a small tmpfs mounted here, which needs root), paths it may not read or
write (permissions enforced with setpriv even as root), odd input.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bake.apps import write_app
from bake.unprivileged import run_kiln
from kiln.errors import HomeError
from kiln.oserrors import explain_failure


def _cli(cwd: Path, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kiln.cli", *args],
        cwd=cwd,
        env={**os.environ, "KILN_HOME": str(home), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        errors="replace",
        timeout=180,
        check=False,
    )


def _one_line(
    result: subprocess.CompletedProcess[str], expected: str, *, hint: bool = True
) -> None:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], result.stderr
    assert ("hint:" in result.stderr) is hint


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_one_line_everywhere(small_disk: Path, tmp_path: Path) -> None:
    home = small_disk / "kiln"
    app = write_app(tmp_path / "app")
    (app / "big.bin").write_bytes(os.urandom(2 << 20))  # twice the disk
    _one_line(_cli(app, home, "bake"), "no space left on device")
    assert list((home / "tmp").iterdir()) == []  # nothing half-written kept

    (app / "big.bin").unlink()
    assert _cli(app, home, "bake").returncode == 0  # room again: it works
    elsewhere = small_disk / "newapp"
    elsewhere.mkdir()
    (elsewhere / "app.py").write_text("print(1)\n")
    with contextlib.suppress(OSError), (small_disk / "filler").open("wb") as f:
        while True:
            f.write(b"\1" * 65536)
    (app / "static" / "new.txt").write_text("x" * 100_000)
    _one_line(_cli(app, home, "bake"), "no space left on device")
    _one_line(_cli(elsewhere, tmp_path / "home2", "init"), "no space left on device")
    (app / "static" / "new.txt").unlink()
    deploy = _cli(app, home, "deploy")  # the deployment state cannot be written
    _one_line(deploy, "no space left on device")


def test_paths_kiln_may_not_use_are_one_line(tmp_path: Path) -> None:
    base = tmp_path / "world"
    base.mkdir()
    app = write_app(base / "app")
    home = base / "home"
    assert run_kiln(app, home, "bake").returncode == 0
    images = home / "store" / "images"
    images.chmod(0o555)
    (app / "static" / "new.txt").write_text("changed")
    _one_line(run_kiln(app, home, "bake"), "Permission denied")
    images.chmod(0o755)

    (app / "kiln.toml").chmod(0)
    _one_line(run_kiln(app, home, "bake"), "cannot read")


def test_odd_input_is_one_line(tmp_path: Path, home_dir: Path) -> None:
    app = write_app(tmp_path / "app", extra='build = ["echo \\u0000 > x"]\n')
    nul = _cli(app, home_dir, "bake")  # was a ValueError traceback from Popen
    _one_line(nul, "[app] build: contains a NUL character", hint=False)
    odd = write_app(tmp_path / "odd")
    name = odd / os.fsdecode(b"caf\xe9.txt")  # Latin-1, not UTF-8
    name.write_text("x")
    name.chmod(0)
    result = run_kiln(odd, tmp_path / "world-home", "bake")
    _one_line(result, "cannot read caf\\udce9.txt: Permission denied")


@pytest.fixture
def home_dir(tmp_path: Path) -> Path:
    return tmp_path / "home"


def test_sqlite_failures_a_user_causes_are_explained_and_bugs_are_not() -> None:
    full = explain_failure(sqlite3.OperationalError("database or disk is full"))
    assert full is not None and "no space left on device" in full.message
    readonly = explain_failure(sqlite3.OperationalError("attempt to write a readonly database"))
    assert isinstance(readonly, HomeError) and "cannot write kiln's state" in readonly.message
    # a full disk as a new operator met it: `kiln status` had a traceback
    io = explain_failure(sqlite3.OperationalError("disk I/O error"))
    assert isinstance(io, HomeError) and "a full disk is the usual cause" in (io.hint or "")
    assert explain_failure(sqlite3.OperationalError("no such table: x")) is None
    assert explain_failure(ValueError("a bug")) is None


def test_a_missing_dependency_is_explained_not_a_traceback(tmp_path: Path) -> None:
    """A checkout pulled without reinstalling: the lazily imported command's module needs
    a package the environment lacks. Found when a venv older than httptools ran
    `kiln agent --help` and printed a traceback."""
    hidden = tmp_path / "hide"
    hidden.mkdir()
    (hidden / "sitecustomize.py").write_text(
        "import sys\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'httptools':\n"
        "            raise ModuleNotFoundError(\"No module named 'httptools'\", name='httptools')\n"
        "sys.meta_path.insert(0, Hide())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(hidden)}
    done = subprocess.run(
        [sys.executable, "-m", "kiln.cli", "agent", "--help"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "'httptools'" in done.stderr and "install kiln again" in done.stderr
    assert (
        explain_failure(ModuleNotFoundError("No module named 'kiln.nope'", name="kiln.nope"))
        is None
    )
