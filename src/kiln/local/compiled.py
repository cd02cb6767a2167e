"""Which form of the balancer's hot path runs: compiled by Cython, or the Python source.

A module under ``kiln`` is compiled iff an augmenting ``X.pxd`` sits beside its
``X.py`` (setup.py builds it when Cython and a C compiler are there). The ``.py``
stays the one source, and runs as it is wherever the extension is missing, so
figures and bug reports must say which form ran: the balancer logs it at start,
``kiln agent status`` shows it, benchmarks/lb.py records it.

``KILN_PURE=1`` in a process's environment makes it import the Python source of
every such module even where the extension exists (the agent hands it on to the
balancer). Nor is any imported while an in-place build (editable install,
``make build``) is older than its ``.py`` or ``.pxd``: an extension beside an
edited source would otherwise win at import and run code that is no longer there.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from importlib.machinery import EXTENSION_SUFFIXES, ModuleSpec, SourceFileLoader
from pathlib import Path
from types import ModuleType

ENV = "KILN_PURE"
_ROOT = Path(__file__).resolve().parents[1]  # the kiln package


def pure_requested() -> bool:
    """Whether this process was asked to run the Python source only."""
    return os.environ.get(ENV, "") not in ("", "0")


def accelerated(root: Path = _ROOT) -> list[str]:
    """Modules meant to be compiled: each ``kiln`` module with a ``.pxd`` beside it."""
    return sorted(
        ".".join(("kiln", *pxd.relative_to(root).with_suffix("").parts))
        for pxd in root.rglob("*.pxd")
        if pxd.with_suffix(".py").is_file()
    )


def compiled_modules() -> list[str]:
    """The accelerated modules this process runs compiled (importing those not yet
    imported, as the balancer does at start)."""
    return [
        name
        for name in accelerated()
        if str(getattr(importlib.import_module(name), "__file__", "")).endswith(
            tuple(EXTENSION_SUFFIXES)
        )
    ]


def stale_builds(root: Path = _ROOT) -> list[str]:
    """Accelerated modules whose in-place extension is older than their source: while
    there is one, none is imported compiled (one module's extension can be typed
    against another's)."""
    return [
        name
        for name in accelerated(root)
        if (ext := _extension(base := str(root.joinpath(*name.split(".")[1:])))) is not None
        and _stale(base, ext)
    ]


def describe() -> str:
    """One phrase for a log line: which form of the hot path this process runs."""
    compiled = compiled_modules()
    if compiled:
        return "hot path compiled: " + ", ".join(compiled)
    if pure_requested():
        return f"hot path pure Python ({ENV} is set)"
    stale = stale_builds()
    if stale:
        return "hot path pure Python (stale builds ignored: " + ", ".join(stale) + ")"
    return "hot path pure Python (no compiled build)"


def mapped_in(pid: int) -> list[str] | None:
    """The accelerated modules process ``pid`` loaded compiled, read from its memory
    map (the truth about a running balancer); None when its map is not readable."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return None
    paths = set()
    for line in maps.splitlines():
        fields = line.split(None, 5)  # address, perms, offset, device, inode, path
        if len(fields) == 6:  # a replaced file still mapped reads "<path> (deleted)"
            paths.add(fields[5].removesuffix(" (deleted)").strip())
    return [
        name
        for name in accelerated()
        if any(path.endswith(tail) for path in paths for tail in _tails(name))
    ]


def _tails(name: str) -> list[str]:
    return ["/" + "/".join(name.split(".")) + suffix for suffix in EXTENSION_SUFFIXES]


def _mtime(path: str) -> int | None:
    """Plain ``os.stat`` on strings: the import hook runs for every kiln module."""
    try:
        return os.stat(path).st_mtime_ns  # noqa: PTH116
    except OSError:
        return None


def _extension(base: str) -> str | None:
    """The in-place build of module file ``base`` (no suffix), if there is one: an
    extension with the ``.c`` Cython wrote beside it (wheels ship no ``.c``)."""
    if _mtime(base + ".c") is None:
        return None
    for suffix in EXTENSION_SUFFIXES:
        if _mtime(base + suffix) is not None:
            return base + suffix
    return None


def _stale(base: str, ext: str) -> bool:
    built = _mtime(ext) or 0
    return any((_mtime(source) or 0) > built for source in (base + ".py", base + ".pxd"))


class SourceFirst:
    """Imports an accelerated module's ``.py`` instead of its extension when this
    process runs pure (``KILN_PURE``) or any in-place build under ``root`` is stale
    (decided once per process, so that its modules agree), and instead of a build
    left behind by a ``.pxd`` since removed.

    Costs two or three ``stat`` calls (a few µs) per ``kiln`` module imported;
    anything else passes by.
    """

    def __init__(self, root: Path = _ROOT) -> None:
        self.root = root
        self.stale: bool | None = None  # whether any build under root is stale

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> ModuleSpec | None:
        if path is None or not fullname.startswith("kiln."):
            return None
        leaf = fullname.rpartition(".")[2]
        for directory in path:
            base = f"{directory}{os.sep}{leaf}"
            source = base + ".py"
            if _mtime(source) is None:
                continue
            if _mtime(base + ".pxd") is not None:
                if self.stale is None:
                    self.stale = bool(stale_builds(self.root))
                if not pure_requested() and not self.stale:
                    return None
            elif _extension(base) is None:  # an ordinary module
                return None
            # else an in-place build left behind by a .pxd since removed
            spec = ModuleSpec(fullname, SourceFileLoader(fullname, source))
            spec.origin = source
            spec.has_location = True  # __file__ and __cached__, as a normal import sets
            return spec
        return None


def install() -> None:
    """Put ``SourceFirst`` ahead of the import system's own finders (once)."""
    if not any(isinstance(finder, SourceFirst) for finder in sys.meta_path):
        sys.meta_path.insert(0, SourceFirst())
