"""The CLI starts fast: heavy libraries load only in the commands that use them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kiln.cli import COMMANDS, SUMMARIES, cli, load_all_commands

HEAVY = ("boto3", "botocore", "asyncssh", "aiohttp", "pydantic")


def _modules_after(code: str) -> set[str]:
    """Top-level modules loaded by ``code`` in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    names = json.loads(out.splitlines()[-1])
    return {name.split(".")[0] for name in names} | {n for n in names if n.startswith("kiln.")}


def test_importing_the_cli_loads_no_heavy_library() -> None:
    loaded = _modules_after("import kiln.cli")
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


@pytest.mark.parametrize(
    ("argv", "forbidden"),
    [
        (["--version"], (*HEAVY, "rich")),
        (["--help"], (*HEAVY, "kiln.cli.deploy", "kiln.cli.images")),  # from SUMMARIES
        (["bake", "--help"], ("boto3", "botocore", "asyncssh", "aiohttp")),
        (["images", "--help"], ("boto3", "botocore", "asyncssh", "aiohttp")),
    ],
)
def test_a_command_loads_only_what_it_needs(argv: list[str], forbidden: tuple[str, ...]) -> None:
    code = (
        "import sys\nfrom kiln.cli import cli\n"
        f"try:\n    cli.main({argv!r}, prog_name='kiln', standalone_mode=False)\n"
        "except SystemExit:\n    pass"
    )
    loaded = _modules_after(code)
    assert not loaded & set(forbidden), sorted(loaded & set(forbidden))


def test_every_registered_command_is_in_the_lazy_table() -> None:
    """A command added to a module but not to COMMANDS would silently vanish."""
    load_all_commands()
    assert set(cli.commands) == set(COMMANDS)


@pytest.mark.parametrize("module", sorted(set(COMMANDS.values())))
def test_each_module_registers_the_commands_it_is_named_for(module: str) -> None:
    code = f"import {module}\nfrom kiln.cli import cli\nprint(json.dumps(sorted(cli.commands)))"
    out = subprocess.run(
        [sys.executable, "-c", f"import json\n{code}"], capture_output=True, text=True, check=True
    ).stdout
    registered = set(json.loads(out))
    assert {name for name, owner in COMMANDS.items() if owner == module} <= registered


def test_the_help_summaries_are_each_commands_own_help() -> None:
    """`kiln --help` prints SUMMARIES without importing the commands: they must not drift."""
    import inspect

    import click

    load_all_commands()
    ctx = click.Context(cli)
    stale = {}
    for name in cli.list_commands(ctx):
        command = cli.get_command(ctx, name)
        assert command is not None and not command.hidden
        text = command.short_help or inspect.cleandoc(command.help or "")
        first = text.split("\n\n")[0].replace("\n", " ")
        if SUMMARIES.get(name) != first:
            stale[name] = first
    assert not stale, "update kiln.cli.SUMMARIES: " + "; ".join(
        f"{name!r}: {text!r}" for name, text in stale.items()
    )
