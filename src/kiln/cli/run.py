"""``kiln run``: a one-off command in a fresh, throw-away instance directory."""

from __future__ import annotations

import os
from collections.abc import Mapping

import click

from kiln.cli.app import State, cli, pass_state, provider_option
from kiln.cli.output import note


@cli.command(
    "run",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.option("--image", metavar="ID", help="Image to run it in (default: the fleet's current).")
@click.option(
    "--var",
    "pairs",
    multiple=True,
    metavar="NAME[=VALUE]",
    help="Set NAME for this command only: to VALUE, or to its value in this shell. Repeatable.",
)
@provider_option("Where the image lives.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@pass_state
def run_command(
    state: State, image: str | None, pairs: tuple[str, ...], provider: str, command: tuple[str, ...]
) -> None:
    """Run COMMAND once, like an instance would, attached to this terminal.

    It runs in a fresh directory of the image with the image's [env] and the
    app's [secrets], then the directory is deleted; nothing joins the fleet.
    It does not see this shell's environment (an instance would not) beyond
    what --var passes on: DJANGO_SUPERUSER_PASSWORD=… kiln run --var
    DJANGO_SUPERUSER_PASSWORD -- python3 manage.py createsuperuser --noinput.
    kiln exits with the command's status. With --provider aws it runs on a
    fresh instance of the image's AMI, reached over SSH and terminated
    afterwards. Put '--' before the command:
    kiln run -- python3 manage.py createsuperuser
    """
    argv = list(command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise click.UsageError("say what to run: kiln run -- COMMAND [ARGS]...")
    extra = passed_env(pairs, os.environ)
    code = state.platform(provider).run(image, argv, env=extra, narrate=note)
    raise click.exceptions.Exit(code)


def passed_env(pairs: tuple[str, ...], shell: Mapping[str, str]) -> dict[str, str]:
    """``--var`` values: NAME=VALUE, or NAME for its value in ``shell`` (docker run -e's rule)."""
    from kiln.config import ENV_NAME  # what kiln.toml's [env] takes (pydantic: loaded late)

    extra: dict[str, str] = {}
    for pair in pairs:
        name, given, value = pair.partition("=")
        if not ENV_NAME.match(name):
            raise click.BadParameter(
                f"{name!r} is not a variable name (letters, digits, _)", param_hint="--var"
            )
        if not given:
            if name not in shell:
                raise click.BadParameter(
                    f"{name} is not set in this shell: set it, or give its value: "
                    f"--var {name}=VALUE",
                    param_hint="--var",
                )
            value = shell[name]
        extra[name] = value
    return extra
