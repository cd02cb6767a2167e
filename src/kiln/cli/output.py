"""How the CLI talks: rich for people, JSON for machines, errors as one line."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape

from kiln.errors import KilnError

if TYPE_CHECKING:
    from kiln.platform import Report


class _Output(Console):
    """stdout or stderr, either of which may go away under a command that must finish (a
    deploy piped into ``head``, a CI log closed, an ssh session dropped): from then on
    it says nothing, and the command's exit status is its own. rich's answer,
    SystemExit(1), stopped a deployment half-way and left it journaled as running."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.file.fileno())  # Python's own last flush must not fail
            os.close(devnull)


console = _Output(highlight=False, soft_wrap=True)
err_console = _Output(stderr=True, highlight=False, soft_wrap=True)


def emit_json(data: Any) -> None:
    """One JSON document on stdout, nothing else: scripts parse it."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def report_error(exc: KilnError) -> None:
    err_console.print(f"[bold red]error:[/] {escape(exc.message)}", markup=True, soft_wrap=True)
    if exc.hint:
        err_console.print(f"[yellow]hint:[/] {escape(exc.hint)}", soft_wrap=True)


def print_report(report: Report, as_json: bool) -> None:
    """A platform's report: its JSON, or its lines, table and footer."""
    if as_json:
        emit_json(report.to_json())
    else:
        for line in report.lines:
            console.print(line, markup=False)
        if report.columns and report.rows:
            from rich.table import Table

            table = Table(box=None, header_style="bold")
            for column in report.columns:
                table.add_column(column)
            for row in report.rows:
                table.add_row(*row)
            console.print(table)
        elif report.columns and report.empty:
            console.print(report.empty, markup=False)
        for line in report.footer:
            console.print(line, markup=False)


def note(message: str) -> None:
    """Progress narration goes to stderr so ``--json`` stdout stays clean."""
    err_console.print(message, soft_wrap=True, markup=False)
