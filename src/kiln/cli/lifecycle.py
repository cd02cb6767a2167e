"""Keeping a fleet immutable over time: ``kiln drift``, ``kiln recycle``, ``kiln prune``."""

from __future__ import annotations

import sys

import click

from kiln.cli.app import State, cli, pass_state, provider_option
from kiln.cli.deploy import _Narrator, _sigterm_as_ctrl_c, exit_for
from kiln.cli.fleetviews import print_result
from kiln.cli.output import print_report
from kiln.durations import parse_duration
from kiln.errors import ConfigError
from kiln.platform import Report

PROVIDER = provider_option("Where the images live.")
FLEET_PROVIDER = provider_option("Where the fleet runs.")


def _keep_default(state: State, keep: int | None) -> int:
    if keep is not None:
        return keep
    try:
        return state.config().config.fleet.keep_images
    except ConfigError:
        return 5


@cli.command("prune")
@click.option(
    "--keep",
    type=click.IntRange(min=1),
    help="Images kept per app (default: [fleet] keep_images, or 5).",
)
@click.option("--app", help="Only this app's images (default: every app).")
@click.option("--dry-run", is_flag=True, help="Show what would go; remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@PROVIDER
@pass_state
def prune_command(
    state: State, keep: int | None, app: str | None, dry_run: bool, as_json: bool, provider: str
) -> None:
    """Remove old images, never one in use, and free their storage."""
    keep = _keep_default(state, keep)
    print_report(state.platform(provider).prune(keep, app, dry_run=dry_run), as_json)


@cli.command("drift")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option(
    "--replace",
    is_flag=True,
    help="Replace drifted instances from their image through the rolling engine.",
)
@click.option("--reason", help="Why, recorded in the history (with --replace).")
@FLEET_PROVIDER
@pass_state
def drift_command(
    state: State,
    as_json: bool,
    replace: bool,
    reason: str | None,
    provider: str,
) -> None:
    """Compare running instances with their images; exit 6 when anything drifted."""
    narrator = _Narrator()
    platform = state.platform(provider)
    with _sigterm_as_ctrl_c(), narrator.live(replace and not as_json):
        report = platform.drift(replace=replace, reason=reason, on_event=narrator)
    _conclude(report, as_json)


def _conclude(report: Report, as_json: bool) -> None:
    """Print a report; a deployment it ran decides the exit code, else the report does."""
    result = report.result
    if result is not None and not as_json:
        print_report(Report(None, lines=report.lines), as_json=False)
        print_result(result)
    else:
        print_report(report, as_json)
    if result is not None:
        exit_for(result)
    elif report.exit_code:
        raise click.exceptions.Exit(report.exit_code)


@cli.command("recycle")
@click.option(
    "--max-age", metavar="AGE", help="Replace instances older than this (default: [fleet] max_age)."
)
@click.option("--dry-run", is_flag=True, help="List the instances that would be replaced.")
@click.option("--reason", help="Why, recorded in the history.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--wait", metavar="TIMEOUT", help="Wait for a deployment holding the fleet.")
@FLEET_PROVIDER
@pass_state
def recycle_command(
    state: State,
    max_age: str | None,
    dry_run: bool,
    reason: str | None,
    as_json: bool,
    wait: str | None,
    provider: str,
) -> None:
    """Replace instances older than a maximum age with fresh ones from the same image."""
    age = _max_age(state, max_age)
    timeout = parse_duration(wait) if wait else None
    narrator = _Narrator()
    platform = state.platform(provider)
    with _sigterm_as_ctrl_c(), narrator.live(not as_json and not dry_run):
        report = platform.recycle(
            age, dry_run=dry_run, reason=reason, wait=timeout, on_event=narrator
        )
    _conclude(report, as_json)


def _max_age(state: State, given: str | None) -> float:
    if given is not None:
        try:
            return parse_duration(given)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--max-age") from exc
    configured = state.config().config.fleet.max_age
    if configured is None:
        raise ConfigError(
            "no maximum age to recycle by", hint="pass --max-age 7d or set [fleet] max_age"
        )
    return configured


@cli.command("refresh")
@click.option("--reason", help="Why, recorded in the history.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--wait", metavar="TIMEOUT", help="Wait for a deployment holding the fleet.")
@FLEET_PROVIDER
@pass_state
def refresh_command(
    state: State, reason: str | None, as_json: bool, wait: str | None, provider: str
) -> None:
    """Bring the fleet onto patched system files, through the deploy engine.

    Local: a security update of python3 or a shared library changes files
    under /usr but not the image, so no deploy replaces the instances that
    still run the old copies; `kiln status` names them, this replaces them
    from the same image. AWS: re-bake the running image on the newest base
    image and deploy the new AMI; nothing to do when the base is unchanged.
    """
    timeout = parse_duration(wait) if wait else None
    narrator = _Narrator()
    platform = state.platform(provider)
    with _sigterm_as_ctrl_c(), narrator.live(not as_json):
        report = platform.refresh(reason=reason, wait=timeout, on_event=narrator)
    _conclude(report, as_json)


@cli.command("destroy")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--reason", help="Why, recorded in the history.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--wait", metavar="TIMEOUT", help="Wait for a deployment holding the fleet.")
@FLEET_PROVIDER
@pass_state
def destroy_command(
    state: State, yes: bool, reason: str | None, as_json: bool, wait: str | None, provider: str
) -> None:
    """Remove the fleet: drain and stop every instance, free its listener, keep its history.

    An unfinished deployment is abandoned and the warm standby stops too. A
    later 'kiln deploy' of the same app starts a fresh fleet.
    """
    platform = state.platform(provider)
    fleet = state.config().config.fleet_name
    if not yes:
        if not sys.stdin.isatty():
            raise ConfigError(
                f"kiln destroy stops every instance of {fleet}", hint="pass --yes to confirm"
            )
        click.confirm(f"Stop every instance of {fleet} and forget the fleet?", abort=True)
    timeout = parse_duration(wait) if wait else None
    narrator = _Narrator()
    with _sigterm_as_ctrl_c(), narrator.live(not as_json):
        report = platform.destroy(reason=reason, wait=timeout, on_event=narrator)
    _conclude(report, as_json)
