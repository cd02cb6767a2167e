"""What a package.json script runs, read as /bin/sh would split it.

An image holds what the build leaves: a start script that runs a devDependency's
command fails with `sh: 1: tsx: not found` after the prune, one given
`--env-file=.env` fails on the file kiln leaves out, and a watcher (nodemon,
`node --watch`) that sees the app crash waits for a file change instead of exiting.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

# commands that run the command after them (past its flags and VAR=x assignments)
_PREFIXES = frozenset({"npx", "cross-env", "env", "exec", "nohup", "time"})
# commands a package may share a name with that are never its (@types/node: node)
_SYSTEM = frozenset({"node", "npm", "npx", "sh", "bash", "env", "exec", "true"})
# well-known commands not named after their package
_KNOWN_BINS = {
    "tsc": "typescript",
    "ng": "@angular/cli",
    "nest": "@nestjs/cli",
    "pm2-runtime": "pm2",
    "pm2-docker": "pm2",
    "eleventy": "@11ty/eleventy",
    "babel-node": "@babel/node",
    "ts-node-esm": "ts-node",
    "tsnd": "ts-node-dev",
    "vue-cli-service": "@vue/cli-service",
}
_WATCHERS = frozenset({"nodemon", "ts-node-dev", "tsnd", "node-dev"})
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


def dev_programs(root: Path, package: dict[str, object], ran: list[Command]) -> dict[str, str]:
    """The programs among ``ran`` that a devDependency provides, each with its
    package: gone from an image whose dev packages were pruned."""
    bins = _dev_bins(root, package)
    return {c.program: bins[c.program] for c in ran if c.program in bins}


def _dev_bins(root: Path, package: dict[str, object]) -> dict[str, str]:
    """Command name → the devDependency that provides it (and nothing else does):
    its name, its name's last part (@nestjs/cli: cli), the ``bin`` names of its
    installed package.json, and the well-known commands named otherwise."""
    dev = _names(package, "devDependencies")
    dev -= _names(package, "dependencies") | _names(package, "optionalDependencies")
    bins: dict[str, str] = {}
    for name in sorted(dev):
        if name.startswith("@types/"):
            continue
        bins |= {name: name, name.rsplit("/", 1)[-1]: name}
        try:
            installed = json.loads((root / "node_modules" / name / "package.json").read_text())
        except (OSError, ValueError):
            continue
        declared = installed.get("bin") if isinstance(installed, dict) else None
        if isinstance(declared, dict):
            bins |= {str(b): name for b in declared}
    bins |= {word: owner for word, owner in _KNOWN_BINS.items() if owner in dev}
    return {word: owner for word, owner in bins.items() if word not in _SYSTEM}


def _names(package: dict[str, object], key: str) -> set[str]:
    listed = package.get(key)
    return {str(n) for n in listed} if isinstance(listed, dict) else set()


def watchers(ran: list[Command]) -> list[Command]:
    """The commands among ``ran`` that watch files and restart the app."""
    return [
        c
        for c in ran
        if c.program in _WATCHERS
        or (c.program == "tsx" and c.words[1:2] == ("watch",))
        or any(w == "--watch" or w.startswith(("--watch=", "--watch-path")) for w in c.words)
    ]


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


# programs that compile an app's source: run by a start script, at every instance start
_COMPILERS = frozenset({"tsc", "babel", "esbuild", "swc"})


def compiled_first(
    package: dict[str, object], start: str
) -> tuple[list[str | Command], str] | None:
    """(the steps, the rest) of a start script that compiles before it starts the
    app: fastify-cli's TypeScript template starts with `npm run build:ts && fastify
    start -l info dist/app.js`, so tsc ran (and failed, pruned) at each instance
    start. A step is a script's name (one named build* or compile*, or running a
    compiler) or a compiler's command (`tsc`); the rest is one command. None when
    the start script begins with no such step."""
    parts = _and_parts(start)
    steps: list[str | Command] = []
    for part in parts[:-1]:
        step = _compiling(package, part)
        if step is None:
            break
        steps.append(step)
    rest = " && ".join(parts[len(steps) :])
    return (steps, rest) if steps and len(_split(rest)) == 1 else None


def _compiling(package: dict[str, object], part: str) -> str | Command | None:
    """The script ``part`` runs, or ``part`` itself, if it compiles (and does not watch)."""
    split = _split(part)
    if len(split) != 1:
        return None
    words = split[0]
    name = _npm_script(words)
    if name is not None and words[1] in ("run", "run-script"):
        if len(words) != 3:  # `npm run build -- --prod`: its arguments would be lost
            return None
        text = _scripts(package).get(name)
        inner = commands(package, text, name) if isinstance(text, str) else []
        if not inner or any(_watching(c) for c in inner):
            return None
        named = re.match(r"(?:build|compile)", name)
        return name if named or any(c.program in _COMPILERS for c in inner) else None
    command = Command(None, tuple(words))
    return command if command.program in _COMPILERS and not _watching(command) else None


def _watching(command: Command) -> bool:
    return bool(watchers([command])) or "-w" in command.words


def _and_parts(line: str) -> list[str]:
    """``line`` split at each `&&` outside quotes, each part stripped."""
    parts, start, quote, i = [], 0, "", 0
    while i < len(line):
        char = line[i]
        if char == "\\" and quote != "'":
            i += 2
            continue
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif line.startswith("&&", i):
            parts.append(line[start:i].strip())
            start, i = i + 2, i + 2
            continue
        i += 1
    return [*parts, line[start:].strip()]


def local_bin(line: str) -> str:
    """``line`` run outside npm, which puts node_modules/.bin on PATH for a script:
    its program (past VAR=x assignments) from there, unless a path or node's own."""
    match = re.match(r"((?:[A-Za-z_]\w*=\S*\s+)*)([\w@.+-]+)(?=\s|$)", line)
    if match is None or match.group(2) in _SYSTEM:
        return line
    return f"{match.group(1)}node_modules/.bin/{line[match.start(2) :]}"
