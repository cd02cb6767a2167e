"""Repair a store whose objects were found corrupt.

A corrupt object is quarantined when it is found (kiln.image.objects): it counts as
missing, so a bake of the same content stores it again. Repair re-verifies
an image, stores what it can again from the app's directory, and names the
images that still need a bake for the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kiln.image.store import FileEntry, ImageRecord, Store, file_sha256


@dataclass(frozen=True)
class Repair:
    image: ImageRecord
    corrupted: list[str]  # paths whose stored content was wrong
    restored: list[str]  # of those, stored again from the source directory
    rebake: list[ImageRecord]  # images that still use a quarantined object


def repair(store: Store, ref: str, source: Path | None = None) -> Repair:
    """Verify an image; store its corrupt objects again from ``source`` where it has them."""
    bad = store.verify(ref)
    record = store.get(ref)
    damaged = [f for f in record.manifest.files if f.path in set(bad)]
    restored = _restore(store, source, damaged) if source is not None else []
    corrupt = store.objects.refresh_corrupt()
    rebake = [r for r in store.list_images() if any(f.sha256 in corrupt for f in r.manifest.files)]
    return Repair(record, bad, restored, rebake)


def _restore(store: Store, source: Path, damaged: list[FileEntry]) -> list[str]:
    """Only a file whose content hashes to the object's name is taken."""
    restored: list[str] = []
    for entry in damaged:
        candidate = source / entry.path
        try:
            if candidate.is_file() and file_sha256(candidate) == entry.sha256:
                store.put_file(candidate)
                restored.append(entry.path)
        except OSError:
            continue  # not there, or unreadable: it stays quarantined
    return restored
