"""Secrets: resolved by the kiln command, carried to the agent, held only in memory.

The command that launches (``kiln deploy`` …) resolves every reference:
``env:VAR`` from its own environment, ``file:/path`` by reading the file. A
missing one fails there, before the agent is asked for anything. The values
travel only over the agent's private socket; the agent keeps them in memory
for that fleet's replacements and puts them only into that fleet's instances.
The agent's own environment holds no secret (it starts with a minimal one).
Values are never written to the image, the agent's database, its log or its
API answers.
"""

from __future__ import annotations

from collections.abc import Mapping

from kiln.errors import ProviderError


def resolve(refs: Mapping[str, str], environ: Mapping[str, str]) -> dict[str, str]:
    """NAME -> value for every secret, or one clear error naming the missing one."""
    values: dict[str, str] = {}
    for name, ref in refs.items():
        kind, _, where = ref.partition(":")
        if kind == "env":
            value = environ.get(where)
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


def pick(refs: Mapping[str, str], known: Mapping[str, str]) -> dict[str, str]:
    """The agent's side: the value of every secret the fleet names, from what it was sent."""
    missing = sorted(set(refs) - set(known))
    if missing:
        raise ProviderError(
            f"secret {missing[0]}: the agent does not know its value (it restarted, and no "
            "running instance of the fleet carries it)",
            hint="run 'kiln deploy' again: the command sends the values",
        )
    return {name: known[name] for name in refs}
