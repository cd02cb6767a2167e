"""Secrets: resolved when an instance launches, held only in memory.

``env:VAR`` comes from the environment of the kiln command that asked for
the launch (sent over the agent's private socket), else the agent's own;
``file:/path`` is read by the agent at each launch. Values are never written
to the image, the agent's database, its log or its API answers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from kiln.errors import ProviderError


def env_vars_needed(refs: Mapping[str, str]) -> list[str]:
    return [ref[4:] for ref in refs.values() if ref.startswith("env:")]


def collect(refs: Mapping[str, str]) -> dict[str, str]:
    """The values a client can supply from its own environment."""
    return {var: os.environ[var] for var in env_vars_needed(refs) if var in os.environ}


def resolve(refs: Mapping[str, str], supplied: Mapping[str, str]) -> dict[str, str]:
    """NAME -> value for every secret, or one clear error naming the missing one."""
    values: dict[str, str] = {}
    for name, ref in refs.items():
        kind, _, where = ref.partition(":")
        if kind == "env":
            value = supplied.get(where, os.environ.get(where))
            if value is None:
                raise ProviderError(
                    f"secret {name}: environment variable {where} is not set",
                    hint=f"export {where} in the shell that runs kiln",
                )
        elif kind == "file":
            try:
                with open(where, encoding="utf-8") as f:
                    value = f.read().rstrip("\n")
            except OSError as exc:
                raise ProviderError(
                    f"secret {name}: cannot read {where}: {exc.strerror or exc}"
                ) from exc
        else:
            raise ProviderError(
                f"secret {name}: '{kind}:' references work only with the aws provider",
                hint="use 'env:VAR' or 'file:/path' locally",
            )
        values[name] = value
    return values
