"""Instance directories from a per-image tree: verify once, then link.

Materializing an image re-hashes every object and writes every file; for a
framework app of thousands of files that is seconds per instance, most of it
creating inodes. The agent materializes (and so verifies) each image once,
into a read-only tree under ``KILN_HOME/agent/trees/<image>``, and gives each
instance a private directory whose files are hard links into that tree:

- directories are the instance's own (it may create files, ``__pycache__``);
- files are shared inodes, made read-only (0444, or 0555 when executable) and
  owned by the agent: an isolated instance (its own uid) can read them but can
  neither write them nor change their mode, so it cannot reach another
  instance through them. An instance running as the agent's own user could
  still chmod one; ``kiln drift`` then sees it (its size, content or mode);
- before a tree is reused, every file is ``stat``-ed against what was recorded
  when it was verified (size, mtime, mode, inode): a tree that changed is
  thrown away and materialized again.

When linking is impossible (another filesystem, a link limit) the file is
copied instead. Everything here is file-tree work: call it from a thread.
"""

# thousands of files per call: plain str paths and os calls, no Path object per file
# ruff: noqa: PTH101, PTH102, PTH211

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import stat
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from kiln.errors import UnsafeImage
from kiln.image.store import Manifest, Store

log = logging.getLogger("kiln.agent")
Stamp = dict[str, list[int]]


class ImageTrees:
    """The agent's verified, read-only trees, one per image, shared by hard links."""

    def __init__(self, store: Store, root: Path) -> None:
        self.store = store
        self.root = root
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.last_used: dict[str, float] = {}

    def tree(self, image: str) -> Path:
        return self.root / image

    def _stamp_path(self, image: str) -> Path:
        return self.root / f"{image}.stamp.json"

    def _lock(self, image: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(image, threading.Lock())

    def materialize(self, image: str, dest: Path, *, share: bool = True) -> Manifest:
        """``dest`` (new) as a private copy of the image, from its verified tree.

        ``share``: files are hard links into the tree. Only when the instance
        cannot write them: an instance running as root ignores file modes, so
        it gets copies (still without re-verifying every object).
        """
        manifest = self.store.get(image).manifest
        with self._lock(image):
            self.last_used[image] = time.time()
            if not self._intact(image):
                self._build(image)
            links = {link.path: link.target for link in manifest.links}
            link_tree(self.tree(image), dest, links, link=share)
        return manifest

    def _intact(self, image: str) -> bool:
        try:
            recorded: Stamp = json.loads(self._stamp_path(image).read_bytes())
        except (OSError, ValueError):
            return False
        found = stamp(self.tree(image))
        if found != recorded:
            changed = sorted(
                k for k in found.keys() | recorded.keys() if found.get(k) != recorded.get(k)
            )
            log.warning("tree of %s changed (%s); materializing it again", image, changed[0])
            return False
        return True

    def _build(self, image: str) -> None:
        """Materialize (verifying every object), make it read-only, record its stamp."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)  # nobody else passes: instances see their own links only
        self.discard(image)
        scratch = self.root / f".{image}.{os.getpid()}.{threading.get_ident()}"
        shutil.rmtree(scratch, ignore_errors=True)
        try:
            self.store.materialize(image, scratch)
            _read_only(scratch)
            recorded = stamp(scratch)
            scratch.rename(self.tree(image))
        except BaseException:
            _remove(scratch)
            raise
        stamp_file = self._stamp_path(image)
        stamp_file.write_text(json.dumps(recorded, separators=(",", ":")))

    def discard(self, image: str) -> None:
        self._stamp_path(image).unlink(missing_ok=True)
        _remove(self.tree(image))

    def prune(self, keep: set[str], idle_for: float) -> list[str]:
        """Remove trees of images not in ``keep`` and unused for ``idle_for`` seconds."""
        removed = []
        now = time.time()
        for entry in self.root.iterdir() if self.root.exists() else ():
            image = entry.name
            if not entry.is_dir() or image.startswith(".") or image in keep:
                continue
            used = self.last_used.setdefault(image, now)  # unknown (restart): from now
            if now - used < idle_for:
                continue
            with self._lock(image):
                self.discard(image)
            self.last_used.pop(image, None)
            removed.append(image)
        return removed


def stamp(root: Path) -> Stamp:
    """What must not change in a shared tree: (size, mtime, mode, inode) of each file.

    Symlinks too (size -1): one added or replaced (a new inode) means the
    tree is not the image's any more.
    """
    out: Stamp = {}
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        with os.scandir(root / rel_dir if rel_dir else root) as entries:
            for entry in entries:
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    stack.append(rel)
                elif stat.S_ISREG(st.st_mode):
                    out[rel] = [st.st_size, st.st_mtime_ns, st.st_mode, st.st_ino]
                elif stat.S_ISLNK(st.st_mode):
                    out[rel] = [-1, st.st_mtime_ns, st.st_mode, st.st_ino]
    return out


def _read_only(root: Path) -> None:
    """Files lose their write bits; directories stay the agent's."""
    for entry in _walk(str(root)):
        if entry.is_file(follow_symlinks=False):
            os.chmod(entry.path, stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode) & 0o555)


def _walk(top: str) -> Iterator[os.DirEntry[str]]:
    """Every entry under ``top``, depth first, never following a symlink."""
    with os.scandir(top) as entries:
        for entry in entries:
            yield entry
            if entry.is_dir(follow_symlinks=False):
                yield from _walk(entry.path)


def link_tree(source: Path, dest: Path, links: Mapping[str, str], *, link: bool = True) -> None:
    """A new directory ``dest`` mirroring ``source``: own dirs, files linked (or copied).

    ``links``: the image's symlinks (path -> target), checked when the
    manifest was read. Symlinks are made from them, never from what the tree
    holds (regenerated, not forwarded); one the image does not have is refused.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.mkdir(0o755)
    try:
        _link_dir(str(source), str(dest), link, links, "")
    except BaseException:
        _remove(dest)
        raise


def _link_dir(source: str, dest: str, link: bool, links: Mapping[str, str], rel_dir: str) -> None:
    with os.scandir(source) as entries:
        for entry in entries:
            target = f"{dest}/{entry.name}"
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            if entry.is_symlink():
                if rel in links:
                    os.symlink(links[rel], target)
                else:
                    raise UnsafeImage(
                        f"{rel} in the agent's tree of this image is a symlink the image "
                        "does not have",
                        hint="the tree was changed by hand; launch again to rebuild it",
                    )
            elif entry.is_dir(follow_symlinks=False):
                os.mkdir(target, 0o755)
                _link_dir(entry.path, target, link, links, rel)
            elif not link:
                _copy(entry.path, target)
            else:
                try:
                    os.link(entry.path, target, follow_symlinks=False)
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.EMLINK, errno.EPERM):
                        raise
                    _copy(entry.path, target)


def _copy(source: str, target: str) -> None:
    """A private copy, writable by its owner as the image's mode says (0644 / 0755)."""
    shutil.copy2(source, target, follow_symlinks=False)
    os.chmod(target, stat.S_IMODE(os.lstat(target).st_mode) | 0o200)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)
