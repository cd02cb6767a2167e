"""Every command shown in README.md and docs/*.md is run here, or listed with a reason.

Each doc's commands run in order, as a reader following along would, in a
sandbox: a private KILN_HOME, a small real app, the real local agent, and a
moto server for the AWS commands (see tests/docs/awsdocs.py). A doc that gains
a command gets it run by its scenario; a doc without a scenario fails until
the command is given one or allow-listed below.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from ci.test_ci_docs import RUNNABLE as CI_DOC_RUNS
from docs.awsdocs import AWS, is_aws
from docs.doccommands import (
    Command,
    anchors,
    doc_files,
    extract,
    inline_commands,
    relative_links,
)
from docs.sandbox import Sandbox, Step
from kiln.cli import cli, load_all_commands
from kiln.home import Home
from local.localtest import APP, free_port, kill_everything

load_all_commands()  # unknown_words() walks group.commands

# (doc, command) -> why no test here runs it
ALLOWED: dict[tuple[str, str], str] = {
    ("README.md", "make demo"): "runs `kiln demo`, which tests/test_demo.py runs",
    ("README.md", "make test"): "the whole suite: CI runs it (.ci/run)",
    ("docs/ui.md", "kiln ui"): "serves until Ctrl-C: tests/ui/test_ui_browser.py runs it",
    ("docs/ui.md", "kiln ui --provider aws"): "serves until Ctrl-C; the AWS read path is the "
    "same platform status/history that tests/aws_deploy exercises",
    ("docs/ui.md", "kiln ui --open"): "opens a browser: tests/ui/test_agent_page.py runs "
    "kiln ui --json against the agent's page and opens its address in headless Chromium",
    ("docs/ui.md", "kiln ui --json"): "needs a deployed fleet with ui_listen: "
    "tests/ui/test_agent_page.py runs it",
    (
        "docs/ci.md",
        'git add .github/workflows/deploy.yml && git commit -m "Deploy with kiln" && git push',
    ): "pushes to the reader's remote; `kiln ci init github` before it is run",
    ("docs/environments.md", "kiln ci init github --promote staging:production --provider local"): (
        "tests/ci/test_ci_promote.py runs it for both providers, with actionlint and the schemas"
    ),
    ("docs/ci.md", "kiln ci init github|gitlab [--provider aws|local] [--force]"): (
        "a synopsis, not a command; each form is run by tests/ci/test_ci_init.py"
    ),
}
ALLOWED_CI_DOC = "run by tests/ci/test_ci_docs.py"


def commands() -> list[Command]:
    return [c for path in doc_files() for c in extract(path)]


def why_not_run(command: Command) -> str | None:
    # the deploy job's steps ($RUNNER_TEMP) run here, against moto, with real results
    ci_doc_runs = command.text.startswith(CI_DOC_RUNS) and "$RUNNER_TEMP" not in command.text
    if command.doc == "docs/ci.md" and ci_doc_runs:
        return ALLOWED_CI_DOC
    return ALLOWED.get((command.doc, command.text))


# README.md -------------------------------------------------------------------


def my_app(box: Sandbox) -> None:
    """An app without a kiln.toml, as `kiln init` expects it."""
    (box.cwd / "my-app").mkdir()
    (box.cwd / "my-app" / "app.py").write_text(APP)


def review(box: Sandbox) -> None:
    """What the reader reviews after `kiln init`: a free port, quick checks."""
    path = box.cwd / "kiln.toml"
    text = path.read_text()
    for old, new in (
        ('listen = "127.0.0.1:8080"', f'listen = "127.0.0.1:{free_port()}"'),
        ('interval = "1s"', 'interval = "100ms"'),
        ("healthy_threshold = 2", "healthy_threshold = 1"),
        ('drain = "10s"', 'drain = "2s"\nsettle = "0s"'),
    ):
        assert old in text, f"kiln init no longer writes {old!r}"
        text = text.replace(old, new)
    path.write_text(text)


def first_instance(box: Sandbox, placeholder: str) -> None:
    status = json.loads(box.sh("kiln status --json").stdout)
    box.values[placeholder] = status["instances"][0]["id"][:6]


def new_version(box: Sandbox) -> None:
    """The reader changed the code: the next deploy bakes a new image."""
    with (box.cwd / "app.py").open("a") as f:
        f.write("# v2\n")


README = {
    "cd my-app": Step(prepare=my_app),
    "kiln init": Step(shows=("kiln.toml",)),
    "kiln bake": Step(prepare=review, shows=("img-",)),
    "kiln deploy": Step(shows=("serves img-",)),
    "kiln status": Step(shows=("healthy", "127.0.0.1:")),
    "kiln deploy --strategy blue-green": Step(prepare=new_version, shows=("serves img-",)),
    "kiln history": Step(shows=("blue-green", "succeeded")),
    "kiln drift": Step(shows=("clean",)),
    "kiln agent status": Step(shows=("agent running, pid", "healthy")),
    "kiln logs INSTANCE": Step(prepare=lambda box: first_instance(box, "INSTANCE")),
}

# docs/deploying.md -------------------------------------------------------------


def bake_new_version(box: Sandbox, placeholder: str) -> None:
    """Change the code and bake it: the image the doc's placeholder stands for."""
    new_version(box)
    box.values[placeholder] = json.loads(box.sh("kiln bake --json").stdout)["image"]


