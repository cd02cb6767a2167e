"""An agent started before an upgrade of kiln is restarted by the next command.

Before, the new CLI handed the old agent settings it did not know
(`FleetSettings.__init__() got an unexpected keyword argument 'sticky'`) and
every deploy failed until the user found `kiln agent stop`.
"""

from __future__ import annotations

import shutil
import time
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest
from localtest import serving

import kiln
from kiln.home import Home
from kiln.loadgen import LoadLoop
from kiln.local import client
from kiln.local.client import agent_status, start_agent
from kiln.local.codeid import fingerprint, kiln_code
from kiln.local.provider import LocalProvider


def _older_kiln(where: Path) -> Path:
    """A copy of kiln's package with one module changed, as an upgrade leaves it."""
    package = Path(kiln.__file__).parent
    shutil.copytree(package, where / "kiln", ignore=shutil.ignore_patterns("__pycache__"))
    with (where / "kiln" / "durations.py").open("a") as f:
        f.write("\n# an older release\n")
    return where


@pytest.mark.slow
def test_an_agent_of_other_code_is_restarted_and_nothing_stops_serving(
    provider: LocalProvider,
    image: str,
    lb_port: int,
    local_home: Home,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(_older_kiln(tmp_path / "old")))  # the agent's import path
    old, started = start_agent(local_home)
    assert started and old["code"] != kiln_code()
    monkeypatch.delenv("PYTHONPATH")
    with monkeypatch.context() as before_upgrade:  # the older kiln's commands use its agent
        before_upgrade.setattr(client, "kiln_code", lambda: old["code"])
        provider.launch("web", image, 2)
        serving(provider, 2)
    assert agent_status(local_home)["pid"] == old["pid"]  # type: ignore[index]
    instances = {i.id for i in provider.describe("web").live()}

    with LoadLoop("127.0.0.1", lb_port, workers=2, pause=0.005, max_seconds=120) as load:
        time.sleep(1.0)
        new, started = start_agent(local_home)  # the upgraded kiln's first command
        assert started and new["pid"] != old["pid"] and new["code"] == kiln_code()
        serving(provider, 2)
        time.sleep(1.0)
    assert load.sent > 50 and load.failed == 0, load.errors
    assert {i.id for i in provider.describe("web").live()} == instances  # re-adopted

    again, started = start_agent(local_home)  # same code: left alone
    assert not started and again["pid"] == new["pid"]


def test_a_rebuilt_or_removed_extension_is_new_code(tmp_path: Path) -> None:
    """`make build` replacing a compiled module (or a build going away) must restart the
    agent and hand the balancer over, as an edited .py does."""
    package = tmp_path / "kiln"
    (package / "local").mkdir(parents=True)
    (package / "local" / "http1.py").write_text("x = 1\n")
    (package / "local" / "http1.pxd").write_text("cdef class Fields:\n    pass\n")
    source_only = fingerprint(package)
    built = package / "local" / f"http1{EXTENSION_SUFFIXES[0]}"
    built.write_bytes(b"\x7fELF one build")
    compiled = fingerprint(package)
    assert compiled != source_only
    built.write_bytes(b"\x7fELF another, rebuilt")
    assert fingerprint(package) != compiled
    built.unlink()
    assert fingerprint(package) == source_only
