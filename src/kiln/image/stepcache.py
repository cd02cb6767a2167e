"""Build steps reused by their inputs: a code-only change must not re-run pip install.

A step declared as ``{ run, inputs, outputs }`` is keyed by its command, the
content of its inputs as the step sees them (after earlier steps), the
image's ``[env]``, the interpreter and the machine. After it runs, its
outputs go into the object store (deduplicated like any image file) and a
small record under ``KILN_HOME/cache/steps/<key>.json`` lists them. The next
bake with the same key puts the outputs back into the scratch tree instead
of running the step. A record whose objects were pruned since is a miss.

Writing thousands of files costs about as much as pip writing them, so the
output tree itself is kept too (``steps/<key>.tree/``): a bake moves it into
its scratch directory (one rename), repairs from the object store only the
files a later step changed last time (a stat walk finds them), and once the
image is stored moves it back with the state it had when checked out.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.config import BuildStep
from kiln.errors import BuildError
from kiln.home import Home
from kiln.image.ignore import walk
from kiln.image.store import Store

FORMAT = 1
KEEP_TREES = 8  # kept output trees, most recently used first; records stay (they are small)
STATE = ".kiln-state.json"  # inside a kept tree: sha and mtime of each file as restored


@dataclass(frozen=True)
class Restored:
    """What a cached step put into the tree: path -> (sha256, size, mtime_ns) of each file."""

    key: str
    outputs: tuple[str, ...]
    files: dict[str, tuple[str, int, int]]
    links: dict[str, str]


def step_key(step: BuildStep, scratch: Path, env: dict[str, str], python: str) -> str:
    """The identity of a step's result: everything it can depend on that kiln can see."""
    h = hashlib.sha256()
    head = {
        "format": FORMAT,
        "run": step.run,
        "outputs": step.outputs,
        "env": dict(sorted(env.items())),
        "python": python,
        "machine": platform.machine(),
    }
    h.update(json.dumps(head, sort_keys=True).encode())
    for pattern in step.inputs:
        matches = sorted(scratch.glob(pattern)) if pattern.strip("/") else []
        if not matches:
            h.update(f"\0missing {pattern}".encode())
        for match in matches:
            for path in sorted(_files_under(match)):
                rel = path.relative_to(scratch).as_posix()
                h.update(f"\0{rel}\0{_sha256(path)}".encode())
    return h.hexdigest()


def _files_under(path: Path) -> list[Path]:
    if path.is_dir() and not path.is_symlink():
        return [p for p in path.rglob("*") if p.is_file() and not p.is_symlink()]
    return [path] if path.is_file() else []


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _record_path(home: Home, key: str) -> Path:
    return home.root / "cache" / "steps" / f"{key}.json"


def _tree_path(home: Home, key: str) -> Path:
    return home.root / "cache" / "steps" / f"{key}.tree"


