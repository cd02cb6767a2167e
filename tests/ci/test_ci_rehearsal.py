"""Rehearse the generated deploy job on this machine: its own `run:` steps, in
order, with GitHub's shell and semantics, against the real local provider."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest
from ruamel.yaml import YAML

from kiln.home import Home

if TYPE_CHECKING:
    from kilntest import Kiln

TESTS = Path(__file__).resolve().parents[1]
ACEBOOK = TESTS.parent / "examples" / "acebook"
pytestmark = pytest.mark.slow


def localtest() -> ModuleType:
    """tests/local's helpers (agent cleanup), loaded by path."""
    if "localtest" not in sys.modules:
        spec = importlib.util.spec_from_file_location("localtest", TESTS / "local" / "localtest.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["localtest"] = module
        spec.loader.exec_module(module)
    return sys.modules["localtest"]


@pytest.fixture
def repo(kiln: Kiln, home: Home, tmp_path: Path) -> Iterator[Path]:
    """acebook in a checkout of its own, on a free port; its fleet dies with the test."""
    root = tmp_path / "repo"
    (root / ".git").mkdir(parents=True)
    for name in ("app.py", "posts.py", "requirements.txt"):
        shutil.copy(ACEBOOK / name, root / name)
    port = localtest().free_port()
    config = (ACEBOOK / "kiln.toml").read_text()
    (root / "kiln.toml").write_text(config.replace("127.0.0.1:8080", f"127.0.0.1:{port}"))
    kiln.cwd = root
    kiln("ci", "init", "github", "--provider", "local")
    try:
        yield root
    finally:
        localtest().kill_everything(home)


def run_deploy_job(root: Path, tmp_path: Path) -> tuple[list[tuple[str, int]], str]:
    """Each `run:` step of the deploy job as GitHub runs it: bash -eo pipefail, the
    job's working directory, later steps skipped after a failure unless `if: always()`.
    'Install kiln' is skipped: this kiln is already installed."""
    workflow: Any = YAML(typ="safe").load((root / ".github/workflows/deploy.yml").read_text())
    workdir = root / workflow["defaults"]["run"]["working-directory"]
    summary = tmp_path / "summary.md"
    summary.write_text("")
    env = os.environ | {
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "RUNNER_TEMP": str(tmp_path),
        "GITHUB_STEP_SUMMARY": str(summary),
        "DATABASE_URL": f"sqlite://{tmp_path}/acebook.db",
    }
    results: list[tuple[str, int]] = []
    failed = False
    for step in workflow["jobs"]["deploy"]["steps"]:
        if "run" not in step or step["name"] == "Install kiln":
            continue
        if failed and step.get("if") != "always()":
            continue
        proc = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        results.append((step["name"], proc.returncode))
        failed = failed or proc.returncode != 0
    return results, summary.read_text()


def test_deploy_job_bakes_deploys_and_summarizes(repo: Path, tmp_path: Path) -> None:
    steps, summary = run_deploy_job(repo, tmp_path)
    assert steps == [("Bake image", 0), ("Deploy", 0), ("Summary", 0)]
    baked = json.loads((tmp_path / "bake.json").read_text())
    deployed = json.loads((tmp_path / "deploy.json").read_text())
    assert f"### bake: {baked['image']}" in summary
    assert f"### deploy: {deployed['outcome']}" in summary
    port = (repo / "kiln.toml").read_text().split("127.0.0.1:")[1].split('"')[0]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=5) as resp:
        info = json.load(resp)
    assert (info["version"], info["image"]) == ("v1", baked["image"])


def test_a_failed_deploy_fails_the_job_and_still_gets_a_summary(repo: Path, tmp_path: Path) -> None:
    (repo / "app.py").write_text("import sys\nsys.exit('broken on purpose')\n")
    steps, summary = run_deploy_job(repo, tmp_path)
    assert steps[0] == ("Bake image", 0)
    assert steps[1][0] == "Deploy" and steps[1][1] != 0
    assert steps[2] == ("Summary", 0)
    assert "### deploy: " in summary
