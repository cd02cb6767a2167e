"""The CLI starts fast: heavy libraries load only in the commands that use them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kiln.cli import COMMANDS, cli, load_all_commands

HEAVY = ("boto3", "botocore", "asyncssh", "aiohttp", "pydantic")


def _modules_after(code: str) -> set[str]:
    """Top-level modules loaded by ``code`` in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {name.split(".")[0] for name in json.loads(out.splitlines()[-1])}


def test_importing_the_cli_loads_no_heavy_library() -> None:
    loaded = _modules_after("import kiln.cli")
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


@pytest.mark.parametrize(
    ("argv", "forbidden"),
    [
        (["--version"], (*HEAVY, "rich")),
        (["--help"], ()),  # help lists every command: it may import them all
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
