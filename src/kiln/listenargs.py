"""Make a server command line written for Heroku listen where kiln tells it: $HOST:$PORT.

A Procfile's ``web: gunicorn app:app`` relies on gunicorn reading $PORT and
binding 0.0.0.0 (every interface); ``uvicorn main:app --host 0.0.0.0 --port
$PORT`` says so outright; ``hypercorn``, ``daphne``, ``waitress-serve``,
``litestar run`` and ``granian`` listen on their own default port when told
nothing, and ``fastapi run`` on 0.0.0.0:8000. kiln gives each instance
its own $HOST and $PORT, so the Python servers it knows get their listen
options set to those (added when missing, rewritten when they name another
address or a fixed port) and are run as ``python3 -m SERVER`` (the build
installs them into deps/, which is on PYTHONPATH but not on PATH). Each
change comes with the reason for it. Only the last simple command is a server
(``python manage.py migrate && gunicorn …``); a line kiln cannot parse is left
as written, with a warning.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from kiln.runline import simple_commands

_PORT = r"\$(?:PORT|\{PORT(?::?[-=?+][^}]*)?\})"
_HOST = r"\$(?:HOST|\{HOST(?::?[-=?+][^}]*)?\})"
_PYTHON = re.compile(r"^python(?:3(?:\.\d+)?)?$")


@dataclass(frozen=True)
class Server:
    """A Python server's command-line options that say where it listens."""

    name: str  # its console script
    module: str  # what python3 -m runs; also its PyPI distribution
    address: tuple[str, ...] = ()  # options taking HOST:PORT
    host: tuple[str, ...] = ()
    port: tuple[str, ...] = ()
    sockets: tuple[str, ...] = ()  # listening on what kiln's balancer cannot reach
    add: str = "--host $HOST --port $PORT"  # when nothing says where to listen
    default: str = "127.0.0.1:8000"  # where it listens when told nothing
    # the subcommand that serves (`fastapi run`, `litestar --app a:app run`): its options
    # are the listen options; without it the line is not this server's
    subcommand: str = ""


SERVERS = {
    s.name: s
    for s in (
        Server(
            "gunicorn",
            "gunicorn",
            address=("-b", "--bind"),
            add="--bind $HOST:$PORT",
            default="0.0.0.0:$PORT (every interface)",
        ),
        Server("uvicorn", "uvicorn", host=("--host",), port=("--port",), sockets=("--uds", "--fd")),
        Server("hypercorn", "hypercorn", address=("-b", "--bind"), add="--bind $HOST:$PORT"),
        Server(
            "daphne",
            "daphne",
            host=("-b", "--bind"),
            port=("-p", "--port"),
            sockets=("-u", "--unix-socket", "--fd", "-e", "--endpoint"),
            add="--bind $HOST --port $PORT",
        ),
        Server(
            "waitress-serve",
            "waitress",
            address=("--listen",),
            host=("--host",),
            port=("--port",),
            sockets=("--unix-socket",),
            default="0.0.0.0:8080 (every interface)",
        ),
        Server(
            "sanic",
            "sanic",
            host=("-H", "--host"),
            port=("-p", "--port"),
            sockets=("-u", "--unix"),
        ),
        # FastAPI's documented production command; `fastapi dev` is its reloading dev server
        Server(
            "fastapi",
            "fastapi",
            host=("--host",),
            port=("--port",),
            default="0.0.0.0:8000 (every interface)",
            subcommand="run",
        ),
        Server(
            "litestar",
            "litestar",
            host=("-H", "--host"),
            port=("-p", "--port"),
            sockets=("-U", "--uds", "-F", "--fd"),
            subcommand="run",
        ),
        Server("granian", "granian", host=("--host",), port=("--port",), sockets=("--uds",)),
    )
}
_BY_MODULE = {s.module: s for s in SERVERS.values()}
# APM agents' launchers, which run the server after them: (words, how many)
_WRAPPERS = (("newrelic-admin run-program", 2), ("ddtrace-run", 1))


@dataclass
class Adapted:
    """A command line made to listen on $HOST:$PORT, and what was changed and why."""

    line: str
    server: Server | None = None
    changes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    words: list[str] = field(default_factory=list)  # the last command's, as written
    wrapper: str = ""  # what runs the server: an APM agent's launcher


@dataclass
class _Option:
    kind: str  # address, host, port or sockets
    name: str
    value: str  # unquoted
    start: int  # the span to replace: the value, or the whole word when inline
    end: int
    inline: str  # "--bind=" or "-b" when the value is in the option's word, else ""
    word_start: int  # where the option's word starts


def python3(line: str) -> Adapted:
    """``python`` → ``python3`` as any command's first word (hosts may have no ``python``)."""
    commands = simple_commands(line)
    if commands is None:
        return Adapted(line)
    edits = [(s, s + len(w), "python3") for w, s in (c[0] for c in commands) if w == "python"]
    changes = ["'python' run as python3: the instances' PATH has python3"] if edits else []
    words = [_unquote(w) for w, _ in commands[-1]] if commands else []
    words = words[1:] if words[:1] == ["exec"] else words
    return Adapted(_apply(line, edits), changes=changes, words=words)


