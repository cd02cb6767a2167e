"""The test stage `kiln ci init` writes installs the app's dependencies, dev ones too,
whatever the app keeps them in: run for real, with uv, Pipenv and Poetry from PyPI
and lock files those tools wrote.

Before, only a requirements.txt was installed: a Poetry, Pipenv or uv app's
tests ran with none of its packages (ModuleNotFoundError on the first import).
Each case locks a main dependency (humanize) and a dev-only one (tabulate, what
a test helper would be), renders the GitHub workflow, and runs its install
steps, as written, in a fresh virtualenv standing in for the runner's Python.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from realkit import CACHE
from ruamel.yaml import YAML

from kilntest import Kiln

APP = '[app]\nname = "shop"\nrun = "python3 app.py"\n'

CASES = {
    "uv": {
        "pyproject.toml": '[project]\nname = "shop"\nversion = "0.1.0"\n'
        'requires-python = ">=3.11"\ndependencies = ["humanize>=4"]\n\n'
        '[dependency-groups]\ndev = ["tabulate>=0.9"]\n',
    },
    "pipenv": {
        "Pipfile": '[packages]\nhumanize = "*"\n\n[dev-packages]\ntabulate = "*"\n\n'
        '[requires]\npython_version = "3.11"\n',
    },
    "poetry": {
        "pyproject.toml": '[tool.poetry]\nname = "shop"\nversion = "0.1.0"\ndescription = ""\n'
        'authors = ["A <a@example.com>"]\n\n[tool.poetry.dependencies]\npython = "^3.11"\n'
        'humanize = "^4"\n\n[tool.poetry.group.dev.dependencies]\ntabulate = "^0.9"\n\n'
        '[build-system]\nrequires = ["poetry-core"]\nbuild-backend = "poetry.core.masonry.api"\n'
        # this machine reaches PyPI's simple index only, not the JSON API Poetry uses
        # for pypi.org by default: the same index, by its other door
        '\n[[tool.poetry.source]]\nname = "pypi-simple"\nurl = "https://pypi.org/simple/"\n'
        'priority = "primary"\n',
    },
    "pyproject": {  # no lock: [project] with a test extra
        "pyproject.toml": '[project]\nname = "shop"\nversion = "0.1.0"\n'
        'dependencies = ["humanize>=4"]\n\n[project.optional-dependencies]\n'
        'test = ["tabulate>=0.9"]\n',
    },
}
LOCK = {
    "uv": ["uv", "lock"],
    "pipenv": ["pipenv", "lock"],
    "poetry": ["poetry", "lock"],
}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("tool", list(CASES))
def test_the_test_stage_installs_main_and_dev_dependencies(tmp_path: Path, tool: str) -> None:
    app = tmp_path / "shop"
    (app / "tests").mkdir(parents=True)
    (app / ".git").mkdir()
    (app / "kiln.toml").write_text(APP)
    for name, text in CASES[tool].items():
        (app / name).write_text(text)
    runner = tmp_path / "runner"  # the CI runner's python
    subprocess.run([sys.executable, "-m", "venv", str(runner)], check=True)
    env = {
        **os.environ,
        "PATH": f"{runner / 'bin'}:{os.environ['PATH']}",
        "VIRTUAL_ENV": str(runner),
        "PIP_CACHE_DIR": str(CACHE / "pip"),
        "UV_CACHE_DIR": str(CACHE / "uv"),
        "POETRY_CACHE_DIR": str(CACHE / "poetry"),
        "POETRY_CONFIG_DIR": str(tmp_path / "poetry-config"),
        "PIPENV_CACHE_DIR": str(CACHE / "pipenv"),
        "WORKON_HOME": str(tmp_path / "pipenv-venvs"),  # where `pipenv lock` resolves
        "PIPENV_YES": "1",
        "PIPENV_NOSPIN": "1",
        "PYTHONPATH": "",
    }
    if tool in LOCK:  # the app's lock, written by the tool itself
        run(runner, ["python", "-m", "pip", "install", "-q", tool], app, env)
        run(runner, LOCK[tool], app, env)
    Kiln(app)("ci", "init", "github", "--provider", "local")
    workflow = YAML(typ="safe").load((app / ".github/workflows/deploy.yml").read_text())
    steps = [s for job in workflow["jobs"].values() for s in job.get("steps", [])]
    installs = [s["run"] for s in steps if s.get("name") == "Install the app's dependencies"]
    assert installs, steps
    for command in installs:
        run(runner, ["bash", "-ec", command], app, env)
    found = subprocess.run(
        [runner / "bin" / "python", "-c", "import humanize, tabulate; print('both')"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert found.stdout.strip() == "both", (installs, found.stderr)


def run(runner: Path, command: list[str], cwd: Path, env: dict[str, str]) -> None:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
