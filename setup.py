"""kiln's build: pure Python, with the balancer's hot path compiled by Cython when it can be.

A module under src/kiln is compiled iff an augmenting ``X.pxd`` sits beside its
``X.py`` (Cython's pure-Python mode: the .py stays the one source and runs as it
is). Compiling is an optimisation, never a requirement: without Cython or a C
compiler, when a module fails to compile, or with ``KILN_PURE=1`` in the
environment, the install succeeds as pure Python and says so. All or nothing: a
module compiled against another's .pxd needs that one compiled too, so one
failure leaves every module pure. Everything else is in pyproject.toml.
"""

from __future__ import annotations

import os
import shutil
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
SRC = ROOT / "src"
# Cython's defaults otherwise: the .py source is the truth, and what it does as
# plain Python it must do compiled (tests run both forms). Types come from the
# .pxd files only: the .py annotations are for mypy (`status: int` would clash
# with a .pxd's C `int status`).
DIRECTIVES = {"language_level": 3, "binding": False, "annotation_typing": False}


def _say(message: str) -> None:
    print(f"kiln build: {message}", file=sys.stderr)


def _accelerated() -> list[Path]:
    """Every src/kiln/**/X.py with an X.pxd beside it, relative to this file."""
    return sorted(
        pxd.with_suffix(".py").relative_to(ROOT)
        for pxd in (SRC / "kiln").rglob("*.pxd")
        if pxd.with_suffix(".py").is_file()
    )


def _in_place_builds(sources: list[Path]) -> list[Path]:
    """Compiled modules an earlier in-place build left beside their sources."""
    return [
        built
        for source in sources
        for suffix in EXTENSION_SUFFIXES
        if (built := ROOT / source.with_suffix(suffix)).is_file()
    ]


def _forget_in_place_builds(sources: list[Path]) -> None:
    """An in-place .so shadows its .py at import: a pure build must not leave one behind."""
    for built in _in_place_builds(sources):
        built.unlink()
        _say(f"removed {built.relative_to(ROOT)}")


def _forget_orphans() -> None:
    """In-place builds of modules whose .pxd is gone: no longer meant to be compiled."""
    for generated in (SRC / "kiln").rglob("*.c"):
        if not generated.with_suffix(".pxd").exists():
            for built in _in_place_builds([generated.with_suffix(".py").relative_to(ROOT)]):
                built.unlink()
                _say(f"removed {built.relative_to(ROOT)} (its .pxd is gone)")
            generated.unlink()


def _extensions() -> list[Extension]:
    _forget_orphans()
    sources = _accelerated()
    if not sources:
        return []
    if os.environ.get("KILN_PURE", "") not in ("", "0"):  # as kiln.local.compiled reads it
        _say("KILN_PURE is set: installing pure Python, nothing compiled")
        _forget_in_place_builds(sources)
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        _say("Cython is not installed: installing pure Python (slower load balancer)")
        return []
    # .c files are regenerated when a .py or .pxd changes, not when the directives do
    stamp = ROOT / "build" / "cython-directives"
    said = repr(sorted(DIRECTIVES.items()))
    force = not stamp.is_file() or stamp.read_text() != said
    try:
        modules: list[Extension] = cythonize(
            [str(source) for source in sources],
            compiler_directives=DIRECTIVES,
            force=force,
            include_path=[str(SRC)],  # a .pxd may cimport another module's
            nthreads=os.cpu_count() or 1,
            quiet=True,
        )
    except Exception as exc:  # a Cython error in a .pxd: the .py still runs
        _say(f"Cython could not translate the hot path (errors above; {exc}): pure Python")
        return []
    stamp.parent.mkdir(exist_ok=True)
    stamp.write_text(said)
    if os.name == "posix":  # no debug info: a third less compile time, a ninth the size
        for module in modules:
            module.extra_compile_args.append("-g0")
    return modules


class OptionalBuildExt(build_ext):
    """build_ext that falls back to pure Python instead of failing the install."""

    def finalize_options(self) -> None:
        super().finalize_options()
        if self.parallel is None:  # one C file per module: compile them side by side
            self.parallel = os.cpu_count() or 1

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler at all (DistutilsPlatformError) and the like
            self._fall_back(exc)

    def build_extensions(self) -> None:
        try:
            super().build_extensions()
        except Exception as exc:  # CCompilerError, DistutilsExecError, a missing Python.h…
            self._fall_back(exc)

    def copy_file(self, infile: Any, outfile: Any, *args: Any, **kwargs: Any) -> Any:
        """An in-place extension is replaced, never rewritten: a running balancer maps
        the old file, and rewriting it under that process would crash it (SIGBUS)."""
        if not str(outfile).endswith(tuple(EXTENSION_SUFFIXES)):
            return super().copy_file(infile, outfile, *args, **kwargs)
        partial = f"{outfile}.{os.getpid()}.partial"
        shutil.copy2(infile, partial)
        Path(partial).replace(outfile)
        return outfile, 1

    def _fall_back(self, exc: BaseException) -> None:
        _say(f"compiling failed ({exc}): installing pure Python (slower load balancer)")
        for ext in self.extensions:  # all or nothing, in the build tree and in place
            for path in (Path(self.get_ext_fullpath(ext.name)), ROOT / self._in_place(ext)):
                path.unlink(missing_ok=True)
        self.extensions = []

    def _in_place(self, ext: Any) -> Path:
        package, _, _ = ext.name.rpartition(".")
        return Path("src", *package.split("."), Path(self.get_ext_filename(ext.name)).name)


if __name__ == "__main__":  # as pip's build backend runs it too; tests import the command
    setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
