"""``kiln ci``: a pipeline that tests every push and deploys the default branch."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from kiln.ci import (
    PROVIDERS,
    SYSTEMS,
    Provider,
    System,
    default_target,
    find_repo_root,
    next_step,
    plan_pipeline,
    render_pipeline,
    write_pipeline,
)
from kiln.ci_summary import load_result, render_summary
from kiln.cli.app import State, cli, pass_state
from kiln.cli.output import console


@cli.group()
def ci() -> None:
    """CI/CD pipelines: bake and deploy on every push to the default branch."""


@ci.command("init")
@click.argument("system", type=click.Choice(SYSTEMS))
@click.option(
    "--provider",
    type=click.Choice(PROVIDERS),
    default="aws",
    show_default=True,
    help="Where the pipeline deploys.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing pipeline file.")
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    help="Repository root (default: the git checkout holding kiln.toml).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    help="Write here instead ('-' for stdout). Default: where GitHub/GitLab look.",
)
@click.option("--test-command", metavar="CMD", help="Test command (default: pytest if tests/).")
@click.option("--install", metavar="SPEC", help="pip spec that installs kiln on the runner.")
@click.option(
    "--promote",
    metavar="FROM:TO",
    help="Environments: every push deploys to FROM; a v* tag or an approval (GitHub "
    "environment reviewers, GitLab manual job) promotes it to TO, e.g. staging:production.",
)
@pass_state
def ci_init(
    state: State,
    system: System,
    provider: Provider,
    force: bool,
    root: Path | None,
    output: Path | None,
    test_command: str | None,
    install: str | None,
    promote: str | None,
) -> None:
    """Write a GitHub Actions workflow or .gitlab-ci.yml for this app.

    Every push runs the tests; a push to the default branch then bakes an
    image and deploys it, one deployment at a time, with AWS credentials
    from the CI secrets AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.
    """
    loaded = state.config()
    repo = (root or find_repo_root(loaded.root)).absolute()
    spec = plan_pipeline(
        loaded,
        system,
        provider,
        root=repo,
        install=install,
        test_command=test_command,
        promote=promote,
    )
    text = render_pipeline(spec)
    if output is not None and str(output) == "-":
        sys.stdout.write(text)
        return
    target = output or default_target(system, repo)
    write_pipeline(target, text, force=force)
    console.print(f"wrote {target}")
    console.print(f"next: {next_step(spec)}")


@ci.command("summary")
@click.argument("results", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
def ci_summary(results: tuple[Path, ...]) -> None:
    """Turn the JSON results of kiln bake and deploy into a Markdown job summary.

    A missing or empty file is reported as a step that printed no result;
    the command itself never fails, so it can run after a failed deploy.
    """
    docs = [(path.stem, load_result(path)) for path in results]
    sys.stdout.write(render_summary(docs))
