"""The no-change bake's fast path (kiln.image.quick): fast, and never wrong.

It may only say "same image as last time"; every way the image could differ
must fall through to the full bake.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from kiln.config import load_config
from kiln.home import Home
from kiln.image import quick
from kiln.image.bake import bake
from kiln.image.store import Store


def _settled(app: Path) -> None:
    """Past the racy window: a tree this old is vouched for."""
    time.sleep(quick.RACY_NS / 1e9 * 2)


def _bake(app: Path, home: Home) -> str:
    return bake(load_config(app), home).digest


def _quick(app: Path, home: Home, environment: str | None = None) -> str | None:
    found = quick.lookup(home, (app / "kiln.toml").absolute(), environment)
    return None if found is None else str(found["digest"])


def test_a_no_change_bake_never_imports_the_config_models(app_dir: Path, home: Home) -> None:
    _settled(app_dir)
    run = [sys.executable, "-X", "importtime", "-m", "kiln.cli", "bake", "--json"]
    env = {**os.environ, "KILN_HOME": str(home.root)}
    first = subprocess.run(run, cwd=app_dir, env=env, capture_output=True, text=True, check=True)
    again = subprocess.run(run, cwd=app_dir, env=env, capture_output=True, text=True, check=True)
    assert "pydantic" in first.stderr  # the first bake validates kiln.toml
    assert "pydantic" not in again.stderr, "an unchanged app was validated again"
    before, after = json.loads(first.stdout), json.loads(again.stdout)
    assert after["reused"] and after["digest"] == before["digest"]
    assert set(after) == set(before)


def test_every_change_falls_through_to_the_full_bake(app_dir: Path, home: Home) -> None:
    _settled(app_dir)
    digest = _bake(app_dir, home)
    assert _quick(app_dir, home) == digest
    assert _quick(app_dir, home, "staging") is None  # another --env is another key

    # content: same size, new bytes (ctime moves even if mtime is put back)
    source = app_dir / "app.py"
    st = source.stat()
    source.write_bytes(source.read_bytes().replace(b"a", b"b", 1))
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert _quick(app_dir, home) is None
    _settled(app_dir)
    changed = _bake(app_dir, home)
    assert changed != digest and _quick(app_dir, home) == changed

    # the config's bytes
    toml = app_dir / "kiln.toml"
    toml.write_text(toml.read_text() + '\n[env]\nAPP_VERSION = "v2"\n')
    assert _quick(app_dir, home) is None
    _settled(app_dir)
    with_env = _bake(app_dir, home)
    assert with_env != changed and _quick(app_dir, home) == with_env

    # what is excluded
    (app_dir / ".kilnignore").write_text("static/\n")
    assert _quick(app_dir, home) is None
    _settled(app_dir)
    _bake(app_dir, home)
    assert _quick(app_dir, home) is not None
    (app_dir / "static" / "new.css").parent.mkdir(exist_ok=True)
    (app_dir / "static" / "new.css").write_text("body{}")  # excluded: still unchanged
    assert _quick(app_dir, home) is not None
    (app_dir / "new.py").write_text("x = 1\n")  # a new file
    assert _quick(app_dir, home) is None


def test_a_racy_tree_is_not_vouched_for(app_dir: Path, home: Home) -> None:
    source = app_dir / "app.py"
    source.write_text("print('just written')\n")
    # an mtime still within the racy window when the bake records, however slow the bake
    ahead = time.time_ns() + 60 * 10**9
    os.utime(source, ns=(ahead, ahead))
    _bake(app_dir, home)
    assert _quick(app_dir, home) is None


def test_an_image_gone_from_the_store_or_corrupt_is_baked_again(app_dir: Path, home: Home) -> None:
    _settled(app_dir)
    digest = _bake(app_dir, home)
    manifest = Store.manifest_path(home, digest)
    assert manifest is not None and manifest.exists()
    manifest.unlink()
    assert _quick(app_dir, home) is None
    assert _bake(app_dir, home) == digest  # stored again, same identity


def test_another_interpreter_on_the_instances_path_falls_through(app_dir: Path, home: Home) -> None:
    _settled(app_dir)
    _bake(app_dir, home)
    key_file = next((home.root / "cache" / "quick").iterdir())
    data = json.loads(key_file.read_text())
    data["interpreter"]["python"] = "python3.2"  # what the host had when it was baked
    key_file.write_text(json.dumps(data))
    assert _quick(app_dir, home) is None
