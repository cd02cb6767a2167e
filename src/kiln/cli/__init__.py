"""The ``kiln`` command line: parses, calls the library, prints.

Each area registers its commands from its own module, so the core library
never imports click or rich.
"""

from __future__ import annotations

import importlib

from kiln.cli.app import cli

# Modules that attach commands to ``cli`` when imported.
_COMMAND_MODULES = (
    "kiln.cli.basics",
    "kiln.cli.agent",
    "kiln.cli.ci",
    "kiln.cli.images",
    "kiln.cli.aws",
    "kiln.cli.awsfleet",
    "kiln.cli.lifecycle",
    "kiln.cli.demo",
    "kiln.cli.deploy",
)

for _name in _COMMAND_MODULES:
    importlib.import_module(_name)


def main() -> None:
    cli(prog_name="kiln")


__all__ = ["cli", "main"]
