"""Content-addressed object storage: loose files for big content, packs for small.

Creating a file costs far more than writing a few KB on many filesystems, so
an app of thousands of small files would spend most of its bake creating
inodes. Like git, small objects written during one bake go into a single
pack (raw bytes back to back) plus an index of sha256 -> offset, length.

    objects/ab/cdef...      loose object (>= PACK_MAX bytes), mode 0444
    packs/pack-<id>.pack    concatenated objects, mode 0444
    packs/pack-<id>.idx     sorted (sha256, offset, length) records; written
                            last, so a pack without one does not exist
    corrupt/<sha>           an object found not to match its name: it counts
                            as missing (a loose copy is deleted), so the next
                            bake of that content stores it again, loose

Every object is immutable once written and re-hashed whenever it is read
for use (materialize, verify), and whenever a bake reads content that is
already stored: a damaged copy is replaced, never trusted.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kiln.errors import CorruptObject

CHUNK = 1 << 20
BLOCK = 1 << 16  # holes are made at this granularity
_ZERO = bytes(BLOCK)
PACK_MAX = 1 << 20  # objects smaller than this are packed
_RECORD = struct.Struct(">32sQQ")
_COUNTER = itertools.count()


@dataclass(frozen=True, slots=True)
class Packed:
    pack: Path
    offset: int
    length: int


class ObjectStore:
    def __init__(self, root: Path, tmp: Path) -> None:
        self.loose = root / "objects"
        self.packs = root / "packs"
        self.corrupt_dir = root / "corrupt"
        self.tmp = tmp
        for d in (self.loose, self.packs):
            d.mkdir(parents=True, exist_ok=True)
        self._packed: dict[str, Packed] = {}
        self._known_idx: set[str] = set()
        self._fanout: set[str] = set()
        self._writer: _PackWriter | None = None
        self._lock = threading.Lock()
        self._loaded = False
        self.corrupt: set[str] = set()

    # lookup ----------------------------------------------------------------

    def refresh(self) -> None:
        """Load indexes of packs written since we last looked (other bakes)."""
        self._loaded = True
        self.refresh_corrupt()
        for idx in self.packs.glob("pack-*.idx"):
            if idx.name in self._known_idx:
                continue
            pack = idx.with_suffix(".pack")
            raw = idx.read_bytes()
            for sha, offset, length in _RECORD.iter_unpack(raw):
                self._packed.setdefault(sha.hex(), Packed(pack, offset, length))
            self._known_idx.add(idx.name)

    def loose_path(self, sha: str) -> Path:
        return self.loose / sha[:2] / sha[2:]

    def refresh_corrupt(self) -> set[str]:
        """Re-read which objects are quarantined (other processes find and repair them)."""
        try:
            self.corrupt = {p.name for p in self.corrupt_dir.iterdir()}
        except FileNotFoundError:
            self.corrupt = set()
        return self.corrupt

    def quarantine(self, sha: str) -> None:
        """Mark an object found corrupt: it counts as missing until stored again."""
        self.corrupt_dir.mkdir(exist_ok=True)
        (self.corrupt_dir / sha).touch()
        self.loose_path(sha).unlink(missing_ok=True)
        with self._lock:
            self.corrupt.add(sha)

    def _restored(self, sha: str) -> None:
        (self.corrupt_dir / sha).unlink(missing_ok=True)
        with self._lock:
            self.corrupt.discard(sha)

    def has(self, sha: str) -> bool:
        if not self._loaded:
            self.refresh()
        if sha in self.corrupt:
            return False
        if sha in self._packed or self.loose_path(sha).exists():
            return True
        writer = self._writer
        return writer is not None and sha in writer.index

    def locate(self, sha: str) -> Path | Packed | None:
        loose = self.loose_path(sha)
        if loose.exists():
            return loose
        if sha not in self._packed:
            self._reload()  # written by another process since we read the indexes
        return self._packed.get(sha)

    def _reload(self) -> None:
        self._packed.clear()
        self._known_idx.clear()
        self.refresh()

    def size(self, sha: str) -> int:
        writer = self._writer
        if writer is not None and sha in writer.index:
            return writer.index[sha][1]
        where = self.locate(sha)
        if where is None:
            raise CorruptObject(f"object {sha[:12]} is missing from the store")
        return where.length if isinstance(where, Packed) else where.stat().st_size

    def read(self, sha: str) -> Iterator[bytes]:
        """Stream an object's bytes; raises CorruptObject when it is missing."""
        where = self.locate(sha)
        if where is None:
            found = "was found corrupted" if sha in self.corrupt else "is missing from the store"
            raise CorruptObject(f"object {sha[:12]} {found}")
        if isinstance(where, Path):
            with where.open("rb") as f:
                while chunk := f.read(CHUNK):
                    yield chunk
            return
        try:
            f = where.pack.open("rb")
        except FileNotFoundError:
            # repacked away by a collection since we read the indexes (a
            # long-lived reader such as the agent): read them again, once
            self._reload()
            where = self._packed.get(sha)
            if where is None:
                raise CorruptObject(f"object {sha[:12]} is missing from the store") from None
            f = where.pack.open("rb")
        with f:
            f.seek(where.offset)
            left = where.length
            while left:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    raise CorruptObject(f"pack {where.pack.name} is truncated")
                left -= len(chunk)
                yield chunk

    def intact(self, sha: str) -> bool:
        """Re-hash an object: does its content still match its name?"""
        h = hashlib.sha256()
        try:
            for chunk in self.read(sha):
                h.update(chunk)
        except (CorruptObject, OSError):
            return False
        return h.hexdigest() == sha

    def checked(self, sha: str) -> bool:
        """Like intact, but an object that is not is quarantined on the spot.

        Only evidence quarantines: content that hashes wrong, a truncated pack,
        an I/O error. Any other OSError (EMFILE, say) says nothing about the
        object and is raised.
        """
        h = hashlib.sha256()
        try:
            for chunk in self.read(sha):
                h.update(chunk)
            ok = h.hexdigest() == sha
        except CorruptObject:
            ok = False
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            ok = False
        if not ok:
            self.quarantine(sha)
        return ok

    def all(self) -> set[str]:
        self.refresh()
        loose = {p.parent.name + p.name for p in self.loose.glob("??/*")}
        return loose | set(self._packed)

    # writing ---------------------------------------------------------------

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Small objects put inside go into one pack, published on exit."""
        writer = _PackWriter(self.tmp / f"pack-{os.getpid()}-{next(_COUNTER)}.tmp")
        self._writer = writer
        try:
            yield
            published = writer.publish(self.packs)
        except BaseException:
            writer.discard()
            raise
        finally:
            self._writer = None
        if published is not None:
            self.refresh()

    def put_file(self, source: Path, expected: str | None = None) -> tuple[str, int]:
        """Store a file's content in one read; returns (sha256, size).

        When ``expected`` is given and already stored, nothing is read.
        """
        if expected is not None and self.has(expected):
            return expected, self.size(expected)
        fd = os.open(source, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            if size < PACK_MAX:
                data = _read_all(fd)
                sha = hashlib.sha256(data).hexdigest()
                self._put_small(sha, data)
                return sha, len(data)
            return self._put_stream(fd)
        finally:
            os.close(fd)

    def _put_small(self, sha: str, data: bytes) -> None:
        writer = self._writer
        if writer is not None and sha in writer.index:
            return
        if self.has(sha) and self.checked(sha):
            return
        if writer is not None and sha not in self.corrupt:
            with self._lock:
                writer.add(sha, data)
            return
        # a loose copy is found before any packed one: it also repairs a damaged pack
        tmp = self._tmp_name()
        _write_file(tmp, [data])
        self._commit_loose(tmp, sha)

    def _put_stream(self, fd: int) -> tuple[str, int]:
        h = hashlib.sha256()
        size = 0
        tmp = self._tmp_name()
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        try:
            try:
                while chunk := os.read(fd, CHUNK):
                    h.update(chunk)
                    write_sparse(out, chunk)  # a sparse source stays sparse in the store
                    size += len(chunk)
                os.ftruncate(out, size)
            finally:
                os.close(out)
            self._commit_loose(tmp, h.hexdigest())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return h.hexdigest(), size

    def _tmp_name(self) -> Path:
        return self.tmp / f"obj-{os.getpid()}-{next(_COUNTER)}"

    def _commit_loose(self, tmp: Path, sha: str) -> None:
        target = self.loose_path(sha)
        if target.exists() and self.checked(sha):
            tmp.unlink()
            return
        if sha[:2] not in self._fanout:
            target.parent.mkdir(exist_ok=True)
            self._fanout.add(sha[:2])
        tmp.replace(target)
        if sha in self.corrupt:
            self._restored(sha)

    # garbage collection -----------------------------------------------------

    def delete(self, dead: set[str]) -> int:
        """Remove unreferenced objects, repacking packs that hold any; bytes freed.

        Call only while holding the store's exclusive collection lock.
        """
        freed = 0
        for sha in dead:
            path = self.loose_path(sha)
            if path.exists():
                freed += path.stat().st_size
                path.unlink()
            (self.corrupt_dir / sha).unlink(missing_ok=True)
        self.refresh()
        by_pack: dict[Path, list[str]] = {}
        for sha, where in self._packed.items():
            by_pack.setdefault(where.pack, []).append(sha)
        for pack, shas in by_pack.items():
            dropped = [s for s in shas if s in dead]
            if not dropped:
                continue
            freed += sum(self._packed[s].length for s in dropped)
            keep = [s for s in shas if s not in dead]
            if keep:
                with self.batch():
                    writer = self._writer
                    assert writer is not None
                    for sha in keep:
                        writer.add(sha, b"".join(self.read(sha)))
            pack.with_suffix(".idx").unlink(missing_ok=True)
            pack.unlink(missing_ok=True)
        self._reload()
        return freed


class _PackWriter:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.fd: int | None = None
        self.offset = 0
        self.index: dict[str, tuple[int, int]] = {}

    def add(self, sha: str, data: bytes) -> None:
        if sha in self.index:
            return
        if self.fd is None:
            self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        _write_all(self.fd, data)
        self.index[sha] = (self.offset, len(data))
        self.offset += len(data)

    def publish(self, packs: Path) -> Path | None:
        if self.fd is None:
            return None
        os.close(self.fd)
        self.fd = None
        records = b"".join(
            _RECORD.pack(bytes.fromhex(sha), off, length)
            for sha, (off, length) in sorted(self.index.items())
        )
        name = "pack-" + hashlib.sha256(records).hexdigest()[:40]
        pack = packs / f"{name}.pack"
        self.tmp.replace(pack)
        idx_tmp = self.tmp.with_suffix(".idx")
        _write_file(idx_tmp, [records])
        idx_tmp.replace(packs / f"{name}.idx")
        return pack

    def discard(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.tmp.unlink(missing_ok=True)


def _read_all(fd: int) -> bytes:
    parts = []
    while chunk := os.read(fd, CHUNK):
        parts.append(chunk)
    return b"".join(parts)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_sparse(fd: int, chunk: bytes) -> None:
    """Write ``chunk`` at the file position, seeking over all-zero blocks.

    The caller truncates the file to its length at the end, since a file
    that ends in a hole has no bytes written there. (bytes compare with
    memcmp; memoryviews element by element, a hundred times slower.)
    """
    view = memoryview(chunk)
    start = 0  # first byte not yet written or skipped
    for offset in range(0, len(chunk), BLOCK):
        end = min(offset + BLOCK, len(chunk))
        if chunk[offset] or chunk[end - 1] or chunk[offset:end] != _ZERO[: end - offset]:
            continue
        _write_all(fd, view[start:offset])
        os.lseek(fd, end - offset, os.SEEK_CUR)
        start = end
    _write_all(fd, view[start:])


def _write_file(path: Path, chunks: list[bytes]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
    try:
        for chunk in chunks:
            _write_all(fd, chunk)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)
