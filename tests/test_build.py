"""setup.py: the hot path compiled when it can be, a pure-Python install when it cannot.

Each test builds a copy of the checkout holding one accelerated module
(kiln.local.http1), so it neither touches the tree the suite imports nor pays
for compiling every module.
"""

from __future__ import annotations

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
    leftover = root / "src" / "kiln" / "local" / ("http1" + EXT)
    leftover.write_bytes(b"an earlier build")
    done = _build_in_place(root, KILN_PURE="1")
    assert done.returncode == 0, done.stderr
    assert "KILN_PURE is set: installing pure Python, nothing compiled" in done.stderr
    assert not leftover.exists()  # it would shadow the .py at import


def test_a_wheel_holds_the_compiled_module_and_the_sources(tmp_path: Path) -> None:
    """What `pip install kiln-deploy` gets: the extension, and the .py it falls back to."""
    root = _checkout(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(root)],
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
