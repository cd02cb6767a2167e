"""Recognise an unchanged app before reading its config: the no-change bake's fast path.

An image is a function of kiln.toml's bytes (as read for one ``--env``), the
source tree, the interpreter the instances would run and kiln itself. After
every bake, the result is recorded under a key of those config bytes, with the
stat data of every source entry and of ``.kilnignore``. The next ``kiln bake``
walks the tree first: when the config bytes, every entry's stat data and the
interpreter are unchanged, and the image is still whole in the store, the
answer is the same image, and validating the config (pydantic is most of a
no-change bake's time) is skipped. Anything else falls through to the full
bake, which re-checks everything: this module can only ever say "same as last
time", never produce an image.

A tree touched within the racy window (its mtime could still change within one
clock tick) is not recorded, as in the source index.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kiln import __version__
from kiln.home import Home
from kiln.image.ignore import IGNORE_FILE, SourceEntry, load_spec, walk

RACY_NS = 100_000_000  # as kiln.image.bake: younger entries are not vouched for


def _key(config_path: Path, config_bytes: bytes, environment: str | None) -> str:
    h = hashlib.sha256()
    for part in (__version__, str(config_path), environment or "", ""):
        h.update(part.encode("utf-8", "surrogateescape") + b"\0")
    h.update(config_bytes)
    return h.hexdigest()


def _path(home: Home, key: str) -> Path:
    return home.root / "cache" / "quick" / key


def _tree_digest(root: Path, entries: Iterable[SourceEntry]) -> tuple[str, int]:
    """A digest of every entry's stat data, and the newest mtime/ctime among them."""
    h = hashlib.sha256()
    newest = 0
    try:
        st = (root / IGNORE_FILE).stat()
        h.update(f"{IGNORE_FILE}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0".encode())
        newest = max(st.st_mtime_ns, st.st_ctime_ns)
    except FileNotFoundError:
        h.update(b"no ignore file\0")
    for e in entries:
        h.update(
            f"{e.path}\0{e.kind}\0{e.mode}\0{e.size}\0{e.mtime_ns}\0{e.ctime_ns}\0{e.ino}\0"
            f"{e.target}\0".encode("utf-8", "surrogateescape")
        )
        newest = max(newest, e.mtime_ns, e.ctime_ns)
    return h.hexdigest(), newest


def record(
    home: Home,
    config_path: Path,
    environment: str | None,
    excludes: list[str],
    interpreter: dict[str, Any],
    entries: list[SourceEntry],
    result: dict[str, Any],
) -> None:
    """After a bake: what it was made from, so an unchanged app is recognised next time.

    ``interpreter`` is how the image's interpreter was chosen (``wanted``, ``path``) and
    what it was (``python``); ``entries`` is the walk the bake used.
    """
    try:
        config_bytes = config_path.read_bytes()
    except OSError:
        return
    digest, newest = _tree_digest(config_path.parent, entries)
    if newest >= time.time_ns() - RACY_NS:
        return
    path = _path(home, _key(config_path, config_bytes, environment))
    data = {"excludes": excludes, "tree": digest, "interpreter": interpreter, "result": result}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(path)
    except OSError:
        pass  # a cache: a full disk only costs the next bake its fast path


def lookup(home: Home, config_path: Path, environment: str | None) -> dict[str, Any] | None:
    """The last bake's result if nothing it was made from has changed, else None."""
    try:
        config_bytes = config_path.read_bytes()
        data = json.loads(_path(home, _key(config_path, config_bytes, environment)).read_bytes())
        excludes = [str(p) for p in data["excludes"]]
        interpreter: dict[str, Any] = data["interpreter"]
        result: dict[str, Any] = data["result"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if _interpreter(interpreter) != interpreter.get("python"):
        return None
    root = config_path.parent
    try:
        spec = load_spec(root, [*excludes, f"/{config_path.name}"])
        digest, _ = _tree_digest(root, walk(root, spec))
    except Exception:  # anything odd in the tree: the full bake explains it properly
        return None
    if digest != data.get("tree") or not _whole(home, str(result.get("digest", ""))):
        return None
    return result


def _interpreter(how: dict[str, Any]) -> str | None:
    """The interpreter the bake would record now (kiln.image.bake.interpreter's rule)."""
    import shutil

    from kiln.runenv import python_on

    path = str(how.get("path", ""))
    wanted = how.get("wanted")
    if wanted is None:
        return python_on(path) or ""
    return str(wanted) if shutil.which(str(wanted), path=path) else None


def _whole(home: Home, digest: str) -> bool:
    """The image is still in the store and none of its objects was found corrupt."""
    from kiln.image.store import Store

    manifest = Store.manifest_path(home, digest)
    return manifest is not None and manifest.exists() and not Store(home).quarantined(digest)
