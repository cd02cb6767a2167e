"""A run command is a shell command line whose last command becomes the instance.

``python3 manage.py migrate && gunicorn app:app`` must run both, and the
long-running server must get SIGTERM itself to drain gracefully. So the line
runs through ``/bin/sh -c`` as written, except that ``exec`` goes before its
last simple command when that is unambiguous: the server then replaces the
shell and is the instance's process (its pid, its exit status). Lines kiln
cannot rewrite safely (pipelines, background jobs, subshells, compound
commands, here-documents) run unchanged; the instance is its whole process
group either way, and stopping it signals and waits for every process in it.
"""

from __future__ import annotations

import re

_SEPARATORS = ("&&", "||", ";", "\n")
_REDIRECTS = ("<", ">", ">>", ">&", "<&", ">|", "<>")
_GIVE_UP = ("|", "&", "(", ")", "<<", "<<-", ";;", "&>")
_OPS = sorted({*_SEPARATORS, *_REDIRECTS, *_GIVE_UP}, key=len, reverse=True)
_KEYWORDS = frozenset(
    [
        "if",
        "then",
        "else",
        "elif",
        "fi",
        "do",
        "done",
        "case",
        "esac",
        "while",
        "until",
        "for",
        "in",
        "!",
        "{",
        "}",
        "[[",
        "]]",
        "exec",
        "time",
        "function",
        "select",
        "coproc",
        # the shell's own commands, which no exec can run (`exec exit 64` is "exit: not
        # found", status 127): the line is left to the shell
        *("exit", "return", "break", "continue", ":", ".", "source", "eval", "set"),
        *("unset", "export", "readonly", "local", "shift", "trap", "wait", "cd", "umask"),
    ]
)
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_WORD_END = " \t\n;&|()<>"


def exec_form(line: str) -> str:
    """``line`` with ``exec`` before its last simple command, or unchanged if unsafe."""
    tokens = _tokens(line)
    if tokens is None or any(kind == "op" and text in _GIVE_UP for kind, text, _ in tokens):
        return line
    separators = [i for i, (k, text, _) in enumerate(tokens) if k == "op" and text in _SEPARATORS]
    target = False
    for kind, text, start in tokens[separators[-1] + 1 if separators else 0 :]:
        if kind == "op":  # a redirection: its target is the next word
            target = True
        elif target or _ASSIGNMENT.match(text):
            target = False
        elif text in _KEYWORDS:
            return line
        else:
            return f"{line[:start]}exec {line[start:]}"
    return line  # nothing but assignments, or an empty last command


def simple_commands(line: str) -> list[list[tuple[str, int]]] | None:
    """The words (text, offset) of each simple command in ``line``, leading assignments
    and redirections left out; None for a line :func:`exec_form` would leave alone."""
    tokens = _tokens(line)
    if tokens is None or any(kind == "op" and text in _GIVE_UP for kind, text, _ in tokens):
        return None
    commands: list[list[tuple[str, int]]] = [[]]
    target = False
    for kind, text, start in tokens:
        if kind == "op":
            if text in _SEPARATORS:
                commands.append([])
            target = text not in _SEPARATORS  # a redirection: its target is the next word
        elif target:
            target = False
        elif commands[-1] or not _ASSIGNMENT.match(text):
            commands[-1].append((text, start))
    return [words for words in commands if words]


def assignments(line: str) -> list[tuple[str, int]]:
    """The variable assignments (text, offset) before each simple command's first word,
    ``PYTHONPATH=src`` in ``PYTHONPATH=src gunicorn app:app``; [] for a line
    :func:`simple_commands` would not read."""
    tokens = _tokens(line)
    if tokens is None or any(kind == "op" and text in _GIVE_UP for kind, text, _ in tokens):
        return []
    found: list[tuple[str, int]] = []
    leading, target = True, False
    for kind, text, start in tokens:
        if kind == "op":
            if text in _SEPARATORS:
                leading = True
            target = text not in _SEPARATORS
        elif target:
            target = False
        elif leading and _ASSIGNMENT.match(text):
            found.append((text, start))
        else:
            leading = False
    return found


def _tokens(line: str) -> list[tuple[str, str, int]] | None:
    """(kind, text, offset) of each word and operator; None for what kiln will not parse."""
    out: list[tuple[str, str, int]] = []
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        if c in " \t":
            i += 1
            continue
        if c == "#":
            return None  # a comment: leave the line alone
        op = next((o for o in _OPS if line.startswith(o, i)), None)
        if op is not None:
            out.append(("op", op, i))
            i += len(op)
            continue
        start = i
        while i < n and line[i] not in _WORD_END:
            end = _skip_quoted(line, i)
            if end is None:
                return None
            i = end
        out.append(("word", line[start:i], start))
    return out


def _skip_quoted(line: str, i: int) -> int | None:
    """The offset after the character or quoted/substituted span at ``i``."""
    c = line[i]
    if c == "\\":
        return min(i + 2, len(line))
    if c == "'":
        end = line.find("'", i + 1)
        return None if end < 0 else end + 1
    if c == '"' or c == "`":
        j = i + 1
        while j < len(line) and line[j] != c:
            j += 2 if line[j] == "\\" else 1
        return None if j >= len(line) else j + 1
    if line.startswith("$(", i):
        depth, j = 0, i + 1
        while j < len(line):
            if line[j] == "(":
                depth += 1
            elif line[j] == ")":
                depth -= 1
                if depth == 0:
                    return j + 1
            j += 1
        return None
    return i + 1
