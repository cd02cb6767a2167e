"""The Python version an app asks for, against the python3 kiln would run it with.

The bake and the instances run the hosts' ``python3`` (kiln.runenv): a project
that asks for a newer one (``requires-python = ">=3.13"``, a ``.python-version``
of 3.13, Heroku's ``runtime.txt``) was baked on 3.11 without a word, and failed at
bake (``No matching distribution found``) or at boot. Only major.minor is
compared: the patch release of the hosts' python3 is not known to init, so a
bound on it is taken as met (kiln does not depend on ``packaging``).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.detect import _read

# a clause of a version specifier: operator (Poetry's ^ and ~ too), major, minor, patch
_CLAUSE = re.compile(
    r"^\s*(~=|==|!=|<=|>=|<|>|\^|~|=)?\s*(\d+)(?:\.(\d+|\*))?(?:\.(\d+)|\.\*)?\s*$"
)


def python_warning(root: Path, installed: str | None) -> str | None:
    """A warning when a file of the app asks for a Python that ``installed``
    (``python3.11``: what python3 is on the instances' PATH) is not."""
    have = re.fullmatch(r"python(\d+)\.(\d+)", installed or "")
    if have is None:
        return None
    version = (int(have.group(1)), int(have.group(2)))
    for where, spec, clauses in _asked(root):
        if all(_holds(version, clause) for clause in clauses):
            continue
        least = next((c for c in clauses if c.op in _AT_LEAST and c.minor >= 0), None)
        want = f"python{least.major}.{least.minor}" if least else None
        install = f"Python {least.major}.{least.minor}" if least else "a Python that satisfies it"
        setting = f'[app] python = "{want}"' if want else "[app] python to it"
        return (
            f"{where} asks for Python {spec}, and python3 on the instances' PATH here is "
            f"{installed}, which the bake and the instances would run: install {install} "
            f"on the hosts, then set {setting} and write {want or 'it'} for python3 in "
            "the build, run and release lines (or make it the hosts' python3)"
        )
    return None


_AT_LEAST = frozenset(("~=", "==", ">=", ">", "^", "~"))


def _asked(root: Path) -> list[tuple[str, str, list[_Clause]]]:
    """(the file and setting, its words, its clauses) for each place that says."""
    asked = []
    pinned = _pinned(root / ".python-version", r"(\d+\.\d+)[\w.+-]*")
    if pinned:
        asked.append((".python-version", pinned, _clauses(f"=={pinned}")))
    runtime = _pinned(root / "runtime.txt", r"python-(\d+\.\d+)[\d.]*")
    if runtime:
        asked.append(("runtime.txt", runtime, _clauses(f"=={runtime}")))
    for where, spec in _declared(root):
        clauses = _clauses(spec)
        if clauses:
            asked.append((where, spec, clauses))
    return asked


def _pinned(path: Path, pattern: str) -> str | None:
    """The major.minor of the first line of ``path`` that is a version (pyenv's file
    may list several; "system" or "pypy3.10" say nothing of CPython's version)."""
    for line in _read(path).splitlines():
        match = re.fullmatch(pattern, line.strip())
        if match:
            return match.group(1)
    return None


def _declared(root: Path) -> list[tuple[str, str]]:
    """pyproject.toml's requires-python, Poetry's python constraint, a Pipfile's
    [requires] python_version."""
    found = []
    project = _toml(root / "pyproject.toml")
    requires = project.get("project", {}).get("requires-python")
    if isinstance(requires, str):
        found.append(("pyproject.toml (requires-python)", requires))
    poetry = project.get("tool", {}).get("poetry", {}).get("dependencies", {})
    if isinstance(poetry, dict) and isinstance(poetry.get("python"), str):
        found.append(("pyproject.toml ([tool.poetry.dependencies] python)", poetry["python"]))
    version = _toml(root / "Pipfile").get("requires", {}).get("python_version")
    if isinstance(version, str):
        found.append(("Pipfile ([requires] python_version)", version))
    return found


def _toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(_read(path))
    except tomllib.TOMLDecodeError:
        return {}  # the bake reads it again, and says what is wrong


@dataclass(frozen=True)
class _Clause:
    op: str  # PEP 440's, or Poetry's ^ and ~
    major: int
    minor: int  # -1: any (3.*, >=3)
    patch: int


def _clauses(spec: str) -> list[_Clause]:
    """``>=3.12,<4`` as clauses; none for what is not read (``||``, ``*``): no warning
    is better than a wrong one. A bare version is ==, as a Pipfile's."""
    clauses = []
    for part in spec.split(","):
        match = _CLAUSE.match(part)
        if match is None:
            return []
        op, major, minor, patch = match.groups()
        op = "==" if op in (None, "=") else op
        any_minor = minor is None or minor == "*"
        clauses.append(_Clause(op, int(major), -1 if any_minor else int(minor), int(patch or 0)))
    return clauses


def _holds(have: tuple[int, int], clause: _Clause) -> bool:
    """Whether some patch release of ``have`` meets the clause: only major.minor of the
    hosts' python3 is known, so a bound on the patch release is taken as met."""
    if clause.minor < 0:  # a bound on the major version alone
        return clause.op == "!=" or _compare(clause.op, have[:1], (clause.major,))
    bound = (clause.major, clause.minor)
    if clause.op in ("^", "~="):  # ^3.12, ~=3.12: 3.12 and any later 3.x
        return bound <= have and have[0] == clause.major
    if clause.op == "~":  # Poetry's ~3.12: 3.12.x only
        return have == bound
    if clause.op == "<" and clause.patch > 0:
        return have <= bound  # <3.12.5: 3.12.0 is below it
    return clause.op == "!=" or _compare(clause.op, have, bound)


def _compare(op: str, have: tuple[int, ...], bound: tuple[int, ...]) -> bool:
    """``have`` stands for every patch release: > 3.12 holds for 3.12.1."""
    ops = {
        "==": have == bound,
        ">=": have >= bound,
        ">": have >= bound,
        "<=": have <= bound,
        "<": have < bound,
    }
    return ops.get(op, True)
