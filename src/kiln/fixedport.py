"""An entry file that visibly listens on a fixed port, found before the first deploy.

kiln gives every instance its own $PORT (and $HOST). An app that calls
``app.listen(3000)`` fails its health checks, and a second instance dies with
EADDRINUSE; `kiln init` says so up front, naming the line to change. Only the
file the run line executes is read: under gunicorn or uvicorn an
``app.run(port=5000)`` in ``__main__`` never runs. A server told to listen on
every interface (0.0.0.0, or Node's ``listen(port)`` without a host) is
warned of too: each instance is then reachable around the balancer.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from kiln.detect import BUILT_OUTPUT, _read

_JS_ENV = re.compile(r"""process\.env(?:\.PORT\b|\[\s*['"]PORT['"]\s*\])|\benv\.PORT\b""")
_JS_FIXED = (
    re.compile(r"\.listen\(\s*(\d{2,5})\b"),
    re.compile(r"\.listen\(\s*\{[^}]*?\bport\s*:\s*(\d{2,5})\b", re.DOTALL),
    re.compile(r"^\s*(?:const|let|var)\s+port\s*=\s*(\d{2,5})\s*;?\s*$", re.MULTILINE | re.I),
    # hapi's Hapi.server({ port: 3000 }), ws's new WebSocketServer({ port: 8080 })
    re.compile(r"[sS]erver\(\s*\{[^}]*?\bport\s*:\s*(\d{2,5})\b", re.DOTALL),
    re.compile(r"new\s+Server\(\s*(\d{2,5})\b"),  # socket.io's new Server(3000)
    # @hono/node-server's serve({ fetch: app.fetch, port: 3000 })
    re.compile(r"\bserve\(\s*\{[^}]*?\bport\s*:\s*(\d{2,5})\b", re.DOTALL),
)
_JS_SERVES = (".listen(", "erver(", "serve(")
_PY_ENV = re.compile(r"""(?:environ|getenv)[^\n]*['"]PORT['"]""")
_PY_FIXED = (
    re.compile(r"\.run(?:_app)?\([^)]*?\bport\s*=\s*(\d{2,5})\b", re.DOTALL),
    re.compile(r"""Server\(\s*\(\s*['"][^'"]*['"]\s*,\s*(\d{2,5})\s*\)"""),
    re.compile(r"^PORT\s*=\s*(\d{2,5})\s*$", re.MULTILINE),
    re.compile(r"\.listen\(\s*(\d{2,5})\b"),  # tornado's app.listen(8888)
    re.compile(r"\bserve\([^)]*?\bport\s*=\s*(\d{2,5})\b", re.DOTALL),  # waitress
    # websockets' serve(handler, "localhost", 8765)
    re.compile(r"""\bserve\(\s*\w+\s*,\s*['"][^'"]*['"]\s*,\s*(\d{2,5})\b"""),
    # the stdlib's wsgiref.simple_server.make_server('0.0.0.0', 6543, app): Pyramid's
    # single-file hello world
    re.compile(r"""\bmake_server\(\s*['"][^'"]*['"]\s*,\s*(\d{2,5})\b"""),
    re.compile(r"\.start\([^)]*?\bport\s*=\s*(\d{2,5})\b", re.DOTALL),  # Robyn's app.start
)
# servers that listen on a port of their own when given none: (the call, that port)
_PY_DEFAULT = (
    (re.compile(r"\bweb\.run_app\((?![^\n]*\bport\s*=)"), "8080, aiohttp's default,"),
    (re.compile(r"\bui\.run\((?![^\n]*\bport\s*=)"), "8080, NiceGUI's default,"),
    # Robyn's app.start(), in a file that makes a Robyn(): its line, from the start
    (
        re.compile(
            r"\A(?=[\s\S]*\bRobyn\()[\s\S]*?^[ \t]*(\w+\.start\((?![^\n]*\bport\s*=))",
            re.MULTILINE,
        ),
        "8080, Robyn's default,",
    ),
)
# where a server is told to listen on every interface: reachable around the balancer
JS_HOST_ENV = re.compile(r"""process\.env(?:\.HOST\b|\[\s*['"]HOST['"]\s*\])|\benv\.HOST\b""")
_JS_OPEN = (
    re.compile(r"""\.listen\([^)\n]*?['"](0\.0\.0\.0|::)['"]"""),
    re.compile(r"""\bhost(?:name)?\s*:\s*['"](0\.0\.0\.0|::)['"]"""),
    # Node binds every interface when listen() is given no host: a port expression
    # (`port`, `process.env.PORT ?? 3000`, `Number(process.env.PORT)`), then the end
    # or a callback
    re.compile(
        r"\.listen\(\s*(?:[^(){},\n'\"]|\([^()\n]*\))+?\s*"
        r"(?:\)|,\s*(?:\(|function\b|async\b|\w+\s*=>))()"
    ),
    # nor does @hono/node-server's serve({ fetch, port }) without a hostname: quoted at
    # its port, not at the callback that may follow on the closing brace's line
    re.compile(
        r"\bserve\(\s*\{(?![^}]*\bhostname\b)(?=[^}]*\bfetch\b)(?:[^}]*?()\bport\b)?",
        re.DOTALL,
    ),
    # nor does ws's new WebSocketServer({ port }) without a host
    re.compile(
        r"\bnew\s+(?:WebSocket\.Server|WebSocketServer)\(\s*\{(?![^}]*\bhost\b)[^}]*?()\bport\b",
        re.DOTALL,
    ),
)
# why listening on every interface matters (the Procfile's check says it too)
AROUND_BALANCER = (
    "each instance is then reachable around kiln's load balancer (no TLS, no host "
    "routing, any X-Forwarded-For believed)"
)
_PY_HOST_ENV = re.compile(r"""(?:environ|getenv)[^\n]*['"]HOST['"]""")
_PY_OPEN = (
    re.compile(r"""\bhost\s*=\s*['"](0\.0\.0\.0|::)['"]"""),
    re.compile(r"""\(\s*\(\s*['"](0\.0\.0\.0|)['"]\s*,"""),  # HTTPServer(("", 8000), …)
    re.compile(r"""\bmake_server\(\s*['"](0\.0\.0\.0|::|)['"]"""),  # wsgiref's
)


def fixed_port_warnings(root: Path, run: str) -> list[str]:
    """One warning per file the run line starts that hard-codes its listen port, and
    one per file that listens on every interface."""
    warnings = []
    for path in _entry_files(root, run):
        text = _read(path)
        js = path.suffix != ".py"  # node's entry may have no suffix (bin/www)
        found = fixed_port(text, js)
        if found is not None:
            port, line = found
            if js:
                use = "process.env.PORT (and process.env.HOST)"
            else:
                use = "int(os.environ['PORT']) (and os.environ['HOST'])"
            warnings.append(
                f"{path.relative_to(root)} listens on port {port} ('{line}'): every instance "
                f"gets its own $PORT, so it must listen on {use}"
            )
        opened = _match_line(text, _JS_OPEN if js else _PY_OPEN)
        if opened is not None and not (JS_HOST_ENV if js else _PY_HOST_ENV).search(text):
            host = "process.env.HOST" if js else "os.environ['HOST']"
            warnings.append(
                f"{path.relative_to(root)} listens on every interface ('{opened[1]}'): "
                f"{AROUND_BALANCER}; listen on {host} (kiln sets it)"
            )
    return warnings


def _match_line(text: str, patterns: tuple[re.Pattern[str], ...]) -> tuple[str, str] | None:
    """(group 1, or "" for a pattern without one; the line it is on) of the first
    pattern that matches."""
    for pattern in patterns:
        match = pattern.search(text)
        if match:
            # an optional group that took no part quotes the match's first line
            at = match.start(1) if pattern.groups and match.start(1) >= 0 else match.start()
            start = text.rfind("\n", 0, at) + 1
            end = text.find("\n", at)
            line = text[start : end if end >= 0 else len(text)].strip()
            return (match.group(1) or "" if pattern.groups else ""), line[:80]
    return None


def fixed_port(text: str, js: bool) -> tuple[str, str] | None:
    """(port, the line that fixes it), unless the file reads PORT from the environment."""
    if (_JS_ENV if js else _PY_ENV).search(text):
        return None
    if js and not any(serves in text for serves in _JS_SERVES):
        return None
    found = _match_line(text, _JS_FIXED if js else _PY_FIXED)
    for call, port in () if js or found else _PY_DEFAULT:
        default = _match_line(text, (call,))
        if default is not None:
            return port, default[1]
    return found


def _entry_files(root: Path, run: str) -> list[Path]:
    """The file `node X`, `python3 X` (or an npm start script running one) executes."""
    words = _words(run)
    if words[:2] == ["npm", "start"]:
        words = _words(_start_script(root))
    files = []
    for i, word in enumerate(words[:-1]):
        if word in ("node", "python3", "python", "nodemon", "ts-node", "tsx"):
            target = words[i + 1]
            if not target.startswith("-"):
                files.append(target)
    for built in list(files):  # compiled TypeScript: the listen line is in the source
        source = re.fullmatch(rf"{BUILT_OUTPUT}([\w/-]+)\.m?js", built)
        if source and (root / "src" / f"{source.group(1)}.ts").is_file():
            files.append(f"src/{source.group(1)}.ts")  # NestJS's main.ts, Hono's index.ts
        if re.fullmatch(r"(?:\./)?dist/[\w.-]+/server/server\.mjs", built):
            files.append("src/server.ts")  # Angular's ssr.entry, built by `ng build`
        qwik = re.fullmatch(r"server/(entry\.[\w-]+)(?:\.m?js)?", built)
        if qwik:  # Qwik City's adapter builds server/entry.node-server.js from src/
            files += [f"src/{qwik[1]}{ext}" for ext in (".tsx", ".ts")]
    paths = [root / f for f in files]
    return [p for p in paths if p.is_file() and p.resolve().is_relative_to(root.resolve())]


def _words(line: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError:
        return line.split()


def _start_script(root: Path) -> str:
    try:
        package = json.loads(_read(root / "package.json"))
        return str(package["scripts"]["start"])
    except (ValueError, KeyError, TypeError):
        return ""