def restore(home: Home, store: Store, key: str, scratch: Path) -> Restored | None:
    """Put a cached step's outputs into ``scratch``; None on a miss (nothing written)."""
    try:
        record: dict[str, Any] = json.loads(_record_path(home, key).read_bytes())
    except (OSError, ValueError):
        return None
    if record.get("format") != FORMAT:
        return None
    files = record["files"]
    if not all(store.has_object(sha) for _path, _mode, _size, sha in files):
        return None  # pruned since: run the step again
    outputs = tuple(record["outputs"])
    links = dict(record["links"])
    for output in outputs:
        _remove(scratch / output)
    moved = _check_out(home, key, outputs, scratch, store, record)
    if moved is not None:
        return Restored(key, outputs, moved, links)
    for rel in record["dirs"]:
        (scratch / rel).mkdir(parents=True, exist_ok=True)
    restored: dict[str, tuple[str, int, int]] = {}
    made: set[Path] = set()
    for rel, mode, size, sha in files:
        target = scratch / rel
        if target.parent not in made:
            target.parent.mkdir(parents=True, exist_ok=True)
            made.add(target.parent)
        with target.open("wb") as f:
            for chunk in store.objects.read(sha):
                f.write(chunk)
        target.chmod(mode)
        restored[rel] = (sha, size, target.stat().st_mtime_ns)
    for rel, link_target in links.items():
        (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
        (scratch / rel).symlink_to(link_target)
    return Restored(key, outputs, restored, links)


def _check_out(
    home: Home,
    key: str,
    outputs: tuple[str, ...],
    scratch: Path,
    store: Store,
    record: dict[str, Any],
) -> dict[str, tuple[str, int, int]] | None:
    """Move the kept output tree into ``scratch`` and make it match the record again."""
    tree = _tree_path(home, key)
    parked = tree.with_name(f"{tree.name}.{os.getpid()}")
    try:
        tree.rename(parked)  # atomic: a concurrent bake gets the object-store path
    except OSError:
        return None
    try:
        kept = json.loads((parked / STATE).read_bytes())
        for output in outputs:
            (scratch / output).parent.mkdir(parents=True, exist_ok=True)
            (parked / output).rename(scratch / output)
    except (OSError, ValueError):
        shutil.rmtree(parked, ignore_errors=True)
        for output in outputs:
            _remove(scratch / output)
        return None
    shutil.rmtree(parked, ignore_errors=True)
    now_files, now_links = _state(scratch, outputs)
    wanted = {rel: (mode, size, sha) for rel, mode, size, sha in record["files"]}
    for rel in set(now_files) - set(wanted):
        _remove(scratch / rel)  # made by a later step last time
    for rel, target in now_links.items():
        if record_links(record).get(rel) != target:
            _remove(scratch / rel)
    result: dict[str, tuple[str, int, int]] = {}
    for rel, (mode, size, sha) in wanted.items():
        was = kept.get(rel)
        if was is not None and now_files.get(rel) == (size, was[1]) and was[0] == sha:
            result[rel] = (sha, size, was[1])
            continue
        result[rel] = _write(store, scratch / rel, mode, size, sha)  # changed or missing
    for rel, target in record_links(record).items():
        if now_links.get(rel) != target:
            (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
            (scratch / rel).symlink_to(target)
    for rel in record["dirs"]:
        (scratch / rel).mkdir(parents=True, exist_ok=True)
    return result


def record_links(record: dict[str, Any]) -> dict[str, str]:
    return dict(record["links"])


def _write(store: Store, target: Path, mode: int, size: int, sha: str) -> tuple[str, int, int]:
    _remove(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as f:
        for chunk in store.objects.read(sha):
            f.write(chunk)
    target.chmod(mode)
    return sha, size, target.stat().st_mtime_ns


def _state(
    scratch: Path, outputs: tuple[str, ...]
) -> tuple[dict[str, tuple[int, int]], dict[str, str]]:
    """(path -> (size, mtime_ns), link -> target) of the outputs as they are now."""
    files: dict[str, tuple[int, int]] = {}
    links: dict[str, str] = {}
    for output in outputs:
        root = scratch / output
        if root.is_symlink():
            links[output] = str(root.readlink())
        elif root.is_file():
            st = root.stat()
            files[output] = (st.st_size, st.st_mtime_ns)
        else:
            for e in walk(root):
                rel = f"{output}/{e.path}"
                if e.kind == "file":
                    files[rel] = (e.size, e.mtime_ns)
                elif e.kind == "link":
                    links[rel] = e.target
    return files, links


def keep(home: Home, restored: Restored, scratch: Path) -> None:
    """After the bake: move the outputs back into the cache, with the state they had."""
    tree = _tree_path(home, restored.key)
    staging = tree.with_name(f"{tree.name}.new.{os.getpid()}")
    state = {rel: [sha, mtime] for rel, (sha, _size, mtime) in restored.files.items()}
    try:
        staging.mkdir(parents=True)
        (staging / STATE).write_text(json.dumps(state))
        for output in restored.outputs:
            (staging / output).parent.mkdir(parents=True, exist_ok=True)
            (scratch / output).rename(staging / output)
        staging.rename(tree)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)  # another bake kept one first: fine
        return
    os.utime(tree)  # most recently used
    _drop_old_trees(home)


def _drop_old_trees(home: Home) -> None:
    """Keep the KEEP_TREES most recently used trees: each can be as big as a node_modules."""
    trees = []
    for path in (home.root / "cache" / "steps").glob("*.tree"):
        try:
            trees.append((path.stat().st_mtime_ns, path))
        except OSError:
            continue
    for _used, path in sorted(trees, reverse=True)[KEEP_TREES:]:
        parked = path.with_name(f"{path.name}.drop.{os.getpid()}")
        try:
            path.rename(parked)  # a bake checking it out now gets a miss, not half a tree
        except OSError:
            continue
        shutil.rmtree(parked, ignore_errors=True)


def save(home: Home, store: Store, key: str, step: BuildStep, scratch: Path) -> Restored:
    """Store what the step made; the hashes spare the image a second read of each file."""
    files: list[list[Any]] = []
    links: list[list[str]] = []
    dirs: list[str] = []
    known: dict[str, tuple[str, int, int]] = {}
    for output in step.outputs:
        root = scratch / output
        if not root.exists() and not root.is_symlink():
            raise BuildError(
                f"build step '{step.run}' did not make its output {output!r}",
                hint="fix the step's outputs (paths it creates), or the step",
            )
        if root.is_symlink() or not root.is_dir():
            entries = [(root, output)]
        else:
            dirs.append(output)
            entries = [(root / e.path, f"{output}/{e.path}") for e in walk(root)]
        for path, rel in entries:
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                links.append([rel, str(path.readlink())])
            elif stat.S_ISDIR(st.st_mode):
                dirs.append(rel)
            elif stat.S_ISREG(st.st_mode):
                sha, size = store.put_file(path)
                mode = 0o755 if st.st_mode & 0o111 else 0o644
                files.append([rel, mode, size, sha])
                known[rel] = (sha, size, st.st_mtime_ns)
    record = {"format": FORMAT, "outputs": step.outputs, "files": files, "links": links}
    record["dirs"] = dirs
    _remove(_tree_path(home, key))  # a stale kept tree of this key is not this result
    path = _record_path(home, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{key}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(path)
    return Restored(key, tuple(step.outputs), known, dict(links))


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
