"""Render the kiln.toml reference from the config models themselves."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from kiln.config import AcmeSettings, AppSettings, BuildStep, Config, LocalSettings, _model_of
from kiln.durations import format_duration

_HEADER = """\
# kiln.toml reference

<!-- Generated from kiln/config.py by `make docs`; do not edit by hand.
     A test fails when this file is stale. -->

kiln reads `kiln.toml` from the current directory (or `-c PATH`). Unknown keys
are errors, and every error names the file, the key and what is wrong.
Durations accept `"500ms"`, `"2s"`, `"5m"`, `"1h"`, `"7d"` or a number of
seconds. `kiln config schema` prints a JSON Schema for editors.
"""


def render_config_reference() -> str:
    parts = [_HEADER]
    for name, field in Config.model_fields.items():
        model = _model_of(field.annotation)
        if name == "provider" and model is not None:
            for sub, subfield in model.model_fields.items():
                submodel = _model_of(subfield.annotation)
                if submodel is not None:
                    parts.append(_section(f"provider.{sub}", submodel, subfield))
                    if submodel is LocalSettings:  # its acme table, documented beside it
                        parts.append(_section("provider.local.acme", AcmeSettings, subfield))
        elif name == "environments" and model is not None:
            parts.append(_section("environments.NAME", model, field))
        elif model is not None:
            parts.append(_section(name, model, field))
            if model is AppSettings:  # its build list may hold tables too: document them beside it
                parts.append(_section("app.build (a cached step)", BuildStep, field))
        else:
            parts.append(f"\n## [{name}]\n\n{field.description}\n")
    return "".join(parts)


def _section(title: str, model: type[BaseModel], field: FieldInfo) -> str:
    doc = " ".join((model.__doc__ or "").split())  # one paragraph, however it is wrapped
    rows = [
        f"\n## [{title}]\n",
        f"\n{doc}\n" if doc else "",
        "\n| key | type | default | description |\n|---|---|---|---|\n",
    ]
    for key, sub in model.model_fields.items():
        rows.append(
            f"| `{key}` | {_type_name(sub)} | {_default(sub)} | {sub.description or ''} |\n"
        )
    return "".join(rows)


def _type_name(field: FieldInfo) -> str:
    text = str(field.annotation).replace("typing.", "")
    if any("parse_duration" in repr(m) for m in field.metadata):
        return "duration"
    if "parse_duration" in text:
        return "duration or None" if "Optional" in text else "duration"
    text = text.replace("kiln.config.BuildStep", "table (below)")
    if text.startswith("dict[str, Annotated[str"):
        return "table of references ('env:VAR', 'file:/path', 'ssm:/name')"
    if text == "dict[str, Any]":
        return "table"
    text = text.replace("kiln.config.AcmeSettings", "table (below)")
    for simple in ("str", "int", "float", "bool"):
        text = text.replace(f"<class '{simple}'>", simple)
    if text.startswith("Optional[Literal[") and text.endswith("]]"):  # sticky: unset or one of
        text = text[len("Optional[") : -1] + " or None"
    return text.replace("|", "or").replace("Literal", "one of ")


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value: Any = field.default
    if value is PydanticUndefined and field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    if isinstance(value, BaseModel):
        return "(table)"
    if isinstance(value, float) and any("parse_duration" in repr(m) for m in field.metadata):
        return f'`"{format_duration(value)}"`'
    return f"`{json.dumps(value)}`"
