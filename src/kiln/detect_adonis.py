"""AdonisJS 6 apps: `node ace build` compiles the app into build/ (tsconfig's outDir)
with a copy of package.json, whose `#controllers/*` imports resolve there; its
server is build/bin/server.js, which finds the packages in ../node_modules. Its
start script (`node bin/server.js`) run from the app's root found no such file."""

from __future__ import annotations

import re
from pathlib import Path

from kiln.detect import _NODE_SOURCES, Detected, _read, _route, js_code
from kiln.detect_sites import inside
from kiln.nodestack import node_stack

# what start/env.ts requires that kiln sets: $HOST and $PORT, and [env]'s
_SET = frozenset({"HOST", "PORT", "NODE_ENV", "LOG_LEVEL"})


def adonis(root: Path, package: dict[str, object]) -> Detected | None:
    """An AdonisJS app (``ace.js`` and ``bin/server.ts``), run as its build makes it."""
    if not (root / "ace.js").is_file() or not (root / "bin" / "server.ts").is_file():
        return None
    given = re.search(r""""outDir"\s*:\s*"([^"]+)\"""", _read(root / "tsconfig.json"))
    out = inside(given.group(1) if given else "build")
    if out is None:
        return None
    why = ["package.json depends on @adonisjs/core, with ace.js: an AdonisJS app"]
    why.append(
        f"'node ace build' compiles it into {out}/ with its package.json, run there with "
        "node (its packages are found in ../node_modules); it reads $HOST and $PORT"
    )
    found = node_stack("AdonisJS", f"cd {out} && node bin/server.js", why, root, package, (out,))
    required = _required_env(_read(root / "start" / "env.ts"))
    if "LOG_LEVEL" in required:
        found.env["LOG_LEVEL"] = "info"
        why.append("LOG_LEVEL: start/env.ts requires it; info, as its .env.example has")
    missing = [n for n in required if n not in _SET]
    if missing:
        found.warnings.append(_missing_warning(missing))
    found.health_path = _route(root, ("/health", "/healthz", "/ping"), _NODE_SOURCES)
    return found


def _required_env(text: str) -> list[str]:
    """The names start/env.ts validates as required: ``NAME: Env.schema.TYPE(…)``
    inside ``Env.create(…)``, without ``.optional``."""
    text = js_code(text)
    created = text.find("Env.create(")
    if created < 0:
        return []
    schema = re.finditer(r"\b([A-Za-z_]\w*)\s*:\s*Env\.schema\.\w+(\.optional\b)?", text[created:])
    return [m.group(1) for m in schema if not m.group(2)]


def _missing_warning(missing: list[str]) -> str:
    """start/env.ts requires ``missing``, which kiln does not set: the server exits
    ('Validation failed for one or more environment variables')."""
    listed = ", ".join(missing)
    where = "set them in [env], or in [secrets] for the secret ones"
    if "APP_KEY" in missing:
        where = (
            'APP_KEY is a secret: give it through [secrets] (APP_KEY = "env:APP_KEY", '
            "its value from 'node ace generate:key --show'), the others in [env] or [secrets]"
        )
        if missing == ["APP_KEY"]:
            where = where.removesuffix(", the others in [env] or [secrets]")
    return (
        f"start/env.ts requires {listed}, which kiln does not set: the server exits at start "
        f"('Validation failed for one or more environment variables'); {where}"
    )
