"""The local image store: content-addressed objects and image manifests.

Layout under ``KILN_HOME/store``::

    objects/, packs/      content by sha256 (see kiln.image.objects), read-only
    images/<hex>.json     canonical manifest; its sha256 is the image digest
    meta/<hex>.json       when/where it was baked: not part of its identity
    gc.lock               bakes hold it shared, garbage collection exclusive

An image exists once its manifest exists, and the manifest is written last,
so an interrupted bake leaves at most unreferenced objects, never an image.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

from kiln.errors import CorruptObject, ImageNotFound, StoreError
from kiln.home import Home
from kiln.image.materialize import check_manifest, write_tree
from kiln.image.objects import ObjectStore
from kiln.pids import pid_alive

FORMAT = 1
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class FileEntry:
    path: str
    mode: int
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class LinkEntry:
    path: str
    target: str


@dataclass(frozen=True)
class Manifest:
    """Everything that makes an image what it is, and nothing else."""

    app: str
    run: str
    env: dict[str, str]
    python: str
    files: tuple[FileEntry, ...]
    links: tuple[LinkEntry, ...] = ()
    dirs: tuple[str, ...] = ()
    release: str = ""  # run once per deployment; '' (and absent from older images): none

    def canonical(self) -> bytes:
        doc = self._code_doc()
        doc["env"] = dict(sorted(self.env.items()))
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    def code_canonical(self) -> bytes:
        """The image minus its env layer: what ran in staging is what runs in production."""
        doc = self._code_doc()
        doc["layer"] = "code"  # never equal to a whole manifest's bytes
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    def _code_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "format": FORMAT,
            "app": self.app,
            "run": self.run,
            "python": self.python,
            "files": [[f.path, f.mode, f.size, f.sha256] for f in self.files],
            "links": [[link.path, link.target] for link in self.links],
            "dirs": list(self.dirs),
        }
        if self.release:  # only when set: images without one keep their digests
            doc["release"] = self.release
        return doc

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.canonical()).hexdigest()

    @property
    def code_digest(self) -> str:
        """sha256 of everything but [env]: the source tree, the build output, how it runs.

        Two images that differ only in their env layer (staging's and production's
        [env]) have the same code digest. Derived, never stored: a manifest cannot
        claim a code digest its files do not have.
        """
        return "sha256:" + hashlib.sha256(self.code_canonical()).hexdigest()

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @classmethod
    def parse(cls, raw: bytes) -> Manifest:
        """Parse strictly: a manifest is untrusted input, so every field has its exact type."""
        try:
            doc = json.loads(raw)
            if doc.get("format") != FORMAT:
                raise StoreError(f"image manifest format {doc.get('format')} is not supported")
            return cls(
                app=_typed(doc["app"], str),
                run=_typed(doc["run"], str),
                env={_typed(k, str): _typed(v, str) for k, v in _typed(doc["env"], dict).items()},
                python=_typed(doc["python"], str),
                files=tuple(_file_entry(f) for f in _typed(doc["files"], list)),
                links=tuple(
                    LinkEntry(*(_typed(x, str) for x in _fields(link, 2)))
                    for link in _typed(doc["links"], list)
                ),
                dirs=tuple(_typed(d, str) for d in _typed(doc["dirs"], list)),
                release=_typed(doc.get("release", ""), str),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CorruptObject(
                f"image manifest is malformed: {exc}",
                hint="the store was modified by hand; delete that manifest and bake again",
            ) from None


def _typed(value: Any, kind: type[_T]) -> _T:
    if type(value) is not kind:
        raise TypeError(f"expected {kind.__name__}, got {value!r:.60}")
    return value


def _fields(value: object, n: int) -> list[object]:
    items = _typed(value, list)
    if len(items) != n:
        raise ValueError(f"expected {n} fields, got {items!r:.80}")
    return items


def _file_entry(value: object) -> FileEntry:
    path, mode, size, sha = _fields(value, 4)
    digest = _typed(sha, str)
    if len(digest) != 64 or digest.strip("0123456789abcdef"):
        raise ValueError(f"{digest!r:.80} is not a sha256")
    if _typed(size, int) < 0:
        raise ValueError(f"negative size {size}")
    return FileEntry(_typed(path, str), _typed(mode, int), _typed(size, int), digest)


def short_id(digest: str) -> str:
    return "img-" + digest.removeprefix("sha256:")[:12]


def short_code(digest: str) -> str:
    """A code digest as people read it: 'code-' and 12 hex digits."""
    return "code-" + digest.removeprefix("sha256:")[:12]


@dataclass(frozen=True)
class ImageRecord:
    digest: str
    manifest: Manifest
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return short_id(self.digest)

    @property
    def app(self) -> str:
        return self.manifest.app

    @property
    def created(self) -> float:
        return float(self.meta.get("created", 0.0))

    def summary(self) -> dict[str, Any]:
        """The JSON shape `kiln images --json` and `kiln image show` print."""
        return {
            "image": self.id,
            "digest": self.digest,
            "code": short_code(self.manifest.code_digest),
            "code_digest": self.manifest.code_digest,
            "app": self.app,
            "created": self.created,
            "files": len(self.manifest.files),
            "bytes": self.manifest.size,
            "commit": self.meta.get("commit"),
            "dirty": self.meta.get("dirty"),
            "bake_seconds": self.meta.get("seconds"),
            "python": self.manifest.python,
            "release": self.manifest.release or None,
        }


def file_sha256(path: Path) -> str:
    """Streaming hash: memory stays flat whatever the file size."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class Store:
    def __init__(self, home: Home) -> None:
        self.home = home
        self.root = home.store
        self.images = self.root / "images"
        self.meta = self.root / "meta"
        for d in (self.images, self.meta):
            d.mkdir(parents=True, exist_ok=True)
        self.objects = ObjectStore(self.root, home.tmp)

    # objects -----------------------------------------------------------

    def has_object(self, sha256: str) -> bool:
        return self.objects.has(sha256)

    def put_file(self, source: Path, expected: str | None = None) -> tuple[str, int]:
        return self.objects.put_file(source, expected)

    # images ------------------------------------------------------------

    def add_image(self, manifest: Manifest, meta: dict[str, Any]) -> ImageRecord:
        """Record an image whose objects are all stored; idempotent."""
        check_manifest(short_id(manifest.digest), manifest)
        missing = [f.path for f in manifest.files if not self.has_object(f.sha256)]
        if missing:
            raise StoreError(f"cannot record image: {len(missing)} objects missing ({missing[0]})")
        canonical = manifest.canonical()
        hexd = hashlib.sha256(canonical).hexdigest()
        meta_path = self.meta / f"{hexd}.json"
        if meta_path.exists():  # the same content baked before: keep its first record
            meta = json.loads(meta_path.read_bytes())
        else:
            _atomic_write(meta_path, json.dumps(meta, sort_keys=True).encode(), self.home.tmp)
        manifest_path = self.images / f"{hexd}.json"
        if not manifest_path.exists():
            _atomic_write(manifest_path, canonical, self.home.tmp)
        return ImageRecord(digest="sha256:" + hexd, manifest=manifest, meta=meta)

    @staticmethod
    def manifest_path(home: Home, digest: str) -> Path | None:
        """Where an image's manifest lives, without opening the store."""
        hexd = digest.removeprefix("sha256:")
        if len(hexd) != 64:
            return None
        return home.store / "images" / f"{hexd}.json"

    def get(self, ref: str) -> ImageRecord:
        """Look an image up by 'img-<12hex>', 'sha256:<hex>' or a unique hex prefix."""
        prefix = ref.removeprefix("img-").removeprefix("sha256:").lower()
        if not prefix or any(c not in "0123456789abcdef" for c in prefix):
            raise ImageNotFound(
                f"{ref!r} is not an image id", hint="image ids look like img-3f2a9c1d0b7e"
            )
        matches = sorted(p for p in self.images.glob(f"{prefix}*.json"))
        if not matches:
            raise ImageNotFound(f"no image {ref} in {self.root}", hint="see 'kiln images'")
        if len(matches) > 1:
            raise ImageNotFound(f"{ref} is ambiguous: {len(matches)} images match")
        return self._load(matches[0])

    def remove_image(self, digest: str) -> None:
        """Forget an image (its objects go at the next collection)."""
        hexd = digest.removeprefix("sha256:")
        (self.images / f"{hexd}.json").unlink(missing_ok=True)
        (self.meta / f"{hexd}.json").unlink(missing_ok=True)

    def exists(self, ref: str) -> bool:
        try:
            self.get(ref)
        except ImageNotFound:
            return False
        return True

    def _load(self, manifest_path: Path) -> ImageRecord:
        hexd = manifest_path.stem
        raw = manifest_path.read_bytes()
        if hashlib.sha256(raw).hexdigest() != hexd:
            raise CorruptObject(
                f"image manifest {manifest_path} does not match its digest",
                hint="the store was modified by hand; delete that file and bake again",
            )
        try:
            manifest = Manifest.parse(raw)
        except CorruptObject as exc:
            raise CorruptObject(f"{manifest_path}: {exc.message}", hint=exc.hint) from None
        meta_path = self.meta / f"{hexd}.json"
        meta = json.loads(meta_path.read_bytes()) if meta_path.exists() else {}
        return ImageRecord(digest="sha256:" + hexd, manifest=manifest, meta=meta)

    def list_images(self, app: str | None = None) -> list[ImageRecord]:
        """Images, newest first."""
        records = [self._load(p) for p in self.images.glob("*.json")]
        if app is not None:
            records = [r for r in records if r.app == app]
        return sorted(records, key=lambda r: r.created, reverse=True)

    # reading images back -----------------------------------------------

    def verify(self, ref: str) -> list[str]:
        """Re-hash every object of an image; the paths whose content is wrong.

        A wrong object is quarantined: it counts as missing from then on, so
        the next bake of its content stores it again.
        """
        record = self.get(ref)
        check_manifest(record.id, record.manifest)
        bad: list[str] = []
        checked: dict[str, bool] = {}
        with self.writing():  # a collection must not repack under the reads
            for entry in record.manifest.files:
                if entry.sha256 not in checked:
                    checked[entry.sha256] = self.objects.checked(entry.sha256)
                if not checked[entry.sha256]:
                    bad.append(entry.path)
        return bad

    def quarantined(self, ref: str) -> list[str]:
        """Paths of an image whose objects were found corrupt and not stored again since.

        One directory listing when nothing is quarantined (the usual case).
        """
        corrupt = self.objects.refresh_corrupt()
        if not corrupt:
            return []
        return [f.path for f in self.get(ref).manifest.files if f.sha256 in corrupt]

    def materialize(self, ref: str, dest: Path) -> Manifest:
        """Write an image's tree into a new directory, verifying every object.

        Files are private copies, never links into the store, so nothing an
        instance does can alter the store or another instance.
        """
        with self.writing():  # a collection waits until the copy is done
            return self._materialize(ref, dest)

    def _materialize(self, ref: str, dest: Path) -> Manifest:
        record = self.get(ref)
        write_tree(record.id, record.manifest, dest, self.objects)
        return record.manifest

    def export_tar(self, ref: str, fileobj: IO[bytes]) -> Manifest:
        """A deterministic tar stream of the image (for uploads, e.g. AMI bakes)."""
        record = self.get(ref)
        manifest = record.manifest
        check_manifest(record.id, manifest)
        with tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for d in manifest.dirs:
                tar.addfile(_tarinfo(d, tarfile.DIRTYPE, 0o755))
            for entry in manifest.files:
                info = _tarinfo(entry.path, tarfile.REGTYPE, entry.mode)
                info.size = entry.size
                where = self.objects.locate(entry.sha256)
                if isinstance(where, Path):
                    with where.open("rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info, io.BytesIO(b"".join(self.objects.read(entry.sha256))))
            for link in manifest.links:
                info = _tarinfo(link.path, tarfile.SYMTYPE, 0o777)
                info.linkname = link.target
                tar.addfile(info)
        return manifest

    # locking and garbage collection ----------------------------------------

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Held (shared) by bakes and materializations: collection never races them."""
        with _flock(self.root / "gc.lock", fcntl.LOCK_SH):
            yield

    @contextmanager
    def collecting(self) -> Iterator[None]:
        """Held (exclusive) by garbage collection."""
        with _flock(self.root / "gc.lock", fcntl.LOCK_EX):
            yield


def _tarinfo(name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


@contextmanager
def _flock(path: Path, mode: int) -> Iterator[None]:
    with path.open("a") as f:
        fcntl.flock(f.fileno(), mode)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _atomic_write(path: Path, data: bytes, tmp_dir: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=tmp_dir, prefix=f"w-{os.getpid()}-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


__all__ = [
    "FileEntry",
    "ImageRecord",
    "LinkEntry",
    "Manifest",
    "Store",
    "file_sha256",
    "short_id",
]


def clean_tmp(home: Home) -> int:
    """Remove scratch left by killed bakes (named after their dead pid)."""
    removed = 0
    for entry in home.tmp.iterdir() if home.tmp.exists() else ():
        parts = entry.name.split("-")
        if len(parts) < 3 or not parts[1].isdigit() or pid_alive(int(parts[1])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            _make_writable(entry)
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed += 1
    return removed


def _make_writable(tree: Path) -> None:
    for dirpath, dirnames, _ in os.walk(tree):
        for name in dirnames:
            (Path(dirpath) / name).chmod(0o755)
