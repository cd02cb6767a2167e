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

# top-level command -> the first paragraph of its help: `kiln --help` lists every
# command without importing one (a test checks each against the command's own help)
SUMMARIES: dict[str, str] = {
    "agent": "The local agent: runs instances, balances load, checks health.",
    "aws": "AWS provider: deploy user and policy, leftovers of killed bakes.",
    "bake": "Bake the app into an immutable, content-addressed image.",
    "ci": "CI/CD pipelines: bake and deploy on every push to the default branch.",
    "config": "Inspect and validate kiln.toml.",
    "demo": "The whole story on this machine: bake, deploy, roll, roll back, drift.",
    "deploy": "Move the fleet to a new image: plan, launch, prove healthy, shift, discard.",
    "destroy": (
        "Remove the fleet: drain and stop every instance, free its listener, keep its history."
    ),
    "drift": "Compare running instances with their images; exit 6 when anything drifted.",
    "history": "Deployments, newest first: from → to, strategy, outcome, duration, who, why.",
    "image": "Inspect one image.",
    "images": "List baked images, newest first.",
    "init": "Write a commented kiln.toml for the app in this directory.",
    "logs": "Show logs (stdout and stderr): one instance's, or every instance of the fleet.",
    "promote": "Deploy to TO the code FROM serves healthily now: no bake, only TO's env layer.",
    "prune": "Remove old images, never one in use, and free their storage.",
    "recycle": "Replace instances older than a maximum age with fresh ones from the same image.",
    "refresh": "Bring the fleet onto patched system files, through the deploy engine.",
    "rollback": "Back to the previous good image; from a warm standby in about one health check.",
    "run": "Run COMMAND once, like an instance would, attached to this terminal.",
    "scale": "Change the fleet's desired size; new instances come from the current image.",
    "status": "The fleet now: endpoint, size, image, instances, any deployment in progress.",
    "ui": "Serve a read-only page of the fleet, its images and deployments, live, until Ctrl-C.",
    "unlock": "Remove a deployment lock left behind by a process that is gone.",
}
cli.summaries = SUMMARIES


def load_all_commands() -> None:
    """Register every command now (docs generation, tests walking the tree)."""
    for module in sorted(set(COMMANDS.values())):
        importlib.import_module(module)


def main() -> None:
    cli(prog_name="kiln")


__all__ = ["COMMANDS", "SUMMARIES", "cli", "load_all_commands", "main"]
