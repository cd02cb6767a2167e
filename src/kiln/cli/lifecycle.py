"""Keeping a fleet immutable over time: ``kiln drift``, ``kiln recycle``, ``kiln prune``."""

from __future__ import annotations

import time

import click
from rich.table import Table

from kiln import providers
from kiln.cli.app import State, cli, pass_state, provider_option
from kiln.cli.deploy import _engine, _finish, _Narrator, _sigterm_as_ctrl_c
from kiln.cli.fleetviews import print_result
from kiln.cli.images import _size
from kiln.cli.output import console, emit_json
from kiln.deploy.history import Result
from kiln.drift import InstanceDrift, fleet_drift
from kiln.durations import format_duration, parse_duration
from kiln.errors import ConfigError, GateFailed
from kiln.provider import FleetState, Provider
from kiln.prune import local_images_in_use, plan_prune, prune
from kiln.store import Store

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
    if provider == "aws":
        _prune_aws(state, keep, app, dry_run, as_json)
        return
    home = state.home()
    store = Store(home)
    plan = plan_prune(store, keep, local_images_in_use(home), app)
    result = prune(store, plan, dry_run=dry_run, still_in_use=lambda: local_images_in_use(home))
    if as_json:
        emit_json(result.as_dict())
        return
    if not plan.remove and not result.objects_removed:
        console.print(f"nothing to prune: {len(plan.keep)} image(s) kept")
        return
    table = Table(box=None, header_style="bold")
    for column in ("IMAGE", "APP", "SIZE", "ACTION"):
        table.add_column(column)
    for record in plan.remove:
        table.add_row(record.id, record.app, _size(record.manifest.size), "remove")
    for record in plan.keep:
        why = "in use" if record.id in plan.in_use else f"newest {keep}"
        table.add_row(record.id, record.app, _size(record.manifest.size), f"keep ({why})")
    console.print(table)
    verb = "would free" if dry_run else "freed"
    console.print(
        f"{verb} {_size(result.bytes_freed)} in {result.objects_removed} object(s)"
        + (" (dry run: nothing removed)" if dry_run else "")
    )


def _prune_aws(state: State, keep: int, app: str | None, dry_run: bool, as_json: bool) -> None:
    """Deregister old AMIs and delete their snapshots together, never one in use."""
    from kiln.aws.images import prune_amis
    from kiln.aws.session import connect
    from kiln.cli.aws import aws_settings

    name = app or state.config().config.app.name
    result = prune_amis(connect(aws_settings(state)), name, keep, dry_run=dry_run)
    if as_json:
        emit_json({**result.summary(), "dry_run": dry_run})
        return
    verb = "would delete" if dry_run else "deleted"
    for ami in result.deleted:
        console.print(f"{verb} {ami.id} ({ami.image}) and {len(ami.snapshots)} snapshot(s)")
    for ami in result.in_use:
        console.print(f"kept {ami.id} ({ami.image}): in use")
    console.print(f"{len(result.deleted)} AMI(s) {verb}, {len(result.kept)} newest kept")


def _local_fleet(state: State) -> tuple[Provider, FleetState]:
    loaded = state.config()
    provider = providers.open_provider("local", state.home(), loaded)
    return provider, provider.describe(loaded.config.app.name)


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
@click.pass_context
def drift_command(
    ctx: click.Context,
    state: State,
    as_json: bool,
    replace: bool,
    reason: str | None,
    provider: str,
) -> None:
    """Compare running instances with their images; exit 6 when anything drifted."""
    if provider == "aws":
        if replace:
            raise click.UsageError(
                "--replace is local-only: on AWS use 'kiln recycle --provider aws'"
            )
        from kiln.cli.awsfleet import drift_command as aws_drift

        ctx.invoke(aws_drift, as_json=as_json)
        return
    loaded = state.config()
    _provider, fleet = _local_fleet(state)
    report = fleet_drift(Store(state.home()), fleet, loaded.config.app.writable)
    drifted = [d for d in report if d.drifted]
    result: Result | None = None
    if not as_json:
        _print_drift(report)
    if replace and drifted:
        narrator = _Narrator()
        engine = _engine(state, "local", narrator)
        ids = [d.instance for d in drifted]
        with _sigterm_as_ctrl_c(), narrator.live(not as_json):
            result = engine.replace_instances(ids, kind="drift", why="drifted", reason=reason)
    if as_json:
        emit_json(
            {
                "fleet": fleet.name,
                "drifted": len(drifted),
                "instances": [d.as_dict() for d in report],
                "replaced": result.to_json() if result else None,
            }
        )
    elif result is not None:
        print_result(result)
    if result is not None:
        if not result.ok:
            raise click.exceptions.Exit(GateFailed.exit_code)
        return
    if drifted:
        raise click.exceptions.Exit(DRIFT_FOUND)


DRIFT_FOUND = 6


def _print_drift(report: list[InstanceDrift]) -> None:
    if not report:
        console.print("no running instances to check")
        return
    for item in report:
        if not item.drifted:
            console.print(f"[green]clean[/]    {item.instance}  {item.image}", markup=True)
            continue
        console.print(f"[bold red]drifted[/]  {item.instance}  {item.image}", markup=True)
        if item.error:
            console.print(f"           {item.error}", markup=False)
        for change in item.changes[:20]:
            console.print(f"           {change.kind:<9} {change.path}", markup=False)
        if len(item.changes) > 20:
            console.print(f"           ... and {len(item.changes) - 20} more", markup=False)


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
@click.pass_context
def recycle_command(
    ctx: click.Context,
    state: State,
    max_age: str | None,
    dry_run: bool,
    reason: str | None,
    as_json: bool,
    wait: str | None,
    provider: str,
) -> None:
    """Replace instances older than a maximum age with fresh ones from the same image."""
    if provider == "aws":
        from kiln.cli.awsfleet import recycle_command as aws_recycle

        ctx.invoke(aws_recycle, max_age=max_age, wait=wait, as_json=as_json)
        return
    age = _max_age(state, max_age)
    _provider, fleet = _local_fleet(state)
    now = time.time()
    old = sorted(
        (i for i in fleet.live() if i.in_service and now - i.launched_at > age),
        key=lambda i: i.launched_at,
    )
    ids = [i.id for i in old]
    if dry_run or not ids:
        if as_json:
            emit_json({"fleet": fleet.name, "max_age": age, "due": ids, "dry_run": dry_run})
        elif not ids:
            console.print(f"no instance of {fleet.name} is older than {format_duration(age)}")
        else:
            for inst in old:
                age_now = format_duration(now - inst.launched_at)
                console.print(f"would replace {inst.id} ({inst.image}), {age_now} old")
        return
    narrator = _Narrator()
    engine = _engine(state, "local", narrator)
    timeout = parse_duration(wait) if wait else None
    with _sigterm_as_ctrl_c(), narrator.live(not as_json):
        result = engine.replace_instances(
            ids,
            kind="recycle",
            why=f"older than {format_duration(age)}",
            reason=reason,
            wait=timeout,
        )
    _finish(result, as_json)


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
