"""Hostile or odd app directories: every name kept, nothing dropped silently.

Newlines and non-UTF-8 bytes in names are stored losslessly; unreadable
files and directories, FIFOs, sockets and devices are one-line errors naming
the path; sparse files stay sparse in the store and in every instance.
"""

from __future__ import annotations

import io
import os
import socket
import stat
import tarfile
import time
from pathlib import Path

import pytest

from bake.apps import write_app
from bake.unprivileged import run_kiln
from kiln.config import load_config
from kiln.errors import BuildError
from kiln.home import Home
from kiln.image.bake import bake
from kiln.image.store import Store

ODD = [b"new\nline.txt", b"bad\xffname.txt", b"tab\tand space.txt", b"caf\xc3\xa9.txt"]


def test_odd_names_bake_again_and_again_and_come_back_byte_for_byte(
    app_dir: Path, home: Home, tmp_path: Path
) -> None:
    for name in ODD:
        with (app_dir / os.fsdecode(name)).open("wb") as f:
            f.write(name)
    first = bake(load_config(app_dir), home)
    time.sleep(0.25)  # let the source index vouch for the files
    assert bake(load_config(app_dir), home).digest == first.digest  # was a traceback
    assert bake(load_config(app_dir), home).reused
    (app_dir / "static" / "f0.txt").write_text("changed\n")
    changed = bake(load_config(app_dir), home)
    assert changed.digest != first.digest

    dest = tmp_path / "inst"
    Store(home).materialize(changed.image, dest)
    for name in ODD:
        with (dest / os.fsdecode(name)).open("rb") as f:
            assert f.read() == name
    tar = io.BytesIO()
    Store(home).export_tar(changed.image, tar)
    with tarfile.open(fileobj=io.BytesIO(tar.getvalue())) as t:
        names = {os.fsencode(m.name) for m in t.getmembers()}
    assert set(ODD) <= names


def test_a_damaged_source_index_is_only_a_cache_miss(app_dir: Path, home: Home) -> None:
    time.sleep(0.25)  # old enough to be indexed
    first = bake(load_config(app_dir), home)
    indexes = list((home.root / "cache").glob("index-*"))
    assert indexes
    for index in indexes:
        index.write_bytes(b"garbage\0\xff\xfe 1 2\0")
    assert bake(load_config(app_dir), home).digest == first.digest


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _socket(path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()


def _device(path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("creating a device node needs root")
    os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))


@pytest.mark.parametrize(
    ("make", "kind"),
    [(_fifo, "FIFO"), (_socket, "socket"), (_device, "device node")],
)
def test_special_files_are_refused_by_name_unless_excluded(
    app_dir: Path, home: Home, make: object, kind: str
) -> None:
    (app_dir / "run").mkdir()
    make(app_dir / "run" / "thing")  # type: ignore[operator]
    with pytest.raises(BuildError, match=f"run/thing is a {kind}") as caught:
        bake(load_config(app_dir), home)
    assert "exclude it" in (caught.value.hint or "")
    (app_dir / ".kilnignore").write_text("run/\n")
    assert bake(load_config(app_dir), home).files == 4


def test_unreadable_file_and_directory_are_one_line_errors(tmp_path: Path) -> None:
    base = tmp_path / "world"
    base.mkdir()
    app = write_app(base / "app")
    home = base / "home"
    secret = app / "secret.txt"
    secret.write_text("x")
    secret.chmod(0)
    unreadable = run_kiln(app, home, "bake")
    assert unreadable.returncode == 1, unreadable.stderr
    assert "error: cannot read secret.txt: Permission denied" in unreadable.stderr
    assert "Traceback" not in unreadable.stderr and len(unreadable.stderr.splitlines()) <= 3

    secret.chmod(0o644)
    private = app / "private"
    private.mkdir()
    (private / "data.txt").write_text("must not vanish")
    private.chmod(0)
    closed = run_kiln(app, home, "bake")  # it used to succeed without private/data.txt
    assert closed.returncode == 1, closed.stdout + closed.stderr
    assert "error: cannot read private: Permission denied" in closed.stderr
    assert "Traceback" not in closed.stderr
    (app / ".kilnignore").write_text("private/\n")
    assert run_kiln(app, home, "bake").returncode == 0  # excluded: never opened


def test_sparse_file_stays_sparse_in_the_store_and_the_instance(
    app_dir: Path, home: Home, tmp_path: Path
) -> None:
    size = 256 << 20
    sparse = app_dir / "disk.img"
    with sparse.open("wb") as f:
        f.truncate(size)
        f.seek(size // 2)
        f.write(b"data in the middle")
    assert sparse.stat().st_blocks * 512 < 1 << 20
    result = bake(load_config(app_dir), home)
    store = Store(home)
    entry = next(f for f in store.get(result.image).manifest.files if f.path == "disk.img")
    stored = store.objects.locate(entry.sha256)
    assert isinstance(stored, Path) and stored.stat().st_blocks * 512 < 1 << 20
    dest = tmp_path / "inst"
    store.materialize(result.image, dest)
    copy = dest / "disk.img"
    assert copy.stat().st_size == size and copy.stat().st_blocks * 512 < 1 << 20
    with copy.open("rb") as f:
        f.seek(size // 2)
        assert f.read(18) == b"data in the middle"
    assert store.verify(result.image) == []
