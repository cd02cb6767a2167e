"""``python -m kiln.cli.docgen``: regenerate the generated docs.

docs/config.md comes from the config models, docs/cli.md from the click
command tree, so neither can drift from the code (a test compares them).
"""

from __future__ import annotations

from pathlib import Path

import click

from kiln.docgen import render_config_reference

DOCS = Path(__file__).resolve().parents[3] / "docs"

_CLI_HEADER = """\
# CLI reference

<!-- Generated from the click commands by `make docs`; do not edit by hand.
     A test fails when this file is stale. -->

Every command accepts the global options of `kiln` (before the command name):
`--home PATH` (state directory, default `$KILN_HOME` or `~/.kiln`) and
`-c/--config PATH` (default `./kiln.toml`). Commands that print data accept
`--json`; narration and progress go to stderr so stdout stays parseable. With
`--json`, stdout is one JSON document on failure too: `{"ok": false, "error":
{"type", "message", "hint", "exit_code"}}` (the error line and hint still go to
stderr); a deployment that ran and did not succeed prints its result instead,
with `"ok": false`.

Exit codes: 0 success; 1 error; 2 bad configuration or usage; 3 corrupted
store object (and, for `kiln agent status`, no agent running); 4 a deployment
gate tripped (rolled back; a `kiln rollback` the user asked for is 0); 5 the
fleet's lock is held; 6 drift found (`kiln drift`); 127 `kiln run`'s command
not found; 130 interrupted.
"""


def render_cli_reference() -> str:
    from kiln.cli import cli

    parts = [_CLI_HEADER]
    ctx = click.Context(cli, info_name="kiln")
    for name, command in _walk(cli, ctx, "kiln"):
        parts.append(_command_section(name, command, ctx))
    return "".join(parts)


def _walk(group: click.Group, ctx: click.Context, prefix: str) -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = []
    for name in sorted(group.list_commands(ctx)):
        command = group.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        full = f"{prefix} {name}"
        found.append((full, command))
        if isinstance(command, click.Group):
            found.extend(_walk(command, ctx, full))
    return found


def _command_section(name: str, command: click.Command, parent: click.Context) -> str:
    ctx = click.Context(command, info_name=name, parent=parent)
    usage = " ".join(command.collect_usage_pieces(ctx))
    lines = [f"\n## `{name}`\n\n", (command.help or "").strip() + "\n"]
    if not isinstance(command, click.Group):
        lines.append(f"\n```\n{name} {usage}\n```\n")
    rows = []
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None:
            continue
        opts, text = record
        if "--help" in opts:
            continue
        rows.append(f"| `{opts}` | {text.replace('|', '/')} |\n")
    if rows:
        lines.append("\n| option | meaning |\n|---|---|\n")
        lines.extend(rows)
    return "".join(lines)


def generated() -> dict[str, str]:
    """Every generated doc, by path relative to docs/."""
    return {"config.md": render_config_reference(), "cli.md": render_cli_reference()}


def main() -> None:
    for name, text in generated().items():
        (DOCS / name).write_text(text, encoding="utf-8")
        print(f"wrote docs/{name}")


if __name__ == "__main__":
    main()
