"""``kiln ci summary``: kiln's JSON results as a CI job summary in Markdown.

Generic on purpose: any ``kiln ... --json`` document renders (scalars as a
key/value table, lists of objects as tables), so new fields show up without
changes here.
"""

from __future__ import annotations

import json
from pathlib import Path


def load_result(path: Path) -> object | None:
    """A ``kiln ... --json`` document; None when the step never wrote one."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    if not text.strip():
        return None
    try:
        doc: object = json.loads(text)
    except json.JSONDecodeError:
        return {"error": f"not a JSON result: {text.strip()[:200]}"}
    return doc


def render_summary(results: list[tuple[str, object | None]]) -> str:
    """Markdown for a CI job summary, one section per named kiln result."""
    lines = ["## kiln", ""]
    for title, doc in results:
        outcome = _outcome(doc)
        lines.append(f"### {title}" + (f": {outcome}" if outcome else ""))
        lines.append("")
        if doc is None:
            lines.append("_no result: the step failed before printing one, or did not run_")
            lines.append("")
            continue
        if isinstance(doc, dict) and isinstance(doc.get("message"), str):
            lines += [_cell(doc["message"]), ""]
        lines += _markdown(doc)
        lines.append("")
    return "\n".join(lines)


def _outcome(doc: object | None) -> str:
    if isinstance(doc, dict):
        for key in ("outcome", "status", "result", "error", "image"):
            if isinstance(doc.get(key), str | int | float | bool):
                return _cell(doc[key])
    return ""


def _markdown(doc: object) -> list[str]:
    if not isinstance(doc, dict):
        return _table_of_rows(doc) if _is_rows(doc) else [f"`{_cell(doc)}`"]
    pairs = [
        (key, value)
        for key, value in _flatten(doc)
        if not _is_rows(value) and not _is_empty(value) and key != "message"
    ]
    lines = ["| | |", "|---|---|", *(f"| {key} | {_cell(value)} |" for key, value in pairs)]
    for key, value in doc.items():
        if _is_rows(value):
            lines += ["", f"**{key}**", "", *_table_of_rows(value)]
    return lines


def _flatten(doc: dict[str, object], prefix: str = "") -> list[tuple[str, object]]:
    pairs: list[tuple[str, object]] = []
    for key, value in doc.items():
        if isinstance(value, dict) and value:
            pairs += _flatten(value, f"{prefix}{key}.")
        else:
            pairs.append((f"{prefix}{key}", value))
    return pairs


def _is_empty(value: object) -> bool:
    return value is None or value == "" or value == [] or value == {}


def _is_rows(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _table_of_rows(rows: object) -> list[str]:
    assert isinstance(rows, list)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(col)) for col in columns) + " |" for row in rows]
    return lines


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        value = f"{value:.3f}".rstrip("0").rstrip(".")
    elif isinstance(value, list | dict):
        value = json.dumps(value, separators=(",", ":"))
    return str(value).replace("|", "\\|").replace("\n", " ")
