"""Keeping a fleet immutable over time: ``kiln prune`` (and drift, recycle)."""

from __future__ import annotations

import click
from rich.table import Table

from kiln.cli.app import State, cli, pass_state
from kiln.cli.images import _size
from kiln.cli.output import console, emit_json
from kiln.errors import ConfigError
from kiln.prune import local_images_in_use, plan_prune, prune
from kiln.store import Store

PROVIDER = click.option(
    "--provider",
    type=click.Choice(["local", "aws"]),
    default="local",
    show_default=True,
    help="Where the images live.",
)


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
    result = prune(store, plan, dry_run=dry_run)
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
