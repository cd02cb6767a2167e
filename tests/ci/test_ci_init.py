"""`kiln ci init`: pipelines that real linters accept and that do what the issue asks."""

from __future__ import annotations

import functools
import json
import shlex
import subprocess
import sys
import threading
from collections.abc import Callable
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from ruamel.yaml import YAML

if TYPE_CHECKING:
    from kilntest import Kiln

Lint = Callable[..., list[dict[str, object]]]
SchemaCheck = Callable[[str, Path], subprocess.CompletedProcess[str]]

LOCAL_APP = '[app]\nname = "shop"\nrun = "python3 app.py"\n'
AWS_APP = LOCAL_APP + "[provider.aws]\n"
DEFAULT_BRANCH_ONLY = (
    "github.event_name == 'push' && "
    "github.ref == format('refs/heads/{0}', github.event.repository.default_branch)"
)
VARIANTS = [
    pytest.param(".", AWS_APP, "aws", id="aws"),
    pytest.param("services/shop", AWS_APP, "aws", id="aws-in-subdir"),
    pytest.param(".", AWS_APP + 'region = "eu-west-1"\n', "aws", id="aws-region-in-config"),
    pytest.param(".", LOCAL_APP, "local", id="local"),
]


def app_in_repo(kiln: Kiln, sub: str = ".", config: str = AWS_APP, tests: bool = True) -> Path:
    """A git checkout with the app at ``sub``; the CLI then runs from the app."""
    repo = kiln.cwd
    (repo / ".git").mkdir(exist_ok=True)
    kiln.cwd = (repo / sub).resolve()
    kiln.cwd.mkdir(parents=True, exist_ok=True)
    (kiln.cwd / "kiln.toml").write_text(config)
    (kiln.cwd / "requirements.txt").write_text("")
    if tests:
        (kiln.cwd / "tests").mkdir(exist_ok=True)
    return repo


def load(path: Path) -> Any:
    return YAML(typ="safe").load(path.read_text())


