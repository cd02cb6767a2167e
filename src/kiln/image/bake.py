"""Bake: turn an app directory into an image in the store.

Same inputs, same digest. A stat-keyed source index (like git's) means an
unchanged app is recognised without re-reading it, and a one-file change
reads and stores one file (plus a copy when there are build steps).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kiln.causes import CAUSE, CAUSE_LINES, cause_block, with_cause
from kiln.config import LoadedConfig
from kiln.errors import BuildError
from kiln.home import Home
from kiln.image import quick, stepcache
from kiln.image.ignore import SourceEntry, build_spec, load_spec, walk
from kiln.image.result import BakeProgress, BakeResult, shown_command
from kiln.image.store import (
    FileEntry,
    LinkEntry,
    Manifest,
    Store,
    clean_tmp,
    short_code,
    short_id,
)
from kiln.image.tree import UnsafeTree, check_tree
from kiln.oserrors import explain
from kiln.runenv import build_env, instance_env, python_on

WORKERS = min(8, (os.cpu_count() or 2) * 2)
RACY_NS = 100_000_000  # files touched this recently are re-hashed next time


def bake(loaded: LoadedConfig, home: Home, progress: BakeProgress | None = None) -> BakeResult:
    """Bake the app; an unreadable source path or a full disk is one line, never a traceback."""
    try:
        return _bake(loaded, home, progress)
    except OSError as exc:
        explained = explain(exc, source=loaded.root)
        if explained is None:
            raise
        raise explained from exc


def _bake(loaded: LoadedConfig, home: Home, progress: BakeProgress | None) -> BakeResult:
    progress = progress or BakeProgress()
    started = time.monotonic()
    app = loaded.config.app
    root = loaded.root
    store = Store(home)
    clean_tmp(home)
    with store.writing():
        spec = load_spec(root, [*app.exclude, f"/{loaded.path.name}"])
        entries = list(walk(root, spec))
        if not any(e.kind == "file" for e in entries):
            raise BuildError(
                f"no source files in {root}", hint="check [app] exclude and .kilnignore"
            )
        index = SourceIndex(home, app.name)
        with store.objects.batch():
            hashes = index.ingest(store, root, entries, progress)
            key = _cache_key(loaded, entries, hashes)
            cached = _cache_get(home, key)
            if cached is not None and store.quarantined(cached["digest"]):
                cached = None  # found corrupt since: store its objects again
            if cached is not None:
                manifest = None
            elif app.build:
                manifest = _bake_with_build(loaded, home, store, entries, hashes, progress)
            else:
                _restore_missing(store, root, entries, hashes)
                manifest = _manifest_of(loaded, root, entries, hashes)
        index.save()
        if manifest is None:
            assert cached is not None
            seconds = round(time.monotonic() - started, 3)
            if cached.get("code") is None:  # cached before code digests existed
                cached["code"] = short_code(store.get(cached["digest"]).manifest.code_digest)
            reused = BakeResult(**{**cached, "reused": True, "seconds": seconds})
            _remember(loaded, home, entries, reused)
            return reused
        commit, dirty = git_state(root)
        meta = {
            "created": time.time(),
            "commit": commit,
            "dirty": dirty,
            "seconds": round(time.monotonic() - started, 3),
            "source": str(root),
        }
        record = store.add_image(manifest, meta)
        result = _result(record.digest, manifest, False, started, record.meta)
        _cache_put(home, key, result)
    _remember(loaded, home, entries, result)
    return result


def _remember(
    loaded: LoadedConfig, home: Home, entries: list[SourceEntry], result: BakeResult
) -> None:
    """Let the next ``kiln bake`` recognise this app unchanged without reading its config."""
    how = {
        "wanted": loaded.config.app.python,
        "path": instance_env(loaded.config.env)["PATH"],
        "python": interpreter(loaded),
    }
    quick.record(
        home,
        loaded.path,
        loaded.config.environment,
        list(loaded.config.app.exclude),
        how,
        entries,
        result.as_dict(),
    )


def _result(
    digest: str, manifest: Manifest, reused: bool, started: float, meta: dict[str, Any]
) -> BakeResult:
    return BakeResult(
        image=short_id(digest),
        digest=digest,
        app=manifest.app,
        files=len(manifest.files),
        bytes=manifest.size,
        reused=reused,
        seconds=round(time.monotonic() - started, 3),
        commit=meta.get("commit"),
        dirty=meta.get("dirty"),
        code=short_code(manifest.code_digest),
    )


def _manifest(
    loaded: LoadedConfig, files: list[FileEntry], links: list[LinkEntry], dirs: list[str]
) -> Manifest:
    cfg = loaded.config
    _check_links(files, links, dirs)
    return Manifest(
        app=cfg.app.name,
        run=cfg.app.run,
        env=dict(cfg.env),
        python=interpreter(loaded),
        release=cfg.app.release or "",
        files=tuple(sorted(files, key=lambda f: f.path)),
        links=tuple(sorted(links, key=lambda link: link.path)),
        dirs=tuple(sorted(dirs)),
    )


def interpreter(loaded: LoadedConfig) -> str:
    """The python the image runs with, recorded in its manifest ('' when there is none).

    ``[app] python`` when set, else what ``python3`` is on the instances' PATH
    (never kiln's own interpreter: see kiln.runenv).
    """
    path = instance_env(loaded.config.env)["PATH"]
    wanted = loaded.config.app.python
    if wanted is None:
        return python_on(path) or ""
    if shutil.which(wanted, path=path) is None:
        raise BuildError(
            f"[app] python = {wanted!r} is not on the instances' PATH ({path})",
            hint="install it, or name one that is there (e.g. 'python3')",
        )
    return wanted


def _commit_tree(
    loaded: LoadedConfig,
    store: Store,
    root: Path,
    entries: list[SourceEntry],
    hashes: dict[str, str],
    progress: BakeProgress,
) -> Manifest:
    """Store every file of a finished tree; known hashes skip stored objects."""
    files = [e for e in entries if e.kind == "file"]
    links = [_link(root, e) for e in entries if e.kind == "link"]
    dirs = [e.path for e in entries if e.kind == "dir"]

    def put(entry: SourceEntry) -> FileEntry:
        sha, size = store.put_file(root / entry.path, hashes.get(entry.path))
        return FileEntry(entry.path, entry.mode, size, sha)

    stored = _parallel(put, files, progress)
    return _manifest(loaded, stored, links, dirs)


def _manifest_of(
    loaded: LoadedConfig, root: Path, entries: list[SourceEntry], hashes: dict[str, str]
) -> Manifest:
    """The manifest of a tree whose files are all ingested already."""
    files = [FileEntry(e.path, e.mode, e.size, hashes[e.path]) for e in entries if e.kind == "file"]
    links = [_link(root, e) for e in entries if e.kind == "link"]
    dirs = [e.path for e in entries if e.kind == "dir"]
    return _manifest(loaded, files, links, dirs)


def _link(root: Path, entry: SourceEntry) -> LinkEntry:
    return LinkEntry(entry.path, entry.target)


def _check_links(files: list[FileEntry], links: list[LinkEntry], dirs: list[str]) -> None:
    """Follow every link through the tree as the kernel would: none may leave it."""
    try:
        check_tree((f.path for f in files), {link.path: link.target for link in links}, dirs)
    except UnsafeTree as exc:
        raise BuildError(
            f"symlink {exc.path} {exc.reason.replace('the image', 'the app')}",
            hint="images must be relocatable: use a relative link inside the app, or exclude it",
        ) from None


def _bake_with_build(
    loaded: LoadedConfig,
    home: Home,
    store: Store,
    entries: list[SourceEntry],
    hashes: dict[str, str],
    progress: BakeProgress,
) -> Manifest:
    scratch = home.tmp / f"bake-{os.getpid()}-{time.monotonic_ns()}"
    try:
        _copy_source(loaded.root, scratch, entries)
        cached = _run_steps(loaded, home, store, scratch, progress)
        made = {path: f for step in cached for path, f in step.files.items()}
        # [app] exclude and .kilnignore chose the source; what the steps made is kept
        built = list(walk(scratch, build_spec()))
        source = {e.path: (hashes[e.path], e.size, e.mtime_ns) for e in entries if e.kind == "file"}
        source |= made  # step outputs stored already: no second read
        known = {
            e.path: known_file[0]
            for e in built
            if e.kind == "file"
            and (known_file := source.get(e.path)) is not None
            and known_file[1:] == (e.size, e.mtime_ns)
        }
        manifest = _commit_tree(loaded, store, scratch, built, known, progress)
        for step in cached:
            stepcache.keep(home, step, scratch)  # one rename, not thousands of deletions
        return manifest
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _copy_source(root: Path, scratch: Path, entries: list[SourceEntry]) -> None:
    scratch.mkdir(parents=True)
    for entry in entries:
        target = scratch / entry.path
        if entry.kind == "dir":
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if entry.kind == "link":
            target.symlink_to(entry.target)
        else:
            shutil.copy2(root / entry.path, target)


def _run_steps(
    loaded: LoadedConfig, home: Home, store: Store, scratch: Path, progress: BakeProgress
) -> list[stepcache.Restored]:
    """Run the build steps (or restore cached ones); what the cached steps made, hashed."""
    steps = loaded.config.app.build
    env = build_env(loaded.config.env)
    made: list[stepcache.Restored] = []
    for number, step in enumerate(steps, 1):
        if isinstance(step, str) or not step.outputs:
            command = step if isinstance(step, str) else step.run
            _run_step(number, len(steps), command, scratch, env, progress)
            continue
        key = stepcache.step_key(step, scratch, dict(loaded.config.env), interpreter(loaded))
        restored = stepcache.restore(home, store, key, scratch)
        if restored is not None:
            progress.cached(number, len(steps), step.run)
        else:
            _run_step(number, len(steps), step.run, scratch, env, progress)
            restored = stepcache.save(home, store, key, step, scratch)
        made.append(restored)
    return made


def _run_step(
    number: int,
    total: int,
    command: str,
    scratch: Path,
    env: dict[str, str],
    progress: BakeProgress,
) -> None:
    progress.step(number, total, command)
    tail: deque[str] = deque(maxlen=30)
    cause: list[str] = []  # npm ci says why, then prints its usage: 60 more lines
    proc = subprocess.Popen(
        ["/bin/sh", "-c", command],
        cwd=scratch,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
    )
    assert proc.stdout is not None
    try:
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            tail.append(line)
            progress.output(line)
            if cause or CAUSE.match(line):  # it, and what may go on with it
                cause += [line] if len(cause) < CAUSE_LINES else []
        code = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if code != 0:
        if progress.shows_output:  # printed as it came: just above, not again
            shown = " (its output is above)"
        else:
            lines = with_cause(cause_block(cause), list(tail))
            shown = "\n" + ("\n".join(f"  | {line}" for line in lines) or "  | (no output)")
        raise BuildError(
            f"build step {number}/{total} failed with exit code {code}: "
            f"{shown_command(command)}{shown}",
            hint="fix the step and bake again; nothing was stored",
        )


def _parallel(
    fn: Callable[[SourceEntry], Any], items: list[SourceEntry], progress: BakeProgress
) -> list[Any]:
    """Run fn over items on a thread pool, in chunks: hashing and I/O drop the GIL."""
    total = len(items)
    size = max(1, min(64, total // (WORKERS * 4) or 1))
    chunks = [items[i : i + size] for i in range(0, total, size)]
    results: list[Any] = []
    with ThreadPoolExecutor(WORKERS) as pool:
        for chunk_results in pool.map(lambda chunk: [fn(item) for item in chunk], chunks):
            results.extend(chunk_results)
            progress.files(len(results), total)
    return results


class SourceIndex:
    """sha256 of source files keyed by their stat, so unchanged files are not re-read.

    One NUL-terminated record per file (``size mtime ctime ino sha path``):
    parsing it is a large share of recognising an unchanged app, so it is kept
    trivial. A name may hold anything but NUL (newlines, bytes that are not
    UTF-8: kept as surrogate escapes), and a damaged file is only a cache miss.
    """

    def __init__(self, home: Home, app: str) -> None:
        self.path = home.root / "cache" / f"index-{app}.v2"
        self.entries: dict[str, tuple[int, int, int, int, str]] = {}
        try:
            text = self.path.read_bytes().decode("utf-8", "surrogateescape")
            for record in text.split("\0")[:-1]:
                size, mtime, ctime, ino, sha, path = record.split(" ", 5)
                self.entries[path] = (int(size), int(mtime), int(ctime), int(ino), sha)
        except (OSError, ValueError):
            self.entries = {}  # no index yet, or a damaged one: every file is read
        self.fresh: dict[str, tuple[int, int, int, int, str]] = {}

    def ingest(
        self, store: Store, root: Path, entries: Iterable[SourceEntry], progress: BakeProgress
    ) -> dict[str, str]:
        """Hash every source file, storing new content in the same single read."""
        now = time.time_ns()
        hashes: dict[str, str] = {}
        todo: list[SourceEntry] = []
        for e in entries:
            if e.kind != "file":
                continue
            cached = self.entries.get(e.path)
            if cached and cached[:4] == (e.size, e.mtime_ns, e.ctime_ns, e.ino):
                hashes[e.path] = cached[4]
                self.fresh[e.path] = cached
            else:
                todo.append(e)

        def one(e: SourceEntry) -> tuple[SourceEntry, str]:
            sha, size = store.put_file(root / e.path)
            if size != e.size:
                raise BuildError(f"{e.path} changed while it was being baked", hint="bake again")
            return e, sha

        for e, sha in _parallel(one, todo, progress) if todo else []:
            hashes[e.path] = sha
            if e.mtime_ns < now - RACY_NS and e.ctime_ns < now - RACY_NS:
                self.fresh[e.path] = (e.size, e.mtime_ns, e.ctime_ns, e.ino, sha)
        return hashes

    def save(self) -> None:
        if self.fresh == self.entries:
            return  # nothing moved: keep the file as it is
        self.path.parent.mkdir(exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(
            "".join(
                f"{s} {m} {c} {i} {h} {p}\0" for p, (s, m, c, i, h) in self.fresh.items()
            ).encode("utf-8", "surrogateescape")
        )
        tmp.replace(self.path)


def _restore_missing(
    store: Store, root: Path, entries: list[SourceEntry], hashes: dict[str, str]
) -> None:
    """Objects the index vouches for may have been pruned since: store them again."""
    for e in entries:
        if e.kind == "file" and not store.has_object(hashes[e.path]):
            hashes[e.path] = store.put_file(root / e.path)[0]


def _cache_key(loaded: LoadedConfig, entries: list[SourceEntry], hashes: dict[str, str]) -> str:
    cfg = loaded.config
    head = {
        "app": cfg.app.name,
        "run": cfg.app.run,
        "release": cfg.app.release,
        "build": [s if isinstance(s, str) else s.model_dump() for s in cfg.app.build],
        "exclude": cfg.app.exclude,
        "env": cfg.env,
        "python": interpreter(loaded),
    }
    h = hashlib.sha256(json.dumps(head, sort_keys=True).encode())
    h.update(
        "".join(
            f"{e.path}\0{e.kind}\0{e.mode}\0{hashes.get(e.path, e.target)}\0" for e in entries
        ).encode("utf-8", "surrogateescape")
    )
    return h.hexdigest()


def _cache_get(home: Home, key: str) -> dict[str, Any] | None:
    path = home.root / "cache" / "bake" / key
    try:
        hit: dict[str, Any] = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    manifest = Store.manifest_path(home, hit.get("digest", ""))
    return hit if manifest is not None and manifest.exists() else None


def _cache_put(home: Home, key: str, result: BakeResult) -> None:
    path = home.root / "cache" / "bake" / key
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{key}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(result.as_dict()))
    tmp.replace(path)


def git_state(root: Path) -> tuple[str | None, bool | None]:
    """The commit the source is at and whether it has uncommitted changes (one git call)."""
    if not any((d / ".git").exists() for d in (root, *root.parents)):
        return None, None  # not a checkout: spare the subprocess
    try:
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain=v2", "--branch", "--", "."],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None, None
    if status.returncode != 0:
        return None, None
    commit = None
    dirty = False
    for line in status.stdout.splitlines():
        if line.startswith("# branch.oid "):
            oid = line.split()[2]
            commit = None if oid == "(initial)" else oid
        elif not line.startswith("#"):
            dirty = True
    return commit, dirty if commit else None
