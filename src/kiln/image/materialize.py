"""Write an image's tree into a new directory, and nowhere else.

The manifest is checked first (kiln.image.tree); then every file, directory and
link is created relative to an open directory fd with O_NOFOLLOW and
O_EXCL, so even a link that appeared in the directory meanwhile cannot
redirect a write outside it. Runs of zero bytes are skipped with a seek, so
a sparse file stays sparse in every instance.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from kiln.errors import CorruptObject, UnsafeImage
from kiln.image.objects import write_sparse
from kiln.image.tree import UnsafeTree, check_tree

if TYPE_CHECKING:
    from kiln.image.store import FileEntry, Manifest

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_DIRS_MAX = 128


def check_manifest(image: str, manifest: Manifest) -> None:
    """Refuse an image whose tree could reach outside the directory it is written to.

    Modes are only ever 0644 or 0755 (the bake keeps the executable bit alone):
    anything else, setuid above all, did not come from a bake.
    """
    try:
        for f in manifest.files:
            if f.mode not in (0o644, 0o755):
                raise UnsafeTree(f.path, f"has mode {f.mode:o}, not 644 or 755")
        check_tree(
            (f.path for f in manifest.files),
            {link.path: link.target for link in manifest.links},
            manifest.dirs,
        )
    except UnsafeTree as exc:
        raise UnsafeImage(
            f"image {image} is unsafe: {exc.path} {exc.reason}",
            hint="kiln never bakes such an image: the store was modified by hand; delete "
            "its manifest from KILN_HOME/store/images and bake the app again",
        ) from None


class Objects(Protocol):
    """Where content comes from (kiln.image.objects.ObjectStore)."""

    def read(self, sha: str) -> Iterator[bytes]: ...

    def quarantine(self, sha: str) -> None: ...


def write_tree(image: str, manifest: Manifest, dest: Path, objects: Objects) -> None:
    """Create ``dest`` (which must not exist) holding the image's tree, verified."""
    check_manifest(image, manifest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.mkdir(0o755)
    try:
        with _Dirs(dest) as dirs:
            for d in manifest.dirs:
                os.close(dirs.open(d.split("/"), create=True, cache=False))
            for entry in manifest.files:
                parent, name = _split(entry.path)
                _write_file(dirs.open(parent, create=True), name, entry, objects)
            for link in manifest.links:
                parent, name = _split(link.path)
                os.symlink(link.target, name, dir_fd=dirs.open(parent, create=True))
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def _split(path: str) -> tuple[list[str], str]:
    *parent, name = path.split("/")
    return parent, name


def _write_file(parent_fd: int, name: str, entry: FileEntry, objects: Objects) -> None:
    fd = os.open(name, _NEW_FILE, 0o600, dir_fd=parent_fd)
    try:
        h = hashlib.sha256()
        size = 0
        try:
            for chunk in objects.read(entry.sha256):
                h.update(chunk)
                write_sparse(fd, chunk)
                size += len(chunk)
        except CorruptObject as exc:
            raise CorruptObject(
                f"{entry.path}: {exc.message}",
                hint="bake the app again to restore it, or see 'kiln image verify --repair'",
            ) from exc
        os.ftruncate(fd, size)  # a file that ends in a hole still has its length
        if h.hexdigest() != entry.sha256:
            objects.quarantine(entry.sha256)  # so that the next bake stores it again
            raise CorruptObject(
                f"{entry.path}: stored object {entry.sha256[:12]} is corrupted",
                hint="bake the app again to restore it, or see 'kiln image verify --repair'",
            )
        os.fchmod(fd, entry.mode)
    finally:
        os.close(fd)


class _Dirs:
    """Directory fds below a root, opened one component at a time, never through a link."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fds: dict[tuple[str, ...], int] = {}

    def __enter__(self) -> _Dirs:
        self.fds[()] = os.open(self.root, _DIR)
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    def open(self, parts: list[str], *, create: bool, cache: bool = True) -> int:
        """An fd of the directory ``parts`` below the root (owned by the cache if cached)."""
        key = tuple(parts)
        if key in self.fds:
            return self.fds[key] if cache else os.dup(self.fds[key])
        fd = os.dup(self.fds[()])
        try:
            for name in parts:
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(name, 0o755, dir_fd=fd)
                child = os.open(name, _DIR, dir_fd=fd)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        if not cache:
            return fd
        if len(self.fds) > _OPEN_DIRS_MAX:
            for k in [k for k in self.fds if k]:
                os.close(self.fds.pop(k))
        self.fds[key] = fd
        return fd