@pytest.mark.parametrize(("sub", "config", "provider"), VARIANTS)
def test_github_workflow_passes_actionlint_and_schema(
    kiln: Kiln, actionlint: Lint, schema_check: SchemaCheck, sub: str, config: str, provider: str
) -> None:
    repo = app_in_repo(kiln, sub, config)
    kiln("ci", "init", "github", "--provider", provider)
    path = repo / ".github/workflows/deploy.yml"
    assert actionlint(path) == []
    checked = schema_check("github-workflows", path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert load(path)["defaults"]["run"]["working-directory"] == sub


@pytest.mark.parametrize(("sub", "config", "provider"), VARIANTS)
def test_gitlab_pipeline_passes_schema(
    kiln: Kiln, schema_check: SchemaCheck, sub: str, config: str, provider: str
) -> None:
    repo = app_in_repo(kiln, sub, config)
    kiln("ci", "init", "gitlab", "--provider", provider)
    path = repo / ".gitlab-ci.yml"
    checked = schema_check("gitlab-ci", path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    before = load(path)[".kiln"]["before_script"]
    assert (f'cd "{sub}"' in before) == (sub != ".")


def test_the_validators_are_real(
    tmp_path: Path, actionlint: Lint, schema_check: SchemaCheck
) -> None:
    """A broken workflow is caught, so a clean result above means something."""
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n"
        "    steps:\n      - run: echo ${{ secret.NOPE }}\n"
    )
    assert any("secret" in str(problem["message"]) for problem in actionlint(bad))
    bad.write_text("stages: [test]\njob:\n  stage: test\n  script: 42\n")
    assert schema_check("gitlab-ci", bad).returncode != 0


def test_github_deploys_only_pushes_to_the_default_branch_one_at_a_time(kiln: Kiln) -> None:
    repo = app_in_repo(kiln)
    kiln("ci", "init", "github")
    workflow = load(repo / ".github/workflows/deploy.yml")
    test, deploy = workflow["jobs"]["test"], workflow["jobs"]["deploy"]
    assert deploy["needs"] == "test"
    assert deploy["if"] == DEFAULT_BRANCH_ONLY
    assert deploy["concurrency"] == {"group": "kiln-deploy-shop", "cancel-in-progress": False}
    assert deploy["env"]["AWS_ACCESS_KEY_ID"] == "${{ secrets.AWS_ACCESS_KEY_ID }}"
    assert deploy["env"]["AWS_SECRET_ACCESS_KEY"] == "${{ secrets.AWS_SECRET_ACCESS_KEY }}"
    assert deploy["env"]["AWS_REGION"] == "${{ secrets.AWS_REGION }}"
    for job in (test, deploy):
        python = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/setup"))
        assert python["with"]["cache"] == "pip"
    runs = [step.get("run", "") for step in deploy["steps"]]
    bake = runs.index('kiln bake --provider aws --boot-test --json > "$RUNNER_TEMP/bake.json"')
    roll = runs.index('kiln deploy --provider aws --json > "$RUNNER_TEMP/deploy.json"')
    assert bake < roll
    summary = deploy["steps"][-1]
    assert summary["if"] == "always()"
    assert '>> "$GITHUB_STEP_SUMMARY"' in summary["run"]
    assert "kiln ci summary" in summary["run"]
    # A failed deploy fails the job: bash -e, nothing swallows the exit code.
    assert workflow["defaults"]["run"]["shell"] == "bash"
    assert not any("|| true" in run or "continue-on-error" in run for run in runs)
    assert "continue-on-error" not in str(deploy)
    assert [s.get("run") for s in test["steps"]][-1] == "python -m pytest -q"


def test_gitlab_deploys_only_pushes_to_the_default_branch_one_at_a_time(kiln: Kiln) -> None:
    repo = app_in_repo(kiln)
    kiln("ci", "init", "gitlab")
    pipeline = load(repo / ".gitlab-ci.yml")
    deploy = pipeline["deploy"]
    assert pipeline["stages"] == ["test", "deploy"]
    assert deploy["rules"] == [
        {"if": '$CI_PIPELINE_SOURCE == "push" && $CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH'}
    ]
    assert deploy["resource_group"] == "kiln-deploy-shop"
    assert pipeline["variables"]["PIP_CACHE_DIR"] == "$CI_PROJECT_DIR/.kiln/cache/pip"
    assert pipeline[".kiln"]["cache"]["paths"] == [".kiln/cache/pip"]
    assert deploy["script"][1:] == [
        "mkdir -p .kiln",
        "kiln bake --provider aws --boot-test --json > .kiln/bake.json",
        "kiln deploy --provider aws --json > .kiln/deploy.json",
    ]
    assert "AWS_SECRET_ACCESS_KEY" in deploy["script"][0]
    assert deploy["after_script"] == [
        "kiln ci summary .kiln/bake.json .kiln/deploy.json | tee .kiln/kiln-summary.md"
    ]
    assert deploy["artifacts"]["when"] == "always"


def test_local_provider_deploys_from_a_runner_on_the_fleets_host(kiln: Kiln) -> None:
    repo = app_in_repo(kiln, config=LOCAL_APP)
    kiln("ci", "init", "github", "--provider", "local")
    deploy = load(repo / ".github/workflows/deploy.yml")["jobs"]["deploy"]
    assert deploy["runs-on"] == ["self-hosted", "linux"]
    assert "env" not in deploy
    assert "kiln deploy --provider local --json" in str(deploy["steps"])
    kiln("ci", "init", "gitlab", "--provider", "local")
    job = load(repo / ".gitlab-ci.yml")["deploy"]
    assert job["tags"] == ["kiln"] and "variables" not in job
    # A shell runner's Python is externally managed: kiln goes into a venv.
    assert job["before_script"][0] == 'python3 -m venv "$CI_PROJECT_DIR/.kiln/venv"'
    assert job["after_script"][0] == job["before_script"][1]
    assert job["script"][2] == "kiln deploy --provider local --json > .kiln/deploy.json"


def test_refuses_to_overwrite_without_force(kiln: Kiln) -> None:
    repo = app_in_repo(kiln)
    target = repo / ".github/workflows/deploy.yml"
    target.parent.mkdir(parents=True)
    target.write_text("# mine\n")
    result = kiln("ci", "init", "github", ok=False)
    assert result.exit_code == 1
    assert "already exists" in result.stderr and "--force" in result.stderr
    assert target.read_text() == "# mine\n"
    kiln("ci", "init", "github", "--force")
    assert "kiln bake" in target.read_text()


def test_aws_pipeline_needs_an_aws_section(kiln: Kiln) -> None:
    app_in_repo(kiln, config=LOCAL_APP)
    result = kiln("ci", "init", "gitlab", ok=False)
    assert "no [provider.aws] section" in result.stderr
    assert "--provider local" in result.stderr
    assert "Traceback" not in result.stderr


def test_options_shape_the_pipeline(kiln: Kiln) -> None:
    app_in_repo(kiln, tests=False, config=AWS_APP.replace("\n[", '\npython = "python3.11"\n[', 1))
    text = kiln(
        "ci", "init", "gitlab", "-o", "-", "--install", "kiln @ git+https://example.org/kiln"
    ).stdout
    pipeline = YAML(typ="safe").load(text)
    assert pipeline["default"]["image"] == "python:3.11"
    assert pipeline[".kiln"]["before_script"][0] == (
        "python -m pip install 'kiln @ git+https://example.org/kiln'"
    )
    argv = shlex.split(pipeline[".kiln"]["before_script"][0])
    assert argv[-1] == "kiln @ git+https://example.org/kiln"
    assert pipeline["test"]["script"] == ["kiln config check"]
    assert "No tests found" in text
    text = kiln("ci", "init", "github", "-o", "-", "--test-command", "make check: all").stdout
    steps = YAML(typ="safe").load(text)["jobs"]["test"]["steps"]
    assert steps[-1] == {"name": "Test", "run": "make check: all"}


MANIFESTS = [
    pytest.param(
        {"requirements.txt": "flask\n", "requirements-dev.txt": "pytest-cov\n"},
        ["python -m pip install -r requirements.txt -r requirements-dev.txt"],
        ["requirements.txt", "requirements-dev.txt"],
        id="requirements",
    ),
    pytest.param(
        {"Pipfile": "", "Pipfile.lock": "{}"},
        ["python -m pip install pipenv", "pipenv install --dev --system --deploy"],
        ["Pipfile", "Pipfile.lock"],
        id="pipenv",
    ),
    pytest.param(
        {"pyproject.toml": '[tool.poetry.dependencies]\npython = "^3.11"\n', "poetry.lock": ""},
        [
            "python -m pip install poetry",
            "POETRY_VIRTUALENVS_CREATE=false poetry install --no-interaction --no-root",
        ],
        ["pyproject.toml", "poetry.lock"],
        id="poetry",
    ),
    pytest.param(
        {"pyproject.toml": '[project]\nname = "x"\ndependencies = []\n', "uv.lock": ""},
        ["python -m pip install uv", "uv export", "python -m pip install -r"],
        ["pyproject.toml", "uv.lock"],
        id="uv",
    ),
    pytest.param(
        {"pyproject.toml": '[project]\nname = "x"\ndependencies = ["flask"]\n'},
        ["python -c 'import tomllib;", "python -m pip install -r"],
        ["pyproject.toml"],
        id="pyproject",
    ),
]


@pytest.mark.parametrize(("files", "commands", "cached"), MANIFESTS)
def test_the_test_stage_installs_the_apps_dependencies_from_its_manifest(
    kiln: Kiln,
    actionlint: Lint,
    schema_check: SchemaCheck,
    files: dict[str, str],
    commands: list[str],
    cached: list[str],
) -> None:
    """Before, only a requirements.txt was installed (tests/realapps/test_ci_dependencies.py
    runs these with the real tools)."""
    repo = app_in_repo(kiln, config=LOCAL_APP)
    (kiln.cwd / "requirements.txt").unlink()
    for name, text in files.items():
        (kiln.cwd / name).write_text(text)
    kiln("ci", "init", "github", "--provider", "local")
    kiln("ci", "init", "gitlab", "--provider", "local")
    github, gitlab = repo / ".github/workflows/deploy.yml", repo / ".gitlab-ci.yml"
    assert actionlint(github) == []
    for schema, path in (("github-workflows", github), ("gitlab-ci", gitlab)):
        checked = schema_check(schema, path)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    steps = load(github)["jobs"]["test"]["steps"]
    installs = [s["run"] for s in steps if s.get("name") == "Install the app's dependencies"]
    assert len(installs) == len(commands)
    assert all(run.startswith(start) for run, start in zip(installs, commands, strict=True))
    names = [s.get("name") for s in steps]
    assert names.index("Install the app's dependencies") < names.index("Test")
    script = load(gitlab)["test"]["script"]
    start = script.index(installs[0])
    assert script[start : start + len(installs)] == installs
    assert script.index("python -m pytest -q") > start
    setup = next(s for s in steps if "setup-python" in s.get("uses", ""))
    assert setup["with"]["cache-dependency-path"].split() == ["kiln.toml", *cached]  # its key


class Dist:
    def __init__(self, direct_url: str | None) -> None:
        self.direct_url = direct_url

    def read_text(self, name: str) -> str | None:
        return self.direct_url if name == "direct_url.json" else None


def test_runners_install_the_kiln_that_wrote_the_pipeline(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """kiln-deploy is not on the package index: a version pin is used only for a kiln
    installed from an index; otherwise a git commit, or a clear error."""
    from kiln import ci
    from kiln.errors import CiError

    monkeypatch.delenv("KILN_CI_INSTALL")
    git = '{"url": "https://example.org/kiln.git", "vcs_info": {"vcs": "git", "commit_id": "abc1"}}'
    monkeypatch.setattr(ci.metadata, "distribution", lambda name: Dist(git))
    assert ci.default_install() == "kiln-deploy @ git+https://example.org/kiln.git@abc1"
    monkeypatch.setattr(ci.metadata, "distribution", lambda name: Dist(None))
    assert ci.default_install() == f"kiln-deploy=={ci.__version__}"
    # a checkout installed by path: its origin, at the commit checked out
    checkout = tmp_path / "kiln"
    subprocess.run(["git", "init", "-q", str(checkout)], check=True)
    subprocess.run(
        ["git", "-C", str(checkout), "-c", "user.name=t", "-c", "user.email=t@t",
         "commit", "-q", "--allow-empty", "-m", "x"],
        check=True,
    )  # fmt: skip
    local = json.dumps({"url": f"file://{checkout}", "dir_info": {"editable": True}})
    monkeypatch.setattr(ci.metadata, "distribution", lambda name: Dist(local))
    with pytest.raises(CiError, match="cannot tell how a CI runner can install") as unknown:
        ci.default_install()  # no remote: nothing a runner could reach
    assert unknown.value.hint and "--install" in unknown.value.hint
    remote = ["git", "-C", str(checkout), "remote", "add", "origin"]
    subprocess.run([*remote, "git@github.com:acme/kiln.git"], check=True)
    head = subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    assert ci.default_install() == f"kiln-deploy @ git+https://github.com/acme/kiln.git@{head}"
    monkeypatch.setenv("KILN_CI_INSTALL", "kiln-deploy @ https://example.org/kiln.whl")
    assert ci.default_install() == "kiln-deploy @ https://example.org/kiln.whl"


@pytest.mark.slow
def test_the_generated_install_line_installs_kiln_from_its_repository(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The pipeline's own pip line, run against this checkout's repository (a bare
    clone served over HTTP on 127.0.0.1 stands in for its git host): pip builds
    kiln-deploy from that commit."""
    from kiln import ci

    monkeypatch.delenv("KILN_CI_INSTALL")
    repo = Path(__file__).resolve().parents[2]
    bare = tmp_path / "kiln.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(repo), str(bare)], check=True)
    subprocess.run(["git", "-C", str(bare), "update-server-info"], check=True)  # dumb HTTP
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/kiln.git"
        work = tmp_path / "work"
        subprocess.run(["git", "clone", "-q", url, str(work)], check=True)
        local = json.dumps({"url": f"file://{work}", "dir_info": {"editable": True}})
        monkeypatch.setattr(ci.metadata, "distribution", lambda name: Dist(local))
        spec = ci.default_install()
        assert spec.startswith(f"kiln-deploy @ git+{url}@")
        _pip_wheel(ci, spec, tmp_path / "wheels")
    finally:
        server.shutdown()
        server.server_close()


def _pip_wheel(ci: Any, spec: str, out: Path) -> None:
    command = shlex.split(ci._install_command(ci.PipelineSpec(
        "github", "aws", "shop", ".", "3.11", spec, (), (), (), None
    )))  # fmt: skip
    assert command[:4] == ["python", "-m", "pip", "install"]
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
         "-w", str(out), *command[4:]],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [w.name.split("-")[:2] for w in out.glob("*.whl")] == [["kiln_deploy", ci.__version__]]


def test_aws_deploy_stage_runs_the_apps_build_ami_script(kiln: Kiln) -> None:
    """An app with scripts/build-ami.sh (as examples/acebook) bakes with it, with the
    deploy user's keys from the job's environment, on pushes to the default branch."""
    repo = app_in_repo(kiln)
    (kiln.cwd / "scripts").mkdir()
    (kiln.cwd / "scripts/build-ami.sh").write_text("#!/bin/sh\n")
    kiln("ci", "init", "github")
    deploy = load(repo / ".github/workflows/deploy.yml")["jobs"]["deploy"]
    runs = [step.get("run", "") for step in deploy["steps"]]
    assert 'scripts/build-ami.sh --boot-test > "$RUNNER_TEMP/bake.json"' in runs
    assert deploy["if"] == DEFAULT_BRANCH_ONLY
    assert deploy["env"]["AWS_ACCESS_KEY_ID"] == "${{ secrets.AWS_ACCESS_KEY_ID }}"
    kiln("ci", "init", "gitlab")
    script = load(repo / ".gitlab-ci.yml")["deploy"]["script"]
    assert "scripts/build-ami.sh --boot-test > .kiln/bake.json" in script


def test_aws_pipelines_reap_leftovers_of_cancelled_bakes_on_a_schedule(kiln: Kiln) -> None:
    """A cancelled bake leaves its security group to expire (its builder takes longer
    to terminate than CI waits): the pipeline removes it with a scheduled reap."""
    repo = app_in_repo(kiln)
    kiln("ci", "init", "github")
    workflow = load(repo / ".github/workflows/deploy.yml")
    assert workflow["on"]["schedule"] == [{"cron": "23 * * * *"}, {"cron": "41 5 * * *"}]
    reap = workflow["jobs"]["reap"]
    assert reap["if"] == "github.event_name == 'schedule'"
    assert workflow["jobs"]["test"]["if"] == "github.event_name != 'schedule'"
    assert reap["env"]["AWS_SECRET_ACCESS_KEY"] == "${{ secrets.AWS_SECRET_ACCESS_KEY }}"
    assert [s.get("run") for s in reap["steps"]][-1] == "kiln aws reap"
    kiln("ci", "init", "gitlab")
    pipeline = load(repo / ".gitlab-ci.yml")
    assert pipeline["reap"]["rules"] == [{"if": '$CI_PIPELINE_SOURCE == "schedule"'}]
    assert pipeline["reap"]["script"] == ["kiln aws reap"]
    assert pipeline["test"]["rules"] == [{"if": '$CI_PIPELINE_SOURCE != "schedule"'}]

    kiln("ci", "init", "github", "--provider", "local", "--force")
    assert "schedule" not in load(repo / ".github/workflows/deploy.yml")["on"]
    assert "reap" not in load(repo / ".github/workflows/deploy.yml")["jobs"]


def test_aws_pipelines_refresh_daily_in_the_deploy_concurrency_group(kiln: Kiln) -> None:
    """kiln refresh runs on its own daily schedule (the default branch) and queues
    behind a running deployment, never beside it: the deploy job's group."""
    repo = app_in_repo(kiln)
    kiln("ci", "init", "github")
    workflow = load(repo / ".github/workflows/deploy.yml")
    jobs = workflow["jobs"]
    refresh = jobs["refresh"]
    assert {"cron": "41 5 * * *"} in workflow["on"]["schedule"]
    assert refresh["if"] == (
        "github.event_name == 'schedule' && github.event.schedule == '41 5 * * *'"
    )
    assert refresh["concurrency"] == jobs["deploy"]["concurrency"]
    assert refresh["concurrency"]["cancel-in-progress"] is False
    assert refresh["env"] == jobs["deploy"]["env"]
    assert [s.get("run") for s in refresh["steps"]][-1] == "kiln refresh --provider aws"
    assert "Check AWS credentials" in [s.get("name") for s in refresh["steps"]]

    kiln("ci", "init", "gitlab")
    pipeline = load(repo / ".gitlab-ci.yml")
    job = pipeline["refresh"]
    assert job["rules"] == [
        {"if": '$CI_PIPELINE_SOURCE == "schedule" && $KILN_SCHEDULE == "refresh"'}
    ]
    assert job["resource_group"] == pipeline["deploy"]["resource_group"]
    assert job["script"][-1] == "kiln refresh --provider aws"
    assert "KILN_SCHEDULE = refresh" in (repo / ".gitlab-ci.yml").read_text()

    kiln("ci", "init", "github", "--provider", "local", "--force")
    assert "refresh" not in load(repo / ".github/workflows/deploy.yml")["jobs"]
