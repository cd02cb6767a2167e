"""Drift: does a running instance's directory still match its image?

Cheap enough to run every minute: a baseline of (size, mtime, mode) taken
right after materializing lets unchanged files be recognised by stat alone;
only files whose stat moved are re-hashed.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pathspec

from kiln.errors import KilnError
from kiln.image.ignore import matcher
from kiln.image.store import Manifest, Store, file_sha256
from kiln.providers.protocol import FleetState

ChangeKind = Literal["modified", "added", "deleted", "mode"]

# Written by the interpreter itself at run time; never part of an image.
IMPLICITLY_WRITABLE = ("__pycache__/", "*.pyc")


@dataclass(frozen=True, order=True)
class Change:
    path: str
    kind: ChangeKind

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "kind": self.kind}


def baseline_path(instance_dir: Path) -> Path:
    """Kept beside, not inside, the instance directory: the instance cannot rewrite it."""
    return instance_dir.with_name(instance_dir.name + ".baseline.json")


def record_baseline(instance_dir: Path) -> None:
    """Snapshot stat data of a freshly materialized instance directory."""
    snapshot = {rel: _stamp(st) for rel, st in _files(instance_dir)}
    tmp = baseline_path(instance_dir).with_suffix(".tmp")
    tmp.write_text(json.dumps(snapshot, separators=(",", ":")))
    tmp.replace(baseline_path(instance_dir))


def scan(instance_dir: Path, manifest: Manifest, writable: Sequence[str] = ()) -> list[Change]:
    """Every difference between the directory and the manifest, writable paths aside."""
    spec = pathspec.GitIgnoreSpec.from_lines([*IMPLICITLY_WRITABLE, *writable])
    ignored = matcher(spec)
    try:
        baseline = json.loads(baseline_path(instance_dir).read_bytes())
    except (OSError, ValueError):
        baseline = {}
    expected = {f.path: f for f in manifest.files}
    links = {link.path: link.target for link in manifest.links}
    changes: list[Change] = []
    seen: set[str] = set()
    for rel, st in _files(instance_dir):
        if ignored(rel):
            continue
        seen.add(rel)
        if stat.S_ISLNK(st.st_mode):
            if links.get(rel) != str((instance_dir / rel).readlink()):
                changes.append(Change(rel, "added" if rel not in links else "modified"))
            continue
        entry = expected.get(rel)
        if entry is None:
            changes.append(Change(rel, "added"))
            continue
        if (0o755 if st.st_mode & 0o111 else 0o644) != entry.mode:
            changes.append(Change(rel, "mode"))
        if st.st_size != entry.size or (
            baseline.get(rel) != _stamp(st) and file_sha256(instance_dir / rel) != entry.sha256
        ):
            changes.append(Change(rel, "modified"))
    for rel in [*expected, *links]:
        if rel not in seen and not ignored(rel):
            changes.append(Change(rel, "deleted"))
    return sorted(changes)


def _stamp(st: os.stat_result) -> list[int]:
    """ctime too: a tamperer can reset mtime, not ctime."""
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _files(root: Path) -> list[tuple[str, os.stat_result]]:
    """Files and symlinks under root, with their lstat, as relative paths."""
    out: list[tuple[str, os.stat_result]] = []
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        try:
            entries = list(os.scandir(root / rel_dir if rel_dir else root))
        except OSError:
            continue
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                stack.append(rel)
            else:
                out.append((rel, st))
    return out


@dataclass(frozen=True)
class InstanceDrift:
    instance: str
    image: str
    changes: tuple[Change, ...]
    error: str | None = None  # could not be checked (directory gone, image pruned)

    @property
    def drifted(self) -> bool:
        return bool(self.changes) or self.error is not None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.instance,
            "image": self.image,
            "drifted": self.drifted,
            "changes": [c.as_dict() for c in self.changes],
            "error": self.error,
        }


def fleet_drift(
    store: Store, state: FleetState, writable: Sequence[str] = ()
) -> list[InstanceDrift]:
    """Scan every live instance of a local fleet against its image."""
    found: list[InstanceDrift] = []
    for inst in sorted(state.live(), key=lambda i: i.launched_at):
        where = inst.details.get("dir")
        if not where or not Path(where).is_dir():
            found.append(InstanceDrift(inst.id, inst.image, (), "its directory is missing"))
            continue
        try:
            manifest = store.get(inst.image).manifest
        except KilnError as exc:
            found.append(InstanceDrift(inst.id, inst.image, (), f"image unreadable: {exc}"))
            continue
        found.append(
            InstanceDrift(inst.id, inst.image, tuple(scan(Path(where), manifest, writable)))
        )
    return found
