"""How the CLI talks: rich for people, JSON for machines, errors as one line."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape

from kiln.errors import KilnError

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def emit_json(data: Any) -> None:
    """One JSON document on stdout, nothing else: scripts parse it."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def report_error(exc: KilnError) -> None:
    err_console.print(f"[bold red]error:[/] {escape(exc.message)}", markup=True, soft_wrap=True)
    if exc.hint:
        err_console.print(f"[yellow]hint:[/] {escape(exc.hint)}", soft_wrap=True)


def note(message: str) -> None:
    """Progress narration goes to stderr so ``--json`` stdout stays clean."""
    err_console.print(message, soft_wrap=True, markup=False)
