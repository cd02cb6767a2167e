"""setup.py: the hot path compiled when it can be, a pure-Python install when it cannot.

Each test builds a copy of the checkout holding one accelerated module
(kiln.local.http1), so it neither touches the tree the suite imports nor pays
for compiling every module.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

from kilntest import REPO

pytestmark = pytest.mark.slow
EXT = EXTENSION_SUFFIXES[0]


def _checkout(tmp_path: Path) -> Path:
    root = tmp_path / "kiln"
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, root / name if root.exists() else _mkdir(root) / name)
    shutil.copytree(
        REPO / "src",
        root / "src",
        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.c", "*.egg-info"),
    )
    for pxd in (root / "src").rglob("*.pxd"):
        if pxd.name != "http1.pxd":
            pxd.unlink()
    return root


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def _build_in_place(root: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
        cwd=root,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _built(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "src").rglob("*" + EXT))


def test_without_a_c_compiler_the_install_is_pure_python(tmp_path: Path) -> None:
    root = _checkout(tmp_path)
    done = _build_in_place(root, CC="false")  # a compiler that fails every file
    assert done.returncode == 0, done.stderr
    assert "kiln build: compiling failed" in done.stderr
    assert "installing pure Python" in done.stderr
    assert _built(root) == []


def test_without_cython_the_install_is_pure_python(tmp_path: Path) -> None:
    root = _checkout(tmp_path)
    shadow = _mkdir(tmp_path / "shadow" / "Cython")
    (shadow / "__init__.py").write_text("raise ImportError('no Cython here')\n")
    done = _build_in_place(root, PYTHONPATH=str(shadow.parent))
    assert done.returncode == 0, done.stderr
    assert "kiln build: Cython is not installed: installing pure Python" in done.stderr
    assert _built(root) == []


def test_kiln_pure_compiles_nothing_and_removes_an_in_place_build(tmp_path: Path) -> None:
    root = _checkout(tmp_path)
    local = root / "src" / "kiln" / "local"
    leftover = local / ("http1" + EXT)
    leftover.write_bytes(b"an earlier build")
    orphans = [local / "lb.c", local / ("lb" + EXT)]  # built while lb.pxd existed
    for orphan in orphans:
        orphan.write_bytes(b"an earlier build")
    done = _build_in_place(root, KILN_PURE="1")
    assert done.returncode == 0, done.stderr
    assert "KILN_PURE is set: installing pure Python, nothing compiled" in done.stderr
    assert not leftover.exists()  # it would shadow the .py at import
    assert not [orphan for orphan in orphans if orphan.exists()], done.stderr


def test_a_wheel_holds_the_compiled_module_and_the_sources(tmp_path: Path) -> None:
    """What `pip install kiln-deploy` gets: the extension, and the .py it falls back to."""
    root = _checkout(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(root)],
        env={**os.environ, "CFLAGS": "-O0"},  # what it holds is tested here, not its speed
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (wheel,) = tmp_path.glob("kiln_deploy-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    local = {n.removeprefix("kiln/local/") for n in names if n.startswith("kiln/local/http1")}
    assert local == {"http1.py", "http1.pxd", "http1" + EXT}
    assert not [n for n in names if n.endswith(".c")]
    assert "kiln/local/compiled.py" in names


def test_an_in_place_build_replaces_the_extension_a_running_balancer_maps(
    tmp_path: Path,
) -> None:
    """Rewriting the file under a process that maps it would crash that process."""
    spec = importlib.util.spec_from_file_location("kiln_setup", REPO / "setup.py")
    assert spec is not None and spec.loader is not None
    setup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup)
    from setuptools import Distribution

    command = setup.OptionalBuildExt(Distribution())
    built, in_place = tmp_path / ("built" + EXT), tmp_path / ("http1" + EXT)
    built.write_bytes(b"new build")
    in_place.write_bytes(b"the build a balancer runs")
    running = in_place.stat().st_ino
    command.copy_file(str(built), str(in_place))
    assert in_place.read_bytes() == b"new build"
    assert in_place.stat().st_ino != running  # a new file: the old one lives on while mapped
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([built.name, in_place.name])
