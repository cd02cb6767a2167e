from __future__ import annotations

import os
from pathlib import Path

from bake.apps import write_app
from kiln.config import load_config
from kiln.home import Home
from kiln.image.bake import bake
from kiln.image.drift import Change, baseline_path, record_baseline, scan
from kiln.image.store import Store


def _instance(app: Path, home: Home, dest: Path) -> Store:
    result = bake(load_config(app), home)
    store = Store(home)
    store.materialize(result.image, dest)
    record_baseline(dest)
    return store


def test_clean_instance_has_no_drift(app_dir: Path, home: Home, tmp_path: Path) -> None:
    dest = tmp_path / "inst"
    store = _instance(app_dir, home, dest)
    manifest = store.list_images()[0].manifest
    (dest / "__pycache__").mkdir()
    (dest / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"x")
    assert scan(dest, manifest) == []
    assert baseline_path(dest).parent == dest.parent


def test_every_kind_of_change_is_reported(app_dir: Path, home: Home, tmp_path: Path) -> None:
    dest = tmp_path / "inst"
    store = _instance(app_dir, home, dest)
    manifest = store.list_images()[0].manifest
    (dest / "app.py").write_text("patched in place over ssh\n")
    (dest / "static" / "f0.txt").unlink()
    (dest / "static" / "f1.txt").chmod(0o755)
    (dest / "hotfix.py").write_text("x")
    (dest / "tmp").mkdir()
    (dest / "tmp" / "cache").write_text("fine")
    assert scan(dest, manifest, writable=["tmp/"]) == [
        Change("app.py", "modified"),
        Change("hotfix.py", "added"),
        Change("static/f0.txt", "deleted"),
        Change("static/f1.txt", "mode"),
    ]


def test_same_size_tamper_with_reset_mtime_is_caught(
    app_dir: Path, home: Home, tmp_path: Path
) -> None:
    dest = tmp_path / "inst"
    store = _instance(app_dir, home, dest)
    manifest = store.list_images()[0].manifest
    target = dest / "static" / "f2.txt"
    before = target.stat()
    original = target.read_bytes()
    target.write_bytes(original.replace(b"file", b"FILE"))
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert scan(dest, manifest) == [Change("static/f2.txt", "modified")]


def test_without_baseline_everything_is_hashed_and_still_right(tmp_path: Path, home: Home) -> None:
    app = write_app(tmp_path / "a")
    dest = tmp_path / "inst"
    store = _instance(app, home, dest)
    baseline_path(dest).unlink()
    manifest = store.list_images()[0].manifest
    assert scan(dest, manifest) == []
    (dest / "static" / "f1.txt").write_text("file 1\nfile 1\n".upper())
    assert scan(dest, manifest) == [Change("static/f1.txt", "modified")]
