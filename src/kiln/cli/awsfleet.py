"""``kiln aws status|history|drift|recycle``: aliases of the commands with ``--provider aws``.

They were separate commands with their own printing, and drifted from the
main ones (``locked by None``); now each is the main command, provider fixed.
"""

from __future__ import annotations

from typing import Any

import click

from kiln.cli.aws import aws_group
from kiln.cli.deploy import history_command, status_command
from kiln.cli.lifecycle import drift_command, recycle_command


def _alias(command: click.Command) -> click.Command:
    @click.pass_context
    def run(ctx: click.Context, /, **kwargs: Any) -> None:
        ctx.invoke(command, provider="aws", **kwargs)

    return click.Command(
        command.name,
        callback=run,
        params=[p for p in command.params if p.name != "provider"],
        help=f"Alias of 'kiln {command.name} --provider aws'.",
    )


for _command in (status_command, history_command, drift_command, recycle_command):
    aws_group.add_command(_alias(_command))
