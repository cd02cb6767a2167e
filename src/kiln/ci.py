"""CI/CD pipelines that test every push and bake + deploy the default branch.

``kiln ci init`` renders one of two templates (``templates/github-deploy.yml``,
``templates/gitlab-ci.yml``) for the app a kiln.toml describes. The pipeline
only calls kiln (``kiln bake --json``, ``kiln deploy --json``, ``kiln ci
summary``), so everything it does can also be run by hand, and the same
deploy lock and history apply whoever runs it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import tomllib
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path
from typing import Any, Literal

from kiln import DISTRIBUTION, __version__
from kiln.config import LoadedConfig
from kiln.errors import CiError

System = Literal["github", "gitlab"]
Provider = Literal["aws", "local"]
SYSTEMS: tuple[System, ...] = ("github", "gitlab")
PROVIDERS: tuple[Provider, ...] = ("aws", "local")

# Debian 12's python3: the AWS provider's default base image runs what CI baked.
DEFAULT_PYTHON = "3.11"
_TEMPLATES = {"github": "github-deploy.yml", "gitlab": "gitlab-ci.yml"}
_TARGETS = {"github": Path(".github/workflows/deploy.yml"), "gitlab": Path(".gitlab-ci.yml")}
_PLACEHOLDER = re.compile(r"<<([a-z_]+)>>")
_SAFE_PATH = re.compile(r"^[A-Za-z0-9_./-]+$")
_PLAIN = re.compile(r"^[A-Za-z0-9_][\w./=<>~+,@:\-\[\] ]*$")


@dataclass(frozen=True)
class PipelineSpec:
    """Everything a pipeline template needs: a plain value, easy to test."""

    system: System
    provider: Provider
    app: str
    workdir: str
    python: str
    install: str
    test_commands: tuple[str, ...]
    # what installs the app's dependencies (its test and dev ones too) before the tests,
    # and the files those commands read (the pip cache's key)
    app_install: tuple[str, ...]
    manifests: tuple[str, ...]
    region: str | None
    bake_script: str | None = None  # the app's own scripts/build-ami.sh (AWS), if it has one
    staging: str | None = None  # --promote FROM:TO: every push deploys here...
    production: str | None = None  # ...and a tag or an approval promotes it here

    @property
    def env_flag(self) -> str:
        """`` --env staging`` on the bake and deploy commands, when environments are used."""
        return f" --env {self.staging}" if self.staging else ""


def next_step(spec: PipelineSpec) -> str:
    """What the user does after the file is written, which depends on where it deploys."""
    if spec.provider == "aws":
        where = "repository secrets" if spec.system == "github" else "masked CI/CD variables"
        region = "" if spec.region else " (and AWS_REGION)"
        return (
            f"add AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY as {where}{region}, "
            "commit the file and push"
        )
    return "register a runner on the fleet's host, commit the file and push"


INSTALL_ENV = "KILN_CI_INSTALL"
# An AWS app's own bake step (examples/acebook has one): it checks the deploy
# user's keys and the region, then runs kiln bake; the pipeline runs it when present.
BAKE_SCRIPT = "scripts/build-ami.sh"


def default_install() -> str:
    """How runners install the kiln that wrote the pipeline, as a pip requirement.

    kiln-deploy is not on the package index, so a version pin alone would not
    install: ``$KILN_CI_INSTALL`` when set; else the git commit kiln was
    installed from; else, for a checkout installed by path, its ``origin``
    remote at the checked-out commit; else, installed from an index, that
    version. Anything else (a local wheel, a checkout without a remote) has
    no address a runner can reach: say so rather than write a line that fails.
    """
    explicit = os.environ.get(INSTALL_ENV, "").strip()
    if explicit:
        return explicit
    try:
        raw = metadata.distribution(DISTRIBUTION).read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        raw = None
    if not raw:
        return f"{DISTRIBUTION}=={__version__}"  # from an index, which therefore has it
    try:
        origin = json.loads(raw)
    except json.JSONDecodeError:
        origin = {}
    url = str(origin.get("url") or "")
    vcs = origin.get("vcs_info") or {}
    if vcs.get("vcs") == "git" and vcs.get("commit_id") and url:
        return f"{DISTRIBUTION} @ git+{url}@{vcs['commit_id']}"
    if "dir_info" in origin and url.startswith("file://"):
        found = _checkout_remote(Path(url.removeprefix("file://")))
        if found:
            return f"{DISTRIBUTION} @ git+{found[0]}@{found[1]}"
    raise CiError(
        f"cannot tell how a CI runner can install this kiln (installed from {url or '?'}, "
        "which a runner cannot reach)",
        hint=f"pass --install 'kiln-deploy @ git+https://HOST/ORG/kiln@COMMIT' (or a wheel's "
        f"URL), or set {INSTALL_ENV}",
    )


def _checkout_remote(path: Path) -> tuple[str, str] | None:
    """(origin URL as https or file, HEAD commit) of the git checkout at ``path``."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(path), *args], capture_output=True, text=True, check=False
        )
        return done.stdout.strip() if done.returncode == 0 else ""

    remote, commit = git("config", "--get", "remote.origin.url"), git("rev-parse", "HEAD")
    scp = re.match(r"^[\w.-]+@([\w.-]+):(.+)$", remote)
    if scp:  # git@github.com:org/kiln.git -> https://github.com/org/kiln.git
        remote = f"https://{scp.group(1)}/{scp.group(2)}"
    if not commit or not remote.startswith(("https://", "http://", "file://")):
        return None
    return remote, commit


