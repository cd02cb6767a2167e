"""The suite's own layout: every directory's tests collect whatever runs beside them.

Each test directory has a ``conftest.py`` and pytest imports them all under the
one module name ``conftest``, so ``from conftest import X`` finds whichever
directory's conftest pytest loaded last: tests/aws collected after tests/ci
failed to import. Helpers live in named kit modules (``awskit``, ``kilntest``).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_no_test_module_imports_a_conftest() -> None:
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        if "node_modules" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            if any(name.split(".")[-1] == "conftest" for name in names):
                offenders.append(f"{path.relative_to(TESTS)}:{node.lineno}")
    assert not offenders, f"import helpers from a kit module, not conftest: {offenders}"


def test_aws_tests_collect_after_another_directorys_conftest() -> None:
    """The order that broke: tests/ci's conftest loaded after tests/aws's."""
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"),
            *("tests/aws/test_aws_bake.py", "tests/ci/test_ci_init.py"),
        ],
        cwd=TESTS.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
