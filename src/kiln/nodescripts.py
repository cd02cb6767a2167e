"""What a package.json script runs, read as /bin/sh would split it.

An image holds what the build leaves: a start script given `--env-file=.env`
fails on the file kiln leaves out.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

# commands that run the command after them (past its flags and VAR=x assignments)
_PREFIXES = frozenset({"npx", "cross-env", "env", "exec", "nohup", "time"})
_ASSIGNMENT = re.compile(r"[A-Za-z_]\w*=")


@dataclass(frozen=True)
class Command:
    """One program a script runs, with its arguments; ``script`` is the
    package.json script it is in (None: the run line itself)."""

    script: str | None
    words: tuple[str, ...]

    @property
    def program(self) -> str:
        """Its name, as node_modules/.bin has it (./node_modules/.bin/tsx: tsx)."""
        return self.words[0].rsplit("node_modules/.bin/", 1)[-1]


def commands(package: dict[str, object], line: str, script: str | None = None) -> list[Command]:
    """What ``line`` runs: its commands, and those of the scripts it runs with
    `npm start` or `npm run NAME` (their pre and post scripts too)."""
    return _commands(package, line, script, set())


def _commands(
    package: dict[str, object], line: str, script: str | None, seen: set[str]
) -> list[Command]:
    found: list[Command] = []
    for words in _split(line):
        while words:
            while words and _ASSIGNMENT.match(words[0]):
                words = words[1:]
            if not words:
                break
            if words[0] in _PREFIXES:  # its own words; the command it runs follows
                own = 1
                while own < len(words) and words[own].startswith("-"):
                    own += 1
                found.append(Command(script, tuple(words[:own])))
                words = words[own:]
                continue
            found.append(Command(script, tuple(words)))
            ran = _npm_script(words)
            for name in (f"pre{ran}", ran, f"post{ran}") if ran else ():
                text = _scripts(package).get(name)
                if isinstance(text, str) and name not in seen:
                    found += _commands(package, text, name, seen | {name})
            break
    return found


def _split(line: str) -> list[list[str]]:
    """The commands of a shell line (split at ;, &&, ||, |, &), each as its words."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    split: list[list[str]] = [[]]
    try:
        for token in lexer:
            if token and set(token) <= set(";&|"):
                split.append([])
            else:
                split[-1].append(token)
    except ValueError:  # an unclosed quote: no command is read from it
        return []
    return [words for words in split if words]


def _npm_script(words: list[str]) -> str | None:
    """The script `npm start` or `npm run NAME` runs."""
    if words[0] != "npm" or len(words) < 2:
        return None
    if words[1] in ("start", "stop", "test", "restart"):
        return words[1]
    rest = [w for w in words[2:] if not w.startswith("-")]
    return rest[0] if words[1] in ("run", "run-script") and rest else None


def _scripts(package: dict[str, object]) -> dict[str, object]:
    scripts = package.get("scripts")
    return scripts if isinstance(scripts, dict) else {}


def env_files(ran: list[Command]) -> list[tuple[Command, str]]:
    """The files given to `--env-file` (Node 20's flag, tsx's too), which must
    exist; `--env-file-if-exists` (Node 22) may name a missing one."""
    found = []
    for c in ran:
        for i, word in enumerate(c.words):
            if word.startswith("--env-file="):
                found.append((c, word.removeprefix("--env-file=")))
            elif word == "--env-file" and i + 1 < len(c.words):
                found.append((c, c.words[i + 1]))
    return found


def option(ran: list[Command], flag: str) -> str | None:
    """The value the commands in ``ran`` give ``flag`` (--output=DIR, --output DIR)."""
    for c in ran:
        for i, word in enumerate(c.words):
            if word.startswith(f"{flag}="):
                return word.removeprefix(f"{flag}=")
            if word == flag and i + 1 < len(c.words):
                return c.words[i + 1]
    return None