def find_repo_root(start: Path) -> Path:
    """The enclosing git checkout (pipelines live at its root), else ``start``."""
    for candidate in (start, *start.parents):
        if (candidate / ".git").exists():
            return candidate
    return start


def default_target(system: System, root: Path) -> Path:
    """Where GitHub or GitLab looks for the pipeline in a repository."""
    return root / _TARGETS[system]


def plan_pipeline(
    loaded: LoadedConfig,
    system: System,
    provider: Provider,
    *,
    root: Path,
    install: str | None = None,
    test_command: str | None = None,
    promote: str | None = None,
) -> PipelineSpec:
    """Decide what the pipeline does for this app; explain anything that cannot work.

    ``promote`` ('staging:production'): pushes deploy to the first environment,
    a tag or an approval promotes what it serves to the second.
    """
    staging, production = _promotion(loaded, promote)
    config = loaded.config.for_environment(production)
    if provider == "aws" and config.provider.aws is None:
        raise CiError(
            "kiln.toml has no [provider.aws] section, so the pipeline cannot deploy to AWS",
            hint="add [provider.aws] (see docs/config.md), or use --provider local",
        )
    app_dir = loaded.root.resolve()
    try:
        workdir = app_dir.relative_to(root.resolve()).as_posix() or "."
    except ValueError:
        raise CiError(
            f"the app ({app_dir}) is not inside the repository root {root}",
            hint="pass --root with the directory that holds the app's repository",
        ) from None
    if not _SAFE_PATH.match(workdir):
        raise CiError(
            f"the app's path {workdir!r} has characters a pipeline cannot quote simply",
            hint="use letters, digits, '.', '_', '-' and '/' in the app's directory names",
        )
    region = config.provider.aws.region if config.provider.aws else None
    app_install, manifests = dependency_install(app_dir)
    return PipelineSpec(
        system=system,
        provider=provider,
        app=config.app.name,
        workdir=workdir,
        python=_python_version(config.app.python),
        install=install or default_install(),
        test_commands=_test_commands(app_dir, test_command),
        app_install=app_install,
        manifests=manifests,
        region=region,
        bake_script=BAKE_SCRIPT
        if provider == "aws" and (app_dir / BAKE_SCRIPT).is_file()
        else None,
        staging=staging,
        production=production,
    )


def _promotion(loaded: LoadedConfig, promote: str | None) -> tuple[str | None, str | None]:
    """'staging:production' -> both names, each an environment of kiln.toml."""
    if promote is None:
        return None, None
    staging, _, production = promote.partition(":")
    known = loaded.config.environments
    if not staging or not production or staging == production:
        raise CiError(
            f"--promote {promote!r} is not FROM:TO", hint="e.g. --promote staging:production"
        )
    missing = [name for name in (staging, production) if name not in known]
    if missing:
        raise CiError(
            f"--promote names {', '.join(missing)}, not in kiln.toml's [environments] "
            f"({', '.join(sorted(known)) or 'none'})",
            hint="add [environments.NAME] tables (see docs/environments.md)",
        )
    return staging, production