def two_instances_then_bake(box: Sandbox) -> None:
    """The doc's plan: a 2-instance fleet on img-aaaaaaaaaaaa, img-bbbbbbbbbbbb baked."""
    box.sh("kiln scale 2")
    status = json.loads(box.sh("kiln status --json").stdout)
    box.values["img-aaaaaaaaaaaa"] = status["current_image"]
    bake_new_version(box, "img-bbbbbbbbbbbb")


DEPLOYING = {
    "kiln deploy --image img-3f2a9c1d0b7e --strategy blue-green": Step(
        prepare=lambda box: bake_new_version(box, "img-3f2a9c1d0b7e"),
        shows=("shop serves img-3f2a9c1d0b7e",),
    ),
    "kiln deploy --dry-run": Step(prepare=new_version),
    "kiln scale 4": Step(shows=("4",)),
    "kiln deploy --image img-bbbbbbbbbbbb --dry-run": Step(
        prepare=two_instances_then_bake,
        shows=(
            "rolling deployment of shop: img-aaaaaaaaaaaa → img-bbbbbbbbbbbb, 2 instance(s)",
            "1. launch 1 x img-bbbbbbbbbbbb, wait until healthy, stable for",
            "2. terminate i-",
            "(replaced)",
        ),
    ),
}

# docs/environments.md ---------------------------------------------------------

ENVIRONMENTS_TOML = """
[environments.staging]
env = {{ GREETING = "hello from staging" }}
fleet = {{ size = 1 }}
provider.local = {{ listen = "127.0.0.1:{staging}" }}

[environments.production]
require = "staging"
provider.local = {{ listen = "127.0.0.1:{production}" }}
"""


def two_environments(box: Sandbox) -> None:
    """The guide's [environments], on free ports."""
    with (box.cwd / "kiln.toml").open("a") as f:
        f.write(ENVIRONMENTS_TOML.format(staging=free_port(), production=free_port()))


ENVIRONMENTS = {
    "kiln config check": Step(prepare=two_environments, shows=("production, staging",)),
    "kiln deploy --env staging": Step(shows=("shop-staging serves img-",)),
    "kiln images": Step(shows=("CODE", "code-")),
    "kiln promote staging production": Step(
        shows=("promoted from staging", "shop-production serves img-")
    ),
    "kiln deploy --env production": Step(
        prepare=new_version, exit=7, shows=("was never healthy in staging",)
    ),
    "kiln status --all-envs": Step(shows=("shop-staging", "shop-production", "same code")),
    "kiln history --env production": Step(shows=("promoted from staging",)),
    "kiln ci init github --promote staging:production --provider local": Step(shows=("wrote",)),
}

LOCAL_APP = """
[app]
name = "shop"
run = "python3 app.py"

[health]
path = "/health"
interval = "100ms"
healthy_threshold = 1
grace = "5s"

[fleet]
size = 2
settle = "0.5s"
drain = "2s"

[provider.local]
listen = "127.0.0.1:{port}"
stop_timeout = "2s"
"""

LOCAL: dict[str, dict[str, Step]] = {
    "README.md": README,
    "docs/deploying.md": DEPLOYING,
    "docs/environments.md": ENVIRONMENTS,
}


