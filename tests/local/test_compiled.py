"""Both forms of the balancer's hot path: compiled where the build could, Python source
everywhere else (KILN_PURE=1, no compiler, a stale in-place build).

The suite runs the compiled form (this file checks it is the one loaded);
test_pure_form.py and test_lb_cost.py run the Python source in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest
from lbharness import BalancerProcess, free_port
from localtest import make_image, wait_for, write_config

from kiln.config import load_config
from kiln.home import Home
from kiln.local import compiled
from kiln.local.client import agent_env
from kiln.local.provider import LocalProvider
from kilntest import Kiln

PURE = compiled.pure_requested()


@pytest.mark.skipif(PURE, reason="KILN_PURE is set: this run tests the Python source only")
def test_the_hot_path_runs_compiled() -> None:
    """What the suite exercises is what a normal install runs (setup.py built it)."""
    meant = compiled.accelerated()
    assert "kiln.local.http1" in meant
    stale = compiled.stale_builds()
    assert not stale, f"in-place builds older than their source: {stale}; run `make build`"
    assert compiled.compiled_modules() == meant, (
        "not compiled: `make build` (or `pip install -v -e .`) says why"
    )
    assert compiled.mapped_in(os.getpid()) == meant
    assert compiled.describe() == "hot path compiled: " + ", ".join(meant)


@pytest.mark.skipif(not PURE, reason="runs in test_pure_form.py's KILN_PURE=1 subprocess")
def test_this_process_runs_the_python_source() -> None:
    """The run of the protocol tests under KILN_PURE=1 imported no compiled module."""
    assert compiled.compiled_modules() == []
    assert compiled.mapped_in(os.getpid()) == []


def test_kiln_pure_imports_the_python_source() -> None:
    code = (
        "import json, os\nimport kiln.local.http1 as h\nfrom kiln.local import compiled as c\n"
        "print(json.dumps([h.__file__, c.compiled_modules(), c.mapped_in(os.getpid()),"
        " c.describe()]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "KILN_PURE": "1"},
        capture_output=True,
        text=True,
        check=True,
    )
    source, loaded, mapped, said = json.loads(done.stdout)
    assert source.endswith("/kiln/local/http1.py")
    assert loaded == mapped == []
    assert said == "hot path pure Python (KILN_PURE is set)"


def _module(directory: Path, built_after_source: bool) -> None:
    """mod.py and mod.pxd, and an in-place build (.c and extension) of them."""
    for name in ("mod.py", "mod.pxd", "mod.c", "mod" + EXTENSION_SUFFIXES[0]):
        (directory / name).write_text("")
        os.utime(directory / name, ns=(1_000_000_000, 1_000_000_000))
    newer = directory / ("mod" + EXTENSION_SUFFIXES[0] if built_after_source else "mod.py")
    os.utime(newer, ns=(2_000_000_000, 2_000_000_000))


def test_a_stale_in_place_build_is_never_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An extension beside an edited .py would run code that is no longer there."""
    monkeypatch.delenv("KILN_PURE", raising=False)
    fresh, stale = tmp_path / "fresh", tmp_path / "stale"
    for directory, built_after in ((fresh, True), (stale, False)):
        directory.mkdir()
        _module(directory, built_after)
    assert compiled.SourceFirst(fresh).find_spec("kiln.mod", [str(fresh)]) is None  # as usual
    spec = compiled.SourceFirst(stale).find_spec("kiln.mod", [str(stale)])
    assert spec is not None and spec.origin == str(stale / "mod.py")
    (fresh / "mod.pxd").touch()  # a newer .pxd makes it stale too
    spec = compiled.SourceFirst(fresh).find_spec("kiln.mod", [str(fresh)])
    assert spec is not None and spec.origin == str(fresh / "mod.py")
    monkeypatch.setenv("KILN_PURE", "1")
    (stale / "mod.c").unlink()  # not an in-place build (a wheel's): only KILN_PURE applies
    spec = compiled.SourceFirst(stale).find_spec("kiln.mod", [str(stale)])
    assert spec is not None and spec.origin == str(stale / "mod.py")
    monkeypatch.setenv("KILN_PURE", "0")
    assert compiled.SourceFirst(stale).find_spec("kiln.mod", [str(stale)]) is None
    assert compiled.SourceFirst(stale).find_spec("other.mod", [str(stale)]) is None  # not kiln's


def test_one_stale_build_leaves_every_module_pure(tmp_path: Path) -> None:
    """A module compiled against another's .pxd cannot import that one as Python."""
    _module(tmp_path, built_after_source=True)
    other = _mkdir(tmp_path / "other")
    _module(other, built_after_source=False)
    spec = compiled.SourceFirst(tmp_path).find_spec("kiln.mod", [str(tmp_path)])
    assert spec is not None and spec.origin == str(tmp_path / "mod.py")
    assert compiled.stale_builds(tmp_path) == ["kiln.other.mod"]


def test_a_build_left_behind_by_a_removed_pxd_is_never_imported(tmp_path: Path) -> None:
    _module(tmp_path, built_after_source=True)
    (tmp_path / "mod.pxd").unlink()  # no longer meant to be compiled
    spec = compiled.SourceFirst(tmp_path).find_spec("kiln.mod", [str(tmp_path)])
    assert spec is not None and spec.origin == str(tmp_path / "mod.py")
    (tmp_path / "mod.c").unlink()  # an extension module of its own (none of kiln's)
    assert compiled.SourceFirst(tmp_path).find_spec("kiln.mod", [str(tmp_path)]) is None


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


@pytest.mark.parametrize("pure", [False, True], ids=["default", "KILN_PURE"])
def test_the_balancer_process_says_which_form_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pure: bool
) -> None:
    if pure:
        monkeypatch.setenv("KILN_PURE", "1")
    expected = [] if pure or PURE else compiled.accelerated()
    process = BalancerProcess(tmp_path)
    try:
        said = wait_for(
            lambda: [line for line in process.log.read_text().splitlines() if " serving " in line],
            30,
            "the balancer's start-up line",
        )
        assert compiled.mapped_in(process.proc.pid) == expected
    finally:
        process.stop()
    form = "hot path compiled: " + ", ".join(expected) if expected else "hot path pure Python"
    assert form in said[0]


def test_the_agent_hands_kiln_pure_to_the_balancer(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent starts with a few variables only; the balancer inherits the agent's."""
    monkeypatch.setenv("KILN_PURE", "1")
    assert agent_env(home)["KILN_PURE"] == "1"


def test_agent_status_shows_the_balancers_form(
    local_home: Home, kiln: Kiln, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KILN_PURE", "1")  # through the agent to its balancer
    provider = LocalProvider(local_home, load_config(write_config(tmp_path / "a", free_port())))
    provider.launch("web", make_image(local_home), 1)
    status = json.loads(kiln("agent", "status", "--json").stdout)
    assert status["balancer_pid"] and status["balancer_compiled"] == []
    assert "hot path pure Python" in kiln("agent", "status").stdout