def listen_on_host_port(line: str) -> Adapted:
    """``line`` with its server (if kiln knows it) listening on $HOST:$PORT."""
    commands = simple_commands(line)
    if commands is None:
        return Adapted(
            line,
            warnings=[
                "the Procfile's web process is a shell line kiln does not rewrite (a pipe, "
                "a background job, a subshell): it must listen on $HOST:$PORT itself"
            ],
        )
    last = commands[-1] if commands else []
    if last and last[0][0] == "exec":
        last = last[1:]  # kiln puts exec there itself
    words = [_unquote(w) for w, _ in last]
    wrapped = next((n for w, n in _WRAPPERS if words[:n] == w.split()), 0)
    found = _server(last[wrapped:])
    if found is None:
        return python3(line)
    server, taken = found
    last = last[wrapped:]
    listen = taken  # where its listen options start
    if server.subcommand:
        names = [_unquote(w) for w, _ in last]
        if server.subcommand not in names[taken:]:  # `fastapi dev`, `litestar routes`
            return python3(line)
        listen = names.index(server.subcommand, taken) + 1
    edits = [(s, s + len(w), "python3") for w, s in (c[0] for c in commands[:-1]) if w == "python"]
    begin, end = last[0][1], last[taken - 1][1] + len(last[taken - 1][0])
    edits.append((begin, end, f"python3 -m {server.module}"))
    adapted = Adapted(line, server, words=words, wrapper=" ".join(words[:wrapped]))
    if not _PYTHON.match(last[0][0]):
        adapted.changes.append(
            f"{server.name} run as 'python3 -m {server.module}': the module the build "
            "installs into deps/ (on PYTHONPATH), whatever Python its script names"
        )
    after = last[listen - 1][1] + len(last[listen - 1][0])  # options go after it
    edits += _listen_edits(server, last, listen, after, adapted)
    adapted.line = _apply(line, edits)
    return adapted


def _server(words: list[tuple[str, int]]) -> tuple[Server, int] | None:
    """The server a command runs and how many words name it (``gunicorn``: 1,
    ``python -m gunicorn``: 3)."""
    if not words:
        return None
    first = _unquote(words[0][0])
    if first in SERVERS:
        return SERVERS[first], 1
    if _PYTHON.match(first) and len(words) >= 3 and words[1][0] == "-m":
        module = _unquote(words[2][0])
        if module in _BY_MODULE:
            return _BY_MODULE[module], 3
    return None


def _listen_edits(
    server: Server, words: list[tuple[str, int]], taken: int, after: int, adapted: Adapted
) -> list[tuple[int, int, str]]:
    options = _options(server, words[taken:])
    sockets = [o for o in options if o.kind == "sockets"]
    if sockets or any(o.value.startswith(("unix:", "fd://")) for o in options):
        name = sockets[0].name if sockets else "a unix socket"
        adapted.warnings.append(
            f"the Procfile's {server.name} listens on {name}: kiln's balancer reaches each "
            f"instance on $HOST:$PORT; use '{server.add}'"
        )
        return []
    kinds = {o.kind for o in options}
    if not kinds:
        adapted.changes.append(
            f"told nothing, {server.name} listens on {server.default}: kiln adds "
            f"'{server.add}' (each instance's own address)"
        )
        return [(after, after, f" {server.add}")]
    edits: list[tuple[int, int, str]] = []
    addresses = [o for o in options if o.kind == "address"]
    for extra in addresses[1:]:  # one address per instance: the first is kept
        edits.append((extra.word_start, extra.end, ""))
    wanted = {"address": (f"{_HOST}:{_PORT}", "$HOST:$PORT"), "host": (_HOST, "$HOST")}
    wanted["port"] = (_PORT, "$PORT")
    kept = addresses[:1] + [o for o in options if o.kind != "address"]
    for option in kept:
        pattern, value = wanted[option.kind]
        if re.fullmatch(pattern, option.value):
            continue
        edits.append((option.start, option.end, option.inline + value))
        adapted.changes.append(
            f"{server.name} {option.name} {option.value} → {value}: "
            + (
                "a fixed port collides between instances"
                if option.kind == "port"
                else "kiln gives each instance its own address"
            )
        )
    if len(addresses) > 1:
        adapted.changes.append(
            f"{server.name}: one {addresses[0].name} kept, as each instance has one address"
        )
    if "address" not in kinds and kinds != {"host", "port"}:
        missing = "port" if "host" in kinds else "host"
        option_name = (server.port if missing == "port" else server.host)[-1]
        value = "$PORT" if missing == "port" else "$HOST"
        edits.append((after, after, f" {option_name} {value}"))
        adapted.changes.append(
            f"{server.name} is given no {missing}: kiln adds '{option_name} {value}'"
        )
    return edits


def _options(server: Server, words: list[tuple[str, int]]) -> list[_Option]:
    """The listen options among a server's arguments, with where their values are."""
    found: list[_Option] = []
    names = {
        name: kind
        for kind in ("address", "host", "port", "sockets")
        for name in getattr(server, kind)
    }
    for i, (raw, start) in enumerate(words):
        word = _unquote(raw)
        for name, kind in names.items():
            if word == name and i + 1 < len(words):
                value_raw, value_start = words[i + 1]
                end = value_start + len(value_raw)
                value = _unquote(value_raw)
                found.append(_Option(kind, name, value, value_start, end, "", start))
            elif word.startswith(name + "=") or (len(name) == 2 and word[:2] == name):
                inline = name + "=" if word.startswith(name + "=") else name
                value = word[len(inline) :]
                found.append(_Option(kind, name, value, start, start + len(raw), inline, start))
            else:
                continue
            break
    return found


def _apply(line: str, edits: list[tuple[int, int, str]]) -> str:
    """Replace spans, last first so offsets hold; a removal takes the blanks before it."""
    for start, end, text in sorted(edits, reverse=True):
        if not text and start < end:
            start = len(line[:start].rstrip(" \t"))
        line = line[:start] + text + line[end:]
    return line


def _unquote(word: str) -> str:
    try:
        parts = shlex.split(word)
    except ValueError:
        return word
    return parts[0] if len(parts) == 1 else word