@pytest.fixture
def local_box(tmp_path: Path) -> Iterator[Sandbox]:
    """A directory holding a small real app, and the agent killed at the end."""
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "kiln.toml").write_text(LOCAL_APP.format(port=free_port()))
    try:
        yield Sandbox(tmp_path)
    finally:
        kill_everything(Home.resolve(os.environ["KILN_HOME"]))


def run_doc(doc: str, box: Sandbox, steps: dict[str, Step], *, aws: bool) -> None:
    """Run the doc's local (or AWS) commands in the order it shows them."""
    ran = []
    for command in commands():
        if command.doc == doc and not why_not_run(command) and is_aws(command.text) == aws:
            box.run(command, steps.get(command.text, Step()))
            ran.append(command.text)
    assert ran, f"{doc} shows no command to run"


@pytest.mark.parametrize("doc", sorted(LOCAL))
def test_local_commands_run(doc: str, local_box: Sandbox) -> None:
    if doc == "README.md":  # `kiln init` starts from an app without kiln.toml
        for name in ("app.py", "kiln.toml"):
            (local_box.cwd / name).unlink()
    run_doc(doc, local_box, LOCAL[doc], aws=False)


@pytest.mark.aws
@pytest.mark.parametrize("doc", sorted(AWS))
def test_aws_commands_run(doc: str, aws_box: Sandbox) -> None:
    run_doc(doc, aws_box, AWS[doc], aws=True)


# the lists stay honest ---------------------------------------------------------


def test_every_command_is_run_or_allow_listed() -> None:
    orphans = [
        str(c)
        for c in commands()
        if not why_not_run(c) and c.doc not in (AWS if is_aws(c.text) else LOCAL)
    ]
    assert not orphans, f"no test runs these: give the doc a scenario or allow-list {orphans}"
    shown = {(c.doc, c.text) for c in commands()}
    assert not set(ALLOWED) - shown, "allow-listed commands the docs no longer show"
    for doc, steps in [*LOCAL.items(), *AWS.items()]:
        stale = set(steps) - {c.text for c in commands() if c.doc == doc}
        assert not stale, f"{doc}: steps for commands it no longer shows: {stale}"


def test_the_docs_show_commands() -> None:
    docs = {c.doc for c in commands()}
    assert {"README.md", "docs/deploying.md", "docs/aws.md", "docs/ci.md"} <= docs


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: p.name)
def test_relative_links_resolve(path: Path) -> None:
    """Links go to files that exist and to headings that exist."""
    broken = []
    for link in relative_links(path):
        target, _, anchor = link.partition("#")
        file = (path.parent / target) if target else path
        if not file.exists() or (anchor and file.suffix == ".md" and anchor not in anchors(file)):
            broken.append(link)
    assert not broken, f"{path.name}: broken links {broken}"


def unknown_words(span: str) -> list[str]:
    """Commands and options of an inline ``kiln ...`` span that the CLI does not have.

    ``kiln aws history|drift`` and ``kiln deploy/rollback --provider aws`` name
    several commands at once: each one is checked.
    """
    words = span.split()[1:]
    group: click.Command = cli
    i = 0
    while i < len(words) and isinstance(group, click.Group) and not words[i].startswith("-"):
        names = re.split(r"[|/]", words[i])
        if not all(n in group.commands for n in names):
            break
        if len(names) > 1:
            return [w for n in names for w in unknown_words(f"kiln {n} {' '.join(words[i + 1 :])}")]
        group = group.commands[names[0]]
        i += 1
    if isinstance(group, click.Group) and i < len(words) and words[i].isidentifier():
        return [words[i]]
    known = {o for p in [*cli.params, *group.params] for o in [*p.opts, *p.secondary_opts]}
    flags = (w.strip("[]|,.").split("=")[0] for w in words[i:])
    return [f for f in flags if f.startswith("-") and f not in known and f not in ("-", "--")]


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: p.name)
def test_inline_commands_name_real_commands_and_options(path: Path) -> None:
    """`kiln ...` in the prose is not run, but its command and flags must exist."""
    wrong = {span: bad for span in inline_commands(path) if (bad := unknown_words(span))}
    assert not wrong, f"{path.name}: {wrong}"
