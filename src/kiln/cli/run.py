"""``kiln run``: a one-off command in a fresh, throw-away instance directory."""

from __future__ import annotations

import click

from kiln.cli.app import State, cli, pass_state, provider_option
from kiln.cli.output import note


@cli.command(
    "run",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.option("--image", metavar="ID", help="Image to run it in (default: the fleet's current).")
@provider_option("Where the image lives.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@pass_state
def run_command(state: State, image: str | None, provider: str, command: tuple[str, ...]) -> None:
    """Run COMMAND once, like an instance would, attached to this terminal.

    It runs in a fresh directory of the image with the image's [env] and the
    app's [secrets], then the directory is deleted; nothing joins the fleet.
    It does not see this shell's environment (an instance would not): give it
    a value with env, as in kiln run -- env DJANGO_SUPERUSER_PASSWORD=… python3
    manage.py createsuperuser --noinput. kiln exits with the command's status.
    With --provider aws it runs on a fresh instance of the image's AMI, reached
    over SSH and terminated afterwards. Put '--' before the command:
    kiln run -- python3 manage.py createsuperuser
    """
    argv = list(command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise click.UsageError("say what to run: kiln run -- COMMAND [ARGS]...")
    code = state.platform(provider).run(image, argv, narrate=note)
    raise click.exceptions.Exit(code)
