"""The suite's own layout: every directory's tests collect whatever runs beside them.

Each test directory has a ``conftest.py`` and pytest imports them all under the
one module name ``conftest``, so ``from conftest import X`` finds whichever
directory's conftest pytest loaded last: tests/aws collected after tests/ci
failed to import. Helpers live in named kit modules (``awskit``, ``kilntest``).
"""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

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


def _run_sandbox(root: Path, *args: str) -> list[str]:
    """One pytest-xdist run of the sandbox; the order its tests ran in.

    The run gets its own session, no stdin (under ``make test`` this test runs in an
    xdist worker whose stdin is its channel to the controller) and none of the outer
    run's PYTEST_* variables (it is not a worker). In two CI runs, at load 8-10, the
    nested controller kept running (state R, its worker gone) after all five tests had
    passed, and never printed its summary; never here, in hundreds of runs. So a run
    that does not finish in 60 s (each takes 1-10 s) is killed and run once more; a
    second one fails with what both printed and the processes' states.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = str(TESTS)
    stuck: list[str] = []
    while True:
        (root / "order.txt").unlink(missing_ok=True)
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "pytest", "-q", "-n", "1", "--dist", "worksteal"),
                *("-o", f"cache_dir={root / 'cache'}", *args),
            ],
            cwd=root,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            env=env,
        )
        try:
            out, _ = proc.communicate(timeout=60)
            break
        except subprocess.TimeoutExpired:
            tree = subprocess.run(
                ["ps", "-o", "pid,stat,etime,wchan:20,args", "-g", str(proc.pid)],
                capture_output=True,
                text=True,
                check=False,
            ).stdout
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            stuck.append(f"{tree}\n{out[-2000:]}")
            if len(stuck) == 2:
                pytest.fail("the sandbox run did not finish in 60 s, twice:\n" + "\n".join(stuck))
    assert proc.returncode == 0, out[-3000:]
    # A test's recorded figures are printed once at the end (the VM rehearsal's timings).
    assert out.count("figures: test_b.py::test_b: 1.5 s") == 1, out
    return (root / "order.txt").read_text().split()


@pytest.mark.slow
def test_parallel_runs_put_the_longest_files_first(tmp_path: Path) -> None:
    """make test's order (tests/suiteorder.py): by the marks, then by what each file cost."""
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nmarkers =\n    vm: boots\n    slow: processes\n    aws: moto\n"
    )
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["suiteorder"]\n')
    body = (
        "import time\nfrom pathlib import Path\n"
        "import pytest\n\n{mark}def test_{name}(record_property):\n"
        "    time.sleep({sleep})\n"
        "    if {sleep}:\n"
        "        record_property('figures', '{sleep} s')\n"
        "    with (Path(__file__).parent / 'order.txt').open('a') as f:\n"
        "        f.write('{name}\\n')\n"
    )
    files = {
        "a": ("", 0),
        "b": ("", 1.5),
        "c": ("@pytest.mark.slow\n", 0),
        "d": ("", 0),
        "f": ("@pytest.mark.aws\n", 0),
    }
    for name, (mark, sleep) in files.items():
        (tmp_path / f"test_{name}.py").write_text(body.format(name=name, mark=mark, sleep=sleep))
    # Nothing recorded yet: by the marks (slow, then aws, then the rest as collected),
    # except that the cheapest test waits behind the longest one.
    assert _run_sandbox(tmp_path) == ["c", "a", "f", "b", "d"]
    # Then by the seconds each file took on the last run.
    assert _run_sandbox(tmp_path)[0] == "b"
    # A new file, marked vm, has no record and goes first.
    (tmp_path / "test_e.py").write_text(body.format(name="e", mark="@pytest.mark.vm\n", sleep=0))
    assert _run_sandbox(tmp_path)[0] == "e"