def _python_version(wanted: str | None) -> str:
    match = re.search(r"(\d+\.\d+)", wanted or "")
    return match.group(1) if match else DEFAULT_PYTHON


# requirement files that hold what only the tests and development need, beside
# requirements.txt (the first of each pair that exists)
_DEV_REQUIREMENTS = (
    ("requirements-dev.txt", "dev-requirements.txt"),
    ("requirements-test.txt", "test-requirements.txt"),
    ("requirements/dev.txt", "requirements/development.txt"),
    ("requirements/test.txt", "requirements/tests.txt"),
)
_TEST_LIST = ".kiln-test-requirements.txt"
# [project] dependencies with the test and dev extras and dependency groups (PEP 735)
_PEP621_TEST_DEPS = (
    'python -c \'import tomllib; p = tomllib.load(open("pyproject.toml", "rb")); '
    'o = p["project"].get("optional-dependencies", {}); '
    'g = p.get("dependency-groups", {}); '
    'print(*p["project"].get("dependencies", []), *[d for k in ("test", "tests", '
    '"dev") for d in o.get(k, []) + g.get(k, []) if isinstance(d, str)], sep="\\n")\''
    f" > {_TEST_LIST}"
)


def dependency_install(app_dir: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The commands that install the app's dependencies, dev and test ones included,
    for its tests in CI, and the files they read.

    The same precedence as the image's build (``kiln init``): requirements.txt,
    then Pipfile.lock, poetry.lock, Pipfile, uv.lock, Poetry's table, [project].
    Unlike the image, the tests need what the app keeps for development (pytest
    plugins, httpx for a TestClient...), so each tool installs its dev set too.
    """

    def has(name: str) -> bool:
        return (app_dir / name).is_file()

    project = _pyproject(app_dir)
    poetry = isinstance(project.get("tool", {}).get("poetry", {}).get("dependencies"), dict)
    pipenv = "python -m pip install pipenv"
    poetry_install = (
        "python -m pip install poetry",
        # into the runner's python, not a virtualenv of Poetry's; no global config written
        # (--no-root: the app itself need not be a package)
        "POETRY_VIRTUALENVS_CREATE=false poetry install --no-interaction --no-root",
    )
    if has("requirements.txt"):
        dev = [next((n for n in pair if has(n)), None) for pair in _DEV_REQUIREMENTS]
        files = ["requirements.txt", *(name for name in dev if name)]
        options = " ".join(f"-r {name}" for name in files)
        return (f"python -m pip install {options}",), tuple(files)
    if has("Pipfile.lock"):
        return (pipenv, "pipenv install --dev --system --deploy"), ("Pipfile", "Pipfile.lock")
    if has("poetry.lock") and has("pyproject.toml"):
        return poetry_install, ("pyproject.toml", "poetry.lock")
    if has("Pipfile"):
        return (pipenv, "pipenv install --dev --system --skip-lock"), ("Pipfile",)
    if has("uv.lock") and has("pyproject.toml"):
        export = (
            "uv export --frozen --no-emit-project --no-hashes --format requirements-txt"
            f" -o {_TEST_LIST}"
        )
        install = f"python -m pip install -r {_TEST_LIST}"
        return ("python -m pip install uv", export, install), ("pyproject.toml", "uv.lock")
    if poetry:
        return poetry_install, ("pyproject.toml",)
    if isinstance(project.get("project", {}).get("dependencies"), list):
        install = f"python -m pip install -r {_TEST_LIST}"
        return (_PEP621_TEST_DEPS, install), ("pyproject.toml",)
    return (), ()


def _pyproject(app_dir: Path) -> dict[str, Any]:
    try:
        return tomllib.loads((app_dir / "pyproject.toml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}


def _test_commands(app_dir: Path, explicit: str | None) -> tuple[str, ...]:
    if explicit is not None:
        return (explicit,) if explicit.strip() else ()
    has_tests = (app_dir / "tests").is_dir() or any(app_dir.glob("test_*.py"))
    return ("python -m pip install pytest", "python -m pytest -q") if has_tests else ()


def render_pipeline(spec: PipelineSpec) -> str:
    """The pipeline file's text."""
    template = resources.files("kiln").joinpath("templates", _TEMPLATES[spec.system])
    values = _github_values(spec) if spec.system == "github" else _gitlab_values(spec)
    values |= {
        "version": __version__,
        "app": spec.app,
        "python": spec.python,
        "install_command": _scalar(_install_command(spec)),
        "provider": spec.provider,
        "workdir": spec.workdir,
        "setup_note": _setup_note(spec),
        "bake_command": _bake_command(spec),
        "env_flag": spec.env_flag,
        "group_suffix": _group_suffix(spec),
    }
    return _fill(template.read_text(encoding="utf-8"), values)


def _bake_command(spec: PipelineSpec) -> str:
    """The app's build-ami.sh (it passes its arguments on to kiln bake), else kiln bake.

    On AWS an AMI must boot and pass its health check before the deploy step takes it.
    """
    flags = (" --boot-test" if spec.provider == "aws" else "") + spec.env_flag
    if spec.bake_script:
        return f"{spec.bake_script}{flags}"
    return f"kiln bake --provider {spec.provider}{flags} --json"


def _install_command(spec: PipelineSpec) -> str:
    return f"python -m pip install {shlex.quote(spec.install)}"


def _cache_files(spec: PipelineSpec) -> list[str]:
    prefix = "" if spec.workdir == "." else f"{spec.workdir}/"
    return [prefix + name for name in ("kiln.toml", *spec.manifests)]


def _github_values(spec: PipelineSpec) -> dict[str, str]:
    steps: list[str] = []
    if spec.test_commands:
        for command in spec.app_install:
            steps += _github_step("Install the app's dependencies", command)
    for number, command in enumerate(spec.test_commands, 1):
        steps += _github_step(
            "Test" if number == len(spec.test_commands) else "Prepare tests", command
        )
    if not spec.test_commands:
        steps.append(
            "# No tests found: run `kiln ci init --test-command CMD --force` to add yours."
        )
    aws = spec.provider == "aws"
    region = _scalar(spec.region) if spec.region else "${{ secrets.AWS_REGION }}"
    env = [
        "env:",
        "  AWS_ACCESS_KEY_ID: ${{ secrets.AWS_ACCESS_KEY_ID }}",
        "  AWS_SECRET_ACCESS_KEY: ${{ secrets.AWS_SECRET_ACCESS_KEY }}",
        f"  AWS_REGION: {region}",
    ]
    check = [
        "- name: Check AWS credentials",
        "  run: |",
        '    if [[ -z "$AWS_ACCESS_KEY_ID" || -z "$AWS_SECRET_ACCESS_KEY" ||',
        '          -z "$AWS_REGION" ]]; then',
        '      echo "::error::set the repository secrets AWS_ACCESS_KEY_ID, '
        'AWS_SECRET_ACCESS_KEY and AWS_REGION"',
        "      exit 1",
        "    fi",
    ]
    return {
        "cache_paths": "\n".join(_cache_files(spec)),
        "test_steps": "\n".join(steps),
        "deploy_runner": "ubuntu-latest" if aws else "[self-hosted, linux]",
        "deploy_env": "\n".join(env) if aws else "",
        "credential_check": "\n".join(check) if aws else "",
        "schedule": "\n".join(_GITHUB_SCHEDULE) if aws else "",
        "reap_job": "\n".join(_github_reap(spec, env) + _github_refresh(spec, env, check))
        if aws
        else "",
        # with tags listed, a push to a branch triggers only if branches are listed too
        "tags_trigger": "  branches: ['**']\n  tags: ['v*']" if spec.production else "",
        "deploy_environment": f"environment: {spec.staging}" if spec.staging else "",
        "promote_job": "\n".join(_github_promote(spec, env, check)) if spec.production else "",
    }


def _github_promote(spec: PipelineSpec, env: list[str], check: list[str]) -> list[str]:
    """After staging's deploy (or on a v* tag), behind the production GitHub environment."""
    aws = spec.provider == "aws"
    result = '"$RUNNER_TEMP/promote.json"'
    return [
        "",
        "promote:",
        f"  # Promotes the code {spec.staging} serves now to {spec.production}, without baking.",
        f"  # Require an approval: Settings > Environments > {spec.production} > Required",
        "  # reviewers; then this job waits for one before it runs.",
        "  needs: [test, deploy]",
        "  if: >-",
        "    !cancelled() && needs.test.result == 'success' &&",
        "    (needs.deploy.result == 'success' || startsWith(github.ref, 'refs/tags/v'))",
        f"  environment: {spec.production}",
        f"  runs-on: {'ubuntu-latest' if aws else '[self-hosted, linux]'}",
        "  concurrency:",
        f"    group: kiln-deploy-{spec.app}-{spec.production}",
        "    cancel-in-progress: false",
        *[f"  {line}" for line in (env if aws else [])],
        "  steps:",
        "    - uses: actions/checkout@v4",
        "    - uses: actions/setup-python@v5",
        "      with:",
        f'        python-version: "{spec.python}"',
        "    - name: Install kiln",
        f"      run: {_scalar(_install_command(spec))}",
        *[f"    {line}" for line in (check if aws else [])],
        f"    - name: Promote {spec.staging} to {spec.production}",
        f"      run: kiln promote {spec.staging} {spec.production} --provider {spec.provider}"
        f" --json > {result}",
        "    - name: Summary",
        "      if: always()",
        f'      run: kiln ci summary {result} >> "$GITHUB_STEP_SUMMARY"',
    ]


# A cancelled bake has ~10 s to clean up; a builder takes 30-90 s to terminate,
# so its security group is left to expire and be removed by this hourly job.
REAP_CRON = "23 * * * *"
# Daily: a patched base image reaches the fleet within a day (kiln refresh).
REFRESH_CRON = "41 5 * * *"
_GITHUB_SCHEDULE = [
    "schedule:",
    f'  - cron: "{REAP_CRON}"  # kiln aws reap: leftovers of cancelled bakes',
    f'  - cron: "{REFRESH_CRON}"  # kiln refresh: the running image on the newest base',
]


def _group_suffix(spec: PipelineSpec) -> str:
    """The deploy job's concurrency group is per environment when it deploys to one."""
    return f"-{spec.staging}" if spec.staging else ""


def _github_refresh(spec: PipelineSpec, env: list[str], check: list[str]) -> list[str]:
    """The daily refresh, in the deploy job's concurrency group: it never races a deploy."""
    return [
        "",
        "refresh:",
        "  # Daily, on the default branch (where schedules run): re-bake the running",
        "  # image on the newest base image and deploy it when that makes a new AMI.",
        f"  if: github.event_name == 'schedule' && github.event.schedule == '{REFRESH_CRON}'",
        "  runs-on: ubuntu-latest",
        "  concurrency:",
        f"    group: kiln-deploy-{spec.app}{_group_suffix(spec)}",
        "    cancel-in-progress: false",
        *[f"  {line}" for line in env],
        "  steps:",
        "    - uses: actions/checkout@v4",
        "    - uses: actions/setup-python@v5",
        "      with:",
        f'        python-version: "{spec.python}"',
        "    - name: Install kiln",
        f"      run: {_scalar(_install_command(spec))}",
        *[f"    {line}" for line in check],
        "    - name: Re-bake on the newest base image, deploy if it changed",
        f"      run: kiln refresh --provider aws{spec.env_flag}",
    ]


def _github_reap(spec: PipelineSpec, env: list[str]) -> list[str]:
    return [
        "",
        "reap:",
        "  # Hourly: remove what cancelled or killed bakes left behind (builders,",
        "  # security groups, key pairs) once their kiln:expires tag has passed.",
        "  if: github.event_name == 'schedule'",
        "  runs-on: ubuntu-latest",
        *[f"  {line}" for line in env],
        "  steps:",
        "    - uses: actions/checkout@v4",
        "    - uses: actions/setup-python@v5",
        "      with:",
        f'        python-version: "{spec.python}"',
        "    - name: Install kiln",
        f"      run: {_scalar(_install_command(spec))}",
        "    - name: Remove expired leftovers of interrupted bakes",
        "      run: kiln aws reap",
    ]


def _github_step(name: str, command: str) -> list[str]:
    return [f"- name: {name}", f"  run: {_scalar(command)}"]


def _gitlab_values(spec: PipelineSpec) -> dict[str, str]:
    commands: list[str] = []
    if spec.test_commands:
        commands += spec.app_install
    commands += spec.test_commands
    steps = [f"- {_scalar(command)}" for command in commands]
    if not commands:
        steps.append(
            "# No tests found: run `kiln ci init --test-command CMD --force` to add yours."
        )
    aws = spec.provider == "aws"
    check = [
        "- |",
        '  if [ -z "$AWS_ACCESS_KEY_ID" ] || [ -z "$AWS_SECRET_ACCESS_KEY" ] ||',
        '     [ -z "$AWS_REGION" ]; then',
        '    echo "set the masked CI/CD variables AWS_ACCESS_KEY_ID,'
        ' AWS_SECRET_ACCESS_KEY and AWS_REGION"',
        "    exit 1",
        "  fi",
    ]
    env = ["variables:", f"  AWS_REGION: {_scalar(spec.region)}"] if aws and spec.region else []
    prefix = "" if spec.workdir == "." else f"{spec.workdir}/"
    cd_workdir = _cd_workdir(spec)
    return {
        "cache_paths": "\n".join(f"- {name}" for name in _cache_files(spec)),
        "test_steps": "\n".join(steps),
        "deploy_runner": "" if aws else "tags: [kiln]",
        "deploy_env": "\n".join(env),
        "credential_check": "\n".join(check) if aws else "",
        "cd_workdir": cd_workdir,
        "deploy_before": "" if aws else "\n".join(_gitlab_local_before(spec)),
        "after_setup": "\n".join(_gitlab_after_setup(spec)),
        "workdir_prefix": prefix,
        "reap_job": "\n".join(_gitlab_reap(env) + _gitlab_refresh(spec, env, check)) if aws else "",
        "deploy_environment": f"environment: {spec.staging}" if spec.staging else "",
        "promote_stage": "  - promote" if spec.production else "",
        "promote_job": "\n".join(_gitlab_promote(spec, env, check, prefix))
        if spec.production
        else "",
    }


# A shell runner's system Python is the distribution's (PEP 668): use a venv.
_ACTIVATE = '. "$CI_PROJECT_DIR/.kiln/venv/bin/activate"'


def _cd_workdir(spec: PipelineSpec) -> str:
    return "" if spec.workdir == "." else f'- cd "{spec.workdir}"'


def _gitlab_local_before(spec: PipelineSpec) -> list[str]:
    """A shell runner on the fleet's host: kiln in a venv of its own."""
    cd_workdir = _cd_workdir(spec)
    return [
        "before_script:",
        '  - python3 -m venv "$CI_PROJECT_DIR/.kiln/venv"',
        f"  - {_ACTIVATE}",
        f"  - {_scalar(_install_command(spec))}",
        *([f"  {cd_workdir}"] if cd_workdir else []),
    ]


def _gitlab_after_setup(spec: PipelineSpec) -> list[str]:
    return ([] if spec.provider == "aws" else [f"- {_ACTIVATE}"]) + [_cd_workdir(spec)]


def _gitlab_promote(spec: PipelineSpec, env: list[str], check: list[str], prefix: str) -> list[str]:
    """A manual job after staging's deploy on the default branch; automatic on a v* tag."""
    aws = spec.provider == "aws"
    return [
        "",
        f"# Promotes the code {spec.staging} serves now to {spec.production}, without baking:",
        "# started by hand (the play button) after a default-branch pipeline, or by a v* tag.",
        "promote:",
        "  extends: .kiln",
        "  stage: promote",
        "  rules:",
        "    - if: $CI_COMMIT_TAG =~ /^v/",
        '    - if: $CI_PIPELINE_SOURCE == "push" && $CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH',
        "      when: manual",
        f"  environment: {spec.production}",
        f"  resource_group: kiln-deploy-{spec.app}-{spec.production}",
        *([] if aws else ["  tags: [kiln]"]),
        *[f"  {line}" for line in env],
        *[f"  {line}" for line in (_gitlab_local_before(spec) if not aws else [])],
        "  script:",
        *[f"    {line}" for line in check],
        "    - mkdir -p .kiln",
        f"    - kiln promote {spec.staging} {spec.production} --provider {spec.provider}"
        " --json > .kiln/promote.json",
        "  after_script:",
        *[f"    {line}" for line in _gitlab_after_setup(spec) if line],
        "    - kiln ci summary .kiln/promote.json | tee .kiln/kiln-summary.md",
        "  artifacts:",
        "    when: always",
        "    paths:",
        f"      - {prefix}.kiln/promote.json",
        f"      - {prefix}.kiln/kiln-summary.md",
    ]


def _gitlab_reap(env: list[str]) -> list[str]:
    return [
        "",
        "# Run by a pipeline schedule (Build > Pipeline schedules, hourly): remove what",
        "# cancelled or killed bakes left behind once their kiln:expires tag has passed.",
        "reap:",
        "  extends: .kiln",
        "  stage: deploy",
        "  rules:",
        '    - if: $CI_PIPELINE_SOURCE == "schedule"',
        *[f"  {line}" for line in env],
        "  script:",
        "    - kiln aws reap",
    ]


def _gitlab_refresh(spec: PipelineSpec, env: list[str], check: list[str]) -> list[str]:
    return [
        "",
        "# Run by a daily pipeline schedule whose variable KILN_SCHEDULE is 'refresh'",
        "# (schedules run on the default branch): re-bake the running image on the newest",
        "# base image and deploy it when that makes a new AMI. It shares the deploy job's",
        "# resource_group, so it never races a deployment.",
        "refresh:",
        "  extends: .kiln",
        "  stage: deploy",
        "  rules:",
        '    - if: $CI_PIPELINE_SOURCE == "schedule" && $KILN_SCHEDULE == "refresh"',
        f"  resource_group: kiln-deploy-{spec.app}{_group_suffix(spec)}",
        *[f"  {line}" for line in env],
        "  script:",
        *[f"    {line}" for line in check],
        f"    - kiln refresh --provider aws{spec.env_flag}",
    ]


def _setup_note(spec: PipelineSpec) -> str:
    if spec.provider == "local":
        if spec.system == "github":
            return (
                "#\n# Deploys with the local provider: the deploy job runs on a self-hosted\n"
                "# runner (labels: self-hosted, linux) on the host that serves the fleet.\n"
                "# Keep the agent running there as a service ('kiln agent start') so the\n"
                "# fleet outlives CI jobs."
            )
        return (
            "#\n# Deploys with the local provider: the deploy job runs on a shell runner\n"
            "# tagged 'kiln' on the host that serves the fleet. Keep the agent running\n"
            "# there as a service ('kiln agent start') so the fleet outlives CI jobs."
        )
    where = (
        "repository secrets\n# (Settings > Secrets and variables > Actions)"
        if spec.system == "github"
        else "masked CI/CD variables\n# (Settings > CI/CD > Variables)"
    )
    region = (
        f"# The region, {spec.region}, comes from kiln.toml."
        if spec.region
        else "# Store the region as AWS_REGION too."
    )
    schedule = (
        "# The reap job runs on the hourly schedule below, the refresh job daily."
        if spec.system == "github"
        else "# Add an hourly pipeline schedule (Build > Pipeline schedules) for the reap job,\n"
        "# and a daily one with the variable KILN_SCHEDULE = refresh for the refresh job."
    )
    return (
        "#\n# Before the first push, create the deploy user (kiln aws create-deploy-user\n"
        f"# --team NAME) and store its keys as {where}:\n"
        f"# AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.\n{region}\n{schedule}"
    )


def _scalar(text: str | None) -> str:
    """A YAML scalar for ``text``: plain when unambiguous, double-quoted otherwise."""
    text = text or ""
    if _PLAIN.match(text) and ": " not in text and not text.endswith(":"):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _fill(template: str, values: dict[str, str]) -> str:
    """Replace ``<<name>>``; a placeholder alone on its line takes that line's indent."""
    out: list[str] = []
    for line in template.splitlines():
        alone = _PLACEHOLDER.fullmatch(line.strip())
        if alone:
            indent = line[: len(line) - len(line.lstrip())]
            block = values[alone.group(1)]
            out += [indent + part if part else part for part in block.splitlines()]
            continue
        out.append(_PLACEHOLDER.sub(lambda m: values[m.group(1)], line))
    return "\n".join(out) + "\n"


def write_pipeline(path: Path, text: str, *, force: bool = False) -> None:
    """Write the pipeline; an existing file is someone's work, kept unless ``force``."""
    if path.exists() and not force:
        raise CiError(f"{path} already exists", hint="use --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
