"""A corrupted object can be repaired: bake again, or kiln image verify --repair.

A corrupt object is quarantined where it is found (materialize, verify, or a
bake reading the same content), so "bake again to restore it" is true.
"""

from __future__ import annotations

import errno
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bake.apps import corrupt, write_app
from kiln.config import load_config
from kiln.errors import CorruptObject
from kiln.home import Home
from kiln.image.bake import RACY_NS, bake
from kiln.image.store import Store
from kilntest import Kiln


def _damaged(app: Path, home: Home, victim: str) -> tuple[str, str]:
    (app / "big.bin").write_bytes(os.urandom(3 << 20))  # stored loose, not packed
    time.sleep(RACY_NS / 1e9 * 2)  # old enough for the source index to vouch for them
    result = bake(load_config(app), home)
    store = Store(home)
    entry = next(f for f in store.get(result.image).manifest.files if f.path == victim)
    corrupt(store, entry.sha256)
    return result.image, entry.sha256


@pytest.mark.parametrize("victim", ["static/f2.txt", "big.bin"])
def test_bake_again_restores_an_object_found_corrupt(
    app_dir: Path, home: Home, tmp_path: Path, victim: str
) -> None:
    image, _ = _damaged(app_dir, home, victim)
    with pytest.raises(CorruptObject, match=re.escape(victim)) as caught:
        Store(home).materialize(image, tmp_path / "one")
    assert "bake the app again" in (caught.value.hint or "")
    again = bake(load_config(app_dir), home)  # nothing changed: no file is read again
    assert again.image == image and not again.reused
    Store(home).materialize(image, tmp_path / "two")
    assert Store(home).verify(image) == []
    assert bake(load_config(app_dir), home).reused  # and the cache works again


@pytest.mark.parametrize("victim", ["static/f2.txt", "big.bin"])
def test_a_bake_that_reads_stored_content_replaces_a_damaged_copy(
    tmp_path: Path, home: Home, victim: str
) -> None:
    """Not yet found by anyone: a bake reading the same content checks the stored copy."""
    first = write_app(tmp_path / "first")
    image, _ = _damaged(first, home, victim)
    second = write_app(tmp_path / "second")  # same content, new files: read again
    (second / "big.bin").write_bytes((first / "big.bin").read_bytes())
    bake(load_config(second), home)
    assert Store(home).verify(image) == []


def test_verify_repair_from_the_source_directory(kiln: Kiln, home: Home) -> None:
    app = write_app(kiln.cwd)
    image, _ = _damaged(app, home, "big.bin")
    plain = kiln("image", "verify", image, ok=False)
    assert plain.exit_code == 3 and "big.bin" in plain.stderr and "--repair" in plain.stderr
    fixed = kiln("image", "verify", image, "--repair", "--source", str(app))
    assert "restored 1 file(s)" in fixed.stdout and "ok, 5 files verified" in fixed.stdout
    assert Store(home).verify(image) == []


def test_verify_repair_names_the_images_to_bake_again(kiln: Kiln, home: Home) -> None:
    app = write_app(kiln.cwd)
    image, _ = _damaged(app, home, "static/f1.txt")
    (app / "static" / "f1.txt").write_text("changed since\n")  # the source no longer has it
    (app / "other").mkdir()
    result = kiln("image", "verify", image, "--repair", "--source", str(app), ok=False)
    assert result.exit_code == 3
    assert "1 corrupted file(s) could not be restored" in result.stderr
    assert f"{image} (shop, baked from {app})" in result.stderr
    assert "Traceback" not in result.stderr
    (app / "static" / "f1.txt").write_text("file 1\n" * 2)
    kiln("bake")
    assert "ok, 5 files verified" in kiln("image", "verify", image).stdout


def test_only_evidence_quarantines_an_object(
    app_dir: Path, home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Running out of file descriptors says nothing about an object: it is not condemned."""
    result = bake(load_config(app_dir), home)
    store = Store(home)
    sha = store.get(result.image).manifest.files[0].sha256

    def no_fds(sha: str) -> Iterator[bytes]:
        raise OSError(errno.EMFILE, "Too many open files")
        yield b""

    monkeypatch.setattr(store.objects, "read", no_fds)
    with pytest.raises(OSError, match="Too many open files"):
        store.verify(result.image)
    assert sha not in store.objects.refresh_corrupt()

    def failing_disk(sha: str) -> Iterator[bytes]:
        raise OSError(errno.EIO, "Input/output error")
        yield b""

    monkeypatch.setattr(store.objects, "read", failing_disk)
    assert store.verify(result.image) != []
    assert sha in store.objects.refresh_corrupt()
