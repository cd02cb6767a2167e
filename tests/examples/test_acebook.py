"""examples/acebook as part of the main suite: its own tests, its kiln.toml
baked for real, and its committed CI workflow fresh and lint-clean."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kilntest import Kiln

REPO = Path(__file__).resolve().parents[2]
ACEBOOK = REPO / "examples" / "acebook"
WORKFLOW = ACEBOOK / ".github" / "workflows" / "deploy.yml"
# The command that wrote the committed workflow (run from the repository root).
GENERATE = (
    "-c",
    "examples/acebook/kiln.toml",
    "ci",
    "init",
    "github",
    "--root",
    "examples/acebook",
)


def test_acebook_own_tests_pass() -> None:
    """The example's tests, run the way its README says (from its directory)."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q"],
        cwd=ACEBOOK,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " passed" in proc.stdout and "skipped" not in proc.stdout


def test_acebook_config_is_valid(kiln: Kiln) -> None:
    kiln.cwd = REPO
    assert "ok (app acebook)" in kiln("-c", "examples/acebook/kiln.toml", "config", "check").stdout


def test_acebook_bakes_into_an_image_of_just_the_app(kiln: Kiln) -> None:
    """The build step runs for real; tests, docs and CI files stay out of the image."""
    kiln.cwd = REPO
    baked = json.loads(kiln("-c", "examples/acebook/kiln.toml", "bake", "--json").stdout)
    shown = json.loads(
        kiln("-c", "examples/acebook/kiln.toml", "image", "show", baked["image"], "--json").stdout
    )
    paths = {entry["path"] for entry in shown["manifest"]}
    assert {"app.py", "posts.py", "requirements.txt"} <= paths
    assert not any(p.startswith(("tests/", ".github/", "scripts/")) for p in paths)
    assert shown["env"]["APP_VERSION"] == "v1"


def test_committed_workflow_is_fresh(kiln: Kiln) -> None:
    kiln.cwd = REPO
    fresh = kiln(*GENERATE, "-o", "-").stdout
    assert WORKFLOW.read_text() == fresh, (
        "examples/acebook's workflow is stale: run "
        f"'kiln {' '.join(GENERATE)} --force' from the repository root"
    )


def test_committed_workflow_passes_actionlint_and_schema(linters: ModuleType) -> None:
    assert linters.actionlint(WORKFLOW) == []
    checked = linters.check_schema("github-workflows", WORKFLOW)
    assert checked.returncode == 0, checked.stdout + checked.stderr
