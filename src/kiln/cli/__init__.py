"""The ``kiln`` command line: parses, calls the library, prints.

Each area registers its commands from its own module, so the core library
never imports click or rich. Those modules are imported only when one of their
commands runs (``COMMANDS``): ``kiln --version`` and ``kiln bake`` must not pay
for boto3, asyncssh and aiohttp. A test checks that ``COMMANDS`` names every
command each module registers.
"""

from __future__ import annotations

import importlib

from kiln.cli.app import cli

# top-level command -> the module that registers it on ``cli`` when imported
COMMANDS: dict[str, str] = {
    "init": "kiln.cli.basics",
    "config": "kiln.cli.basics",
    "agent": "kiln.cli.agent",
    "logs": "kiln.cli.agent",
    "ci": "kiln.cli.ci",
    "bake": "kiln.cli.images",
    "images": "kiln.cli.images",
    "image": "kiln.cli.images",
    "aws": "kiln.cli.awsfleet",
    "prune": "kiln.cli.lifecycle",
    "drift": "kiln.cli.lifecycle",
    "recycle": "kiln.cli.lifecycle",
    "refresh": "kiln.cli.lifecycle",
    "destroy": "kiln.cli.lifecycle",
    "demo": "kiln.cli.demo",
    "deploy": "kiln.cli.deploy",
    "rollback": "kiln.cli.deploy",
    "promote": "kiln.cli.deploy",
    "scale": "kiln.cli.deploy",
    "status": "kiln.cli.deploy",
    "history": "kiln.cli.deploy",
    "unlock": "kiln.cli.deploy",
    "run": "kiln.cli.run",
    "ui": "kiln.cli.ui",
}
cli.lazy_commands = COMMANDS


def load_all_commands() -> None:
    """Register every command now (docs generation, tests walking the tree)."""
    for module in sorted(set(COMMANDS.values())):
        importlib.import_module(module)


def main() -> None:
    cli(prog_name="kiln")


__all__ = ["COMMANDS", "cli", "load_all_commands", "main"]
