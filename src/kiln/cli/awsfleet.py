"""``kiln aws status|history|drift|recycle``: the AWS fleet, read from AWS itself.

Everything shown comes from AWS (server groups, target health, launch
template versions, the lock's security group), so any CI runner prints the
same. ``kiln deploy/rollback/scale --provider aws`` drive the same
:class:`kiln.aws.deployments.AwsDeployments`.
"""

from __future__ import annotations

from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from kiln.aws.deployments import AwsDeployments, open_deployments
from kiln.cli.app import State, pass_state
from kiln.cli.aws import aws_group
from kiln.cli.fleetviews import print_history
from kiln.cli.output import console, emit_json, note
from kiln.deploy.engine import Event
from kiln.durations import format_duration, parse_duration
from kiln.errors import ConfigError, DeployError

JSON = click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")


def _fleet(state: State) -> AwsDeployments:
    def narrate(event: Event) -> None:
        if event.kind != "progress":
            note(event.message)

    return open_deployments(state.home(), state.config(), on_event=narrate)


@aws_group.command("status")
@JSON
@pass_state
def status_command(state: State, as_json: bool) -> None:
    """The fleet on AWS: server groups, instances, health, the deploy lock."""
    data = _fleet(state).status()
    if as_json:
        emit_json(data)
        return
    console.print(f"[bold]fleet {data['fleet']}[/] (aws)  endpoint {data['endpoint'] or '-'}")
    groups = Table(box=None, header_style="bold")
    for column in ("GROUP", "IMAGE", "DESIRED", "MIN", "MAX", "IN TARGET GROUP", "TEMPLATE"):
        groups.add_column(column)
    for g in data["groups"]:
        groups.add_row(
            g["name"],
            g["image"],
            str(g["desired"]),
            str(g["min"]),
            str(g["max"]),
            "attached" if g["attached"] else "-",
            f"v{g['template_version']}",
        )
    console.print(groups if data["groups"] else "no server groups")
    if data["instances"]:
        table = Table(box=None, header_style="bold")
        for column in ("INSTANCE", "GROUP", "IMAGE", "STATE", "IN SERVICE", "AGE", "ADDRESS"):
            table.add_column(column)
        for i in data["instances"]:
            table.add_row(
                i["id"],
                i["group"] or "-",
                i["image"],
                i["state"],
                "yes" if i["in_service"] else "no",
                format_duration(i["age"]),
                i["address"] or "-",
            )
        console.print(table)
    lock = data["lock"]
    if lock:
        console.print(f"[yellow]locked by {escape(lock.get('kiln:holder', '?'))}[/]")


@aws_group.command("history")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@JSON
@pass_state
def history_command(state: State, limit: int, as_json: bool) -> None:
    """Deployments of the AWS fleet, from its launch-template versions, newest first."""
    entries = _fleet(state).history(limit)
    if as_json:
        emit_json(entries)
        return
    if not entries:
        console.print("no deployments yet")
        return
    print_history(entries)  # the same view as `kiln history --provider aws`


@aws_group.command("drift")
@JSON
@pass_state
def drift_command(state: State, as_json: bool) -> None:
    """Instances not as their server group launched them, strangers in the target group."""
    drift = _fleet(state).drift()
    if as_json:
        emit_json(drift.to_json())
    elif drift.clean:
        console.print("no drift: every serving instance is what its server group launched")
    else:
        for item in drift.not_current:
            console.print(f"{item['id']} ({item['group']}): {'; '.join(item['reasons'])}")
        for stranger in drift.unmanaged:
            console.print(f"{stranger}: in the target group, not launched by kiln")
    if not drift.clean:
        raise click.exceptions.Exit(6)  # as kiln drift: drift found


@aws_group.command("recycle")
@click.option("--max-age", metavar="DURATION", help="Default: [fleet] max_age.")
@click.option("--wait", metavar="TIMEOUT", help="Wait for another deployment's lock.")
@JSON
@pass_state
def recycle_command(state: State, max_age: str | None, wait: str | None, as_json: bool) -> None:
    """Replace instances older than max age from their own image, batch by batch."""
    age = _seconds(max_age, "--max-age") if max_age else state.config().config.fleet.max_age
    if age is None:
        raise ConfigError(
            "no maximum age to recycle by", hint="pass --max-age 7d or set [fleet] max_age"
        )
    result: dict[str, Any] = _fleet(state).recycle(age, wait=_seconds(wait, "--wait"))
    if as_json:
        emit_json(result)
    elif result["replaced"]:
        console.print(
            f"replaced {len(result['replaced'])} instance(s) older than {format_duration(age)}"
        )
    else:
        console.print("no instance is older than the maximum age")


def _seconds(value: str | None, option: str) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise DeployError(f"{option}: {exc}") from exc
