"""``kiln init`` and ``kiln config``: getting a kiln.toml right."""

from __future__ import annotations

from pathlib import Path

import click

from kiln.cli.app import State, cli, environment_option, pass_state
from kiln.cli.output import console, emit_json
from kiln.config import json_schema
from kiln.configfile import CONFIG_NAME
from kiln.detect import LOCK_SCRIPT, detect, lock_script
from kiln.errors import ConfigError
from kiln.scaffold import render_config


@cli.command()
@click.option("--force", is_flag=True, help="Overwrite an existing kiln.toml.")
@click.option("--name", help="App name (default: the directory's name).")
@click.option("--json", "as_json", is_flag=True, help="Print what was detected as one JSON object.")
def init(force: bool, name: str | None, as_json: bool) -> None:
    """Write a commented kiln.toml for the app in this directory."""
    target = Path.cwd() / CONFIG_NAME
    if target.exists() and not force:
        raise ConfigError(f"{target} already exists", hint="use --force to overwrite it")
    found = detect(Path.cwd())
    text = render_config(Path.cwd(), name=name, found=found)
    # the program the build step runs to read a lock file (kiln need not be on the builder)
    script = Path.cwd() / LOCK_SCRIPT if LOCK_SCRIPT in text else None
    # written before anything is printed: `kiln init | head -1` ends the output early
    target.write_text(text, encoding="utf-8")
    if script is not None:
        script.write_text(lock_script(), encoding="utf-8")
    if as_json:
        emit_json(
            {
                "path": str(target),
                "files": [str(target)] + ([str(script)] if script else []),
                "kind": found.kind,
                "run": found.run,
                "run_source": found.run_source,
                "release": found.release,
                "release_source": found.release_source,
                "why": found.why,
                "notes": found.notes,
                "warnings": found.warnings,
            }
        )
        return
    console.print(f"detected: {found.kind}", markup=False)
    for reason in found.why:
        console.print(f"  - {reason}", markup=False)
    for warning in found.warnings:
        console.print(f"  warning: {warning}", markup=False, style="yellow")
    for note in found.notes:
        console.print(f"  note: {note}", markup=False)
    console.print(f"wrote {target}", markup=False)
    if script is not None:
        console.print(
            f"wrote {script} (the build step runs it to read the lock file: commit it "
            "with kiln.toml)",
            markup=False,
        )
    if found.kind == "unknown":
        console.print(
            "next: set [app] run (and [app] build) in it, then 'kiln deploy'", markup=False
        )
    else:
        console.print("next: review it, then 'kiln deploy' (it bakes first)")


@cli.group()
def config() -> None:
    """Inspect and validate kiln.toml."""


@config.command("schema")
def config_schema() -> None:
    """Print the JSON Schema of kiln.toml (for editors)."""
    emit_json(json_schema())


@config.command("check")
@click.option("--json", "as_json", is_flag=True, help="Print the resolved config as JSON.")
@environment_option
@pass_state
def config_check(state: State, as_json: bool) -> None:
    """Validate kiln.toml (every environment in it) and show it with defaults filled in."""
    loaded = state.config()
    config = loaded.config
    if as_json:
        emit_json(config.model_dump(mode="json"))
        return
    where = f"app {config.app.name}"
    if config.environment:
        where += f", environment {config.environment}: fleet {config.fleet_name}"
    elif config.environments:
        where += f"; environments: {', '.join(sorted(config.environments))}"
    console.print(f"{loaded.path}: ok ({where})")
