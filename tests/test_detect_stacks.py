"""kiln init knows the Python and Node web stacks teams deploy, and fixed listen ports."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from kiln.config import BuildStep, parse_config
from kiln.detect import detect
from kiln.detect_node import engine_warning
from kiln.fixedport import fixed_port_warnings
from kiln.scaffold import render_config
from kilntest import Kiln


def _write(root: Path, files: dict[str, object]) -> Path:
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        text = content if isinstance(content, str) else json.dumps(content)
        (root / name).write_text(text)
    return root


def _config(root: Path):  # type: ignore[no-untyped-def]
    return parse_config(render_config(root, name="app"))


def _steps(build: list[str | BuildStep]) -> list[object]:
    return [s if isinstance(s, str) else s.run for s in build]


STREAMLIT_RUN = (
    "python3 -m streamlit run app.py --server.address $HOST --server.port $PORT "
    "--server.headless true --global.developmentMode false --server.fileWatcherType none "
    "--browser.gatherUsageStats false"
)
GUNICORN = "python3 -m gunicorn --bind $HOST:$PORT --workers 2 --threads 4 --access-logfile -"
AIOHTTP = (  # an async worker: no threads
    "python3 -m gunicorn --bind $HOST:$PORT --workers 2 --access-logfile - "
    "--worker-class aiohttp.GunicornWebWorker"
)
UVICORN = "python3 -m uvicorn --host $HOST --port $PORT"


@pytest.mark.parametrize(
    ("files", "kind", "run", "health", "installs"),
    [
        (
            {"app.py": "import streamlit as st\nst.title('hi')\n", "requirements.txt": "streamlit"},
            "Streamlit",
            STREAMLIT_RUN,
            "/_stcore/health",
            "-r requirements.txt",
        ),
        (
            {"main.py": "import gradio as gr\ndemo = gr.Interface(fn=f)\ndemo.launch()\n"},
            "Gradio",
            "GRADIO_SERVER_NAME=$HOST GRADIO_SERVER_PORT=$PORT python3 main.py",
            "/",
            "gradio",
        ),
        (
            {"app.py": "from dash import Dash\napp = Dash(__name__)\nserver = app.server\n"},
            "Dash",
            f"{GUNICORN} app:server",
            None,
            "dash gunicorn",
        ),
        (
            {"board.py": "import dash\napp = dash.Dash(__name__)\n"},
            "Dash",
            f"{UVICORN} --interface wsgi board:app.server",
            None,
            "dash uvicorn",
        ),
        (
            {"server.py": "from sanic import Sanic\napp = Sanic('shop')\n"},
            "Sanic",
            "python3 -m sanic server:app --host $HOST --port $PORT --no-motd",
            None,
            "sanic",
        ),
        (
            {
                "app.py": "from aiohttp import web\napp = web.Application()\n"
                "app.router.add_get('/health', h)\nweb.run_app(app)\n"
            },
            "aiohttp",
            f"{AIOHTTP} app:app",
            "/health",
            "aiohttp gunicorn",
        ),
        (
            {
                "srv.py": "from aiohttp import web\n\nasync def make_app():\n"
                "    application = web.Application()\n    return application\n\n"
                "web.run_app(make_app())\n"
            },
            "aiohttp",
            f"{AIOHTTP} srv:make_app",
            None,
            "aiohttp gunicorn",
        ),
        (
            {"app.py": "from quart import Quart\napp = Quart(__name__)\n"},
            "Quart",
            f"{UVICORN} app:app",
            None,
            "quart uvicorn websockets",
        ),
        (
            {"main.py": "from litestar import Litestar\napp = Litestar(route_handlers=[])\n"},
            "Litestar",
            f"{UVICORN} main:app",
            None,
            "litestar uvicorn websockets",
        ),
        (
            {"api.py": "import falcon\napp = falcon.App()\n"},
            "Falcon",
            f"{GUNICORN} api:app",
            None,
            "falcon gunicorn",
        ),
        (
            {"web.py": "from bottle import Bottle\napp = Bottle()\n"},
            "Bottle",
            f"{GUNICORN} web:app",
            None,
            "bottle gunicorn",
        ),
    ],
)
def test_python_stacks(
    tmp_path: Path,
    files: dict[str, object],
    kind: str,
    run: str,
    health: str | None,
    installs: str,
) -> None:
    found = detect(_write(tmp_path, files))
    config = parse_config(render_config(tmp_path, name="app"))
    assert (found.kind, config.app.run, config.health.path) == (kind, run, health)
    assert _steps(config.app.build)[0].endswith(installs)
    assert config.env["PYTHONPATH"] == "deps"
    assert config.fleet.sticky == ("cookie" if kind in ("Streamlit", "Gradio") else None)


FASTHTML = """\
from fasthtml.common import *

app, rt = fast_app()

@rt('/')
def get():
    return Div(P('Hello World!'), hx_get="/change")

serve()
"""


def test_fasthtml_runs_under_uvicorn_not_as_a_script(tmp_path: Path) -> None:
    """FastHTML's quick start was run as 'python3 main.py': its serve() binds 0.0.0.0
    with reload (two processes per instance, every interface). Imported by uvicorn, as
    kiln's other ASGI apps are, serve() does nothing."""
    _write(tmp_path, {"requirements.txt": "python-fasthtml\n", "main.py": FASTHTML})
    found = detect(tmp_path)
    config = _config(tmp_path)
    assert found.kind == "FastHTML"
    assert config.app.run == "python3 -m uvicorn --host $HOST --port $PORT main:app"
    # python-fasthtml requires uvicorn[standard]: nothing to add, and no word that it lacks it
    assert _steps(config.app.build) == [
        "python3 -m pip install -q --target deps -r requirements.txt"
    ]
    assert "uvicorn comes with python-fasthtml, which requires uvicorn[standard]" in found.why
    assert not any("not in requirements.txt" in w for w in found.why), found.why
    assert not any("every interface" in w for w in found.warnings)
    assert ".sesskey" in config.app.exclude  # the developer's signing key stays out
    (note,) = [n for n in found.notes if "secret_key" in n]
    assert note.startswith("main.py gives fast_app() no secret_key")

    # FastHTML() itself, and without a requirements.txt: the build adds the framework
    made = _write(
        tmp_path / "made",
        {"app.py": "from fasthtml import FastHTML\napp = FastHTML(secret_key=KEY)\n"},
    )
    found = detect(made)
    assert found.run.endswith(" app:app") and found.kind == "FastHTML"
    assert _steps(found.build) == ["python3 -m pip install -q --target deps python-fasthtml"]
    assert not any("secret_key" in n for n in found.notes)


@pytest.mark.parametrize(
    ("files", "brings"),
    [
        (
            {
                "pyproject.toml": '[project]\ndependencies = ["litestar[standard]>=2"]\n',
                "app.py": "from litestar import Litestar\napp = Litestar([])\n",
            },
            "litestar[standard]",
        ),
        (
            {
                "requirements.txt": "fastapi[standard]==0.115.0\n",
                "main.py": "from fastapi import FastAPI\napp = FastAPI()\n",
            },
            "fastapi[standard]",
        ),
        (
            {
                "requirements.txt": "fastapi\nuvicorn[standard]\n",
                "main.py": "from fastapi import FastAPI, WebSocket\napp = FastAPI()\n",
            },
            None,  # uvicorn is listed itself, with websockets through its extra
        ),
    ],
)
def test_an_extra_that_brings_uvicorn_standard_adds_no_server(
    tmp_path: Path, files: dict[str, str], brings: str | None
) -> None:
    """init said 'uvicorn, websockets not in pyproject.toml: the build adds it' for
    litestar[standard] and fastapi[standard], which require uvicorn[standard] (and so
    websockets), and a second, plain uvicorn was installed over it."""
    found = detect(_write(tmp_path, files))
    assert found.run.startswith("python3 -m uvicorn --host $HOST --port $PORT ")
    (pip,) = [s.run for s in found.build if isinstance(s, BuildStep)]
    assert not re.search(r"(?<![\w-])(uvicorn|websockets)(?![\w-])", pip), pip
    assert not any("the build adds it" in w for w in found.why), found.why
    if brings is not None:
        assert f"uvicorn comes with {brings}, which requires uvicorn[standard]" in found.why


def test_gradios_hash_seed_is_writable_and_not_drift(tmp_path: Path) -> None:
    """Gradio writes deps/gradio/hash_seed.txt on its first launch: a new user's
    `kiln drift` exited 6 right after a clean deploy, on every instance."""
    _write(tmp_path, {"app.py": "import gradio as gr\ngr.Interface(f).launch()\n"})
    config = parse_config(render_config(tmp_path, name="app"))
    assert config.app.writable == ["tmp/", "*.log", "deps/gradio/hash_seed.txt"]
    (tmp_path / "app.py").write_text("print('hi')\n")
    assert parse_config(render_config(tmp_path, name="app")).app.writable == ["tmp/", "*.log"]


def test_gradio_launch_with_a_fixed_port_is_a_warning(tmp_path: Path) -> None:
    _write(tmp_path, {"app.py": "import gradio as gr\ngr.Interface(f).launch(server_port=7860)\n"})
    (warning,) = detect(tmp_path).warnings
    assert "server_port= to launch()" in warning


@pytest.mark.parametrize(
    ("package", "extra", "kind", "run", "health"),
    [
        (
            {
                "scripts": {"dev": "next dev", "build": "next build", "start": "next start"},
                "dependencies": {"next": "^15", "react": "^19"},
            },
            {"app/api/health/route.ts": "export function GET() {}"},
            "Next.js",
            "node_modules/.bin/next start -H $HOST -p $PORT",
            "/api/health",
        ),
        (
            {
                "scripts": {"build": "nuxt build", "dev": "nuxt dev"},
                "dependencies": {"nuxt": "^3"},
            },
            {},
            "Nuxt",
            "node .output/server/index.mjs",
            None,
        ),
        (
            {
                "scripts": {"build": "nest build", "start:prod": "node dist/main"},
                "dependencies": {"@nestjs/core": "^10"},
                "devDependencies": {"@nestjs/cli": "^10"},
            },
            # the scaffold's line plus the host (without: test_a_port_expression_without_...)
            {"src/main.ts": "await app.listen(process.env.PORT ?? 3000, process.env.HOST);\n"},
            "NestJS",
            "node dist/main.js",
            None,
        ),
        (
            {
                "scripts": {"dev": "vite", "build": "vite build", "preview": "vite preview"},
                "dependencies": {"react": "^18"},
                "devDependencies": {"vite": "^5"},
            },
            {"index.html": "<div id=root>"},
            "Vite static site",
            "python3 -m http.server --bind $HOST --directory dist $PORT",
            "/",
        ),
        (
            {
                "scripts": {"start": "react-scripts start", "build": "react-scripts build"},
                "dependencies": {"react-scripts": "5.0.1"},
            },
            {"public/index.html": "<div id=root>"},
            "Create React App static site",
            "python3 -m http.server --bind $HOST --directory build $PORT",
            "/",
        ),
        (
            {
                "scripts": {"build": "vite build"},
                "devDependencies": {"vite": "^5"},
            },
            {
                "vite.config.js": "export default { build: { outDir: 'site' } }",
                "index.html": "<div id=app>",
            },
            "Vite static site",
            "python3 -m http.server --bind $HOST --directory site $PORT",
            "/",
        ),
    ],
)
def test_node_stacks_build_at_bake_time_and_run_their_production_server(
    tmp_path: Path,
    package: dict[str, object],
    extra: dict[str, object],
    kind: str,
    run: str,
    health: str | None,
) -> None:
    _write(tmp_path, {"package.json": package, "package-lock.json": {}, **extra})
    found = detect(tmp_path)
    config = parse_config(render_config(tmp_path, name="app"))
    assert (found.kind, config.app.run, config.health.path) == (kind, run, health)
    assert _steps(config.app.build) == [
        "npm ci --include=dev",
        "npm run build",
        "npm prune --omit=dev",
    ]
    assert config.env["NODE_ENV"] == "production"
    assert not found.warnings


def test_a_vite_app_with_an_express_server_is_not_a_static_site(tmp_path: Path) -> None:
    package = {
        "scripts": {"build": "vite build", "start": "node server.js"},
        "dependencies": {"express": "^4"},
        "devDependencies": {"vite": "^5"},
    }
    _write(tmp_path, {"package.json": package, "server.js": "app.listen(process.env.PORT)"})
    found = detect(tmp_path)
    assert (found.kind, found.run) == ("Node", "node server.js")


@pytest.mark.parametrize(
    ("files", "run", "port", "line"),
    [
        (  # the nodejs.org hello world
            {
                "index.js": "const http = require('node:http');\nconst port = 3000;\n"
                "server.listen(port, hostname, () => {});\n"
            },
            "node index.js",
            "3000",
            "const port = 3000;",
        ),
        (  # express, through npm start
            {
                "package.json": {"scripts": {"start": "nodemon app.js"}},
                "app.js": "const app = express();\napp.listen(3000, () => console.log('up'))\n",
            },
            "npm start",
            "3000",
            "app.listen(3000, () => console.log('up'))",
        ),
        (
            {"index.js": "fastify.listen({ port: 8000 }, (err) => {})\n"},
            "node index.js",
            "8000",
            "fastify.listen({ port: 8000 }, (err) => {})",
        ),
        (
            {
                "app.py": "import os\nfrom http.server import HTTPServer\n"
                "HTTPServer(('', 8000), Handler).serve_forever()\n"
            },
            "python3 app.py",
            "8000",
            "HTTPServer(('', 8000), Handler).serve_forever()",
        ),
    ],
)
def test_init_warns_when_the_entry_file_hard_codes_its_port(
    kiln: Kiln, files: dict[str, object], run: str, port: str, line: str
) -> None:
    _write(kiln.cwd, files)
    found = detect(kiln.cwd)
    assert found.run == run
    (warning,) = [w for w in found.warnings if "listens on port" in w]
    assert f"listens on port {port} ('{line}')" in warning and "$PORT" in warning
    out = kiln("init").stdout
    assert f"warning: {warning.split(':')[0]}" in out
    assert f"# warning: {warning}" in (kiln.cwd / "kiln.toml").read_text()


@pytest.mark.parametrize(
    "source",
    [
        "const port = process.env.PORT || 3000;\napp.listen(port);\n",
        "app.listen(Number(process.env['PORT']), process.env.HOST);\n",
        "const { PORT = 3000 } = process.env;\napp.listen(PORT);\n",
    ],
)
def test_no_warning_when_the_port_comes_from_the_environment(tmp_path: Path, source: str) -> None:
    _write(tmp_path, {"index.js": source, "package.json": {"main": "index.js"}})
    assert not [w for w in detect(tmp_path).warnings if "listens on port" in w]


def test_a_nest_app_listening_on_3000_gets_the_warning_not_also_the_note(tmp_path: Path) -> None:
    package = {"scripts": {"build": "nest build"}, "dependencies": {"@nestjs/core": "^10"}}
    main = "async function bootstrap() {\n  await app.listen(3000);\n}\n"
    _write(tmp_path, {"package.json": package, "src/main.ts": main})
    found = detect(tmp_path)
    ported = [w for w in found.warnings if "listens on port" in w]
    assert found.kind == "NestJS" and len(ported) == 1 and not found.notes
    (tmp_path / "src/main.ts").write_text("await app.listen(config.get('port'));\n")
    found = detect(tmp_path)
    assert "process.env.PORT" in found.notes[0]
    # no host: Nest's listen() binds every interface (seen with `ss`: *:PORT)
    shown = [w.split(" (", 1)[0] for w in found.warnings]
    assert shown == ["src/main.ts listens on every interface"]


@pytest.mark.parametrize(
    "line",
    [
        "await app.listen(process.env.PORT ?? 3000);",  # the NestJS 11 scaffold's own line
        "app.listen(process.env.PORT || 3000, () => console.log('up'));",
        "server.listen(Number(process.env.PORT));",
        "app.listen(parseInt(process.env.PORT, 10), () => {});",
    ],
)
def test_a_port_expression_without_a_host_listens_on_every_interface(
    tmp_path: Path, line: str
) -> None:
    _write(tmp_path, {"package.json": {"main": "server.js"}, "server.js": line + "\n"})
    (warning,) = detect(tmp_path).warnings
    assert warning.startswith(f"server.js listens on every interface ('{line}')")


@pytest.mark.parametrize(
    "line",
    [
        "app.listen(Number(process.env.PORT), process.env.HOST);",
        "app.listen(port, '127.0.0.1', () => {});",
        "fastify.listen({ port: Number(process.env.PORT) });",  # Fastify: localhost
    ],
)
def test_a_port_expression_with_a_host_is_not_warned_of(tmp_path: Path, line: str) -> None:
    _write(tmp_path, {"package.json": {"main": "server.js"}, "server.js": line + "\n"})
    assert not [w for w in detect(tmp_path).warnings if "every interface" in w]


def test_a_fastify_app_gets_a_note_on_the_host_it_binds(tmp_path: Path) -> None:
    package = {"main": "server.js", "dependencies": {"fastify": "^5"}}
    _write(
        tmp_path,
        {"package.json": package, "server.js": "fastify.listen({port: +process.env.PORT})"},
    )
    found = detect(tmp_path)
    assert found.kind == "Node" and any("Fastify listens on localhost" in n for n in found.notes)


@pytest.mark.parametrize(
    "source",
    [
        "await app.listen({ port: Number(process.env.PORT), host: process.env.HOST });",
        "const host = process.env.HOST;\napp.listen({\n  host,\n  port: +process.env.PORT\n});",
    ],
)
def test_a_fastify_app_told_its_host_and_port_gets_no_note(tmp_path: Path, source: str) -> None:
    """A new user's TypeScript Fastify server passed both, and was told to anyway."""
    package = {"main": "server.js", "dependencies": {"fastify": "^5"}}
    _write(tmp_path, {"package.json": package, "server.js": "require('./src/server')\n"})
    _write(tmp_path, {"src/server.ts": "await app.listen({ port: Number(process.env.PORT) });\n"})
    assert [n for n in detect(tmp_path).notes if "Fastify" in n]  # not told its host: noted
    _write(tmp_path, {"src/server.ts": source + "\n"})
    assert not [n for n in detect(tmp_path).notes if "Fastify" in n]


@pytest.mark.parametrize(
    ("name", "source", "port"),
    [
        ("server.js", "const server = Hapi.server({ port: 3000, host: 'localhost' });\n", "3000"),
        ("server.js", "const wss = new WebSocketServer({ port: 8080 });\n", "8080"),
        ("server.js", "const io = new Server(3000);\n", "3000"),
        ("app.py", "app = make_app()\napp.listen(8888)\n", "8888"),  # tornado
        ("app.py", "async def main():\n    async with serve(echo, 'localhost', 8765):\n", "8765"),
        ("app.py", "serve(app, host='127.0.0.1', port=8080)\n", "8080"),  # waitress
        ("app.py", "web.run_app(app)\n", "8080, aiohttp's default,"),
        # aiohttp's docs' own forms: missed by a pattern wanting one name and nothing else
        ("app.py", "web.run_app(init_app())\n", "8080, aiohttp's default,"),
        ("app.py", "web.run_app(app, host='127.0.0.1')\n", "8080, aiohttp's default,"),
        ("app.py", "web.run_app(app, port=8081)\n", "8081"),
        ("app.py", "server = make_server('0.0.0.0', 6543, app)\n", "6543"),  # wsgiref
        ("app.py", "app = Robyn(__file__)\napp.start(port=8080)\n", "8080"),
        ("app.py", "app = Robyn(__file__)\napp.start(host='0.0.0.0', port=8000)\n", "8000"),
        (
            "app.py",
            "app = Robyn(__file__)\nif __name__ == '__main__':\n    app.start()\n",
            "8080, Robyn's default,",
        ),
    ],
)
def test_more_quickstarts_that_fix_their_port(
    tmp_path: Path, name: str, source: str, port: str
) -> None:
    """The quickstarts of hapi, ws, socket.io, tornado, websockets, waitress and aiohttp:
    each passed init without a word and failed its first deploy (EADDRINUSE)."""
    run = f"{'node' if name.endswith('.js') else 'python3'} {name}"
    (tmp_path / name).write_text(source)
    warnings = fixed_port_warnings(tmp_path, run)
    assert any(f"listens on port {port} (" in w for w in warnings), warnings


@pytest.mark.parametrize(
    ("name", "source", "open_"),
    [
        ("bin/www", "var server = http.createServer(app);\nserver.listen(port);\n", True),
        ("index.js", "app.listen(PORT, () => console.log('up'));\n", True),
        ("index.js", "app.listen(process.env.PORT, '0.0.0.0');\n", True),
        ("index.js", "app.listen(process.env.PORT, process.env.HOST);\n", False),
        (
            "index.js",
            "const host = process.env.HOST || '0.0.0.0';\napp.listen(port, host);\n",
            False,
        ),
        ("app.py", "serve(app, host='0.0.0.0', port=int(os.environ['PORT']))\n", True),
        ("app.py", "app.run(host=os.environ['HOST'], port=int(os.environ['PORT']))\n", False),
        ("app.py", "httpd = make_server('0.0.0.0', 6543, app)\n", True),  # wsgiref
        ("app.py", 'httpd = make_server("", 8000, app)\n', True),
        ("app.py", "httpd = make_server('127.0.0.1', 8000, app)\n", False),
        ("app.py", 'app.start(host="0.0.0.0", port=8080)\n', True),  # Robyn
        ("app.py", "app.start(port=int(os.environ['PORT']))\n", False),
        # ws listens on every interface unless given a host
        ("server.js", "const wss = new WebSocketServer({ port: 8080 });\n", True),
        ("server.js", "const wss = new WebSocket.Server({\n  port: 8080\n});\n", True),
        ("server.js", "new WebSocketServer({ host: process.env.HOST, port: +PORT });\n", False),
        ("server.js", "const wss = new WebSocketServer({ server });\n", False),
    ],
)
def test_listening_on_every_interface_is_a_warning(
    tmp_path: Path, name: str, source: str, open_: bool
) -> None:
    """Each instance is then reachable without the balancer: no TLS, no host routing,
    and whatever X-Forwarded-For a client sends. express-generator's bin/www and the
    NestJS scaffold do it (Node binds every interface when listen() gets no host)."""
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_text(source)
    run = f"{'python3' if name.endswith('.py') else 'node'} {name}"
    warnings = [w for w in fixed_port_warnings(tmp_path, run) if "every interface" in w]
    assert bool(warnings) == open_, warnings


PYRAMID = """\
from wsgiref.simple_server import make_server
from pyramid.config import Configurator
from pyramid.response import Response


def hello_world(request):
    return Response('Hello World!')


if __name__ == '__main__':
    with Configurator() as config:
        config.add_route('hello', '/')
        config.add_view(hello_world, route_name='hello')
        app = config.make_wsgi_app()
    server = make_server('0.0.0.0', 6543, app)
    server.serve_forever()
"""


def test_pyramid_and_robyn_hello_worlds_name_the_line_to_change(tmp_path: Path) -> None:
    """Pyramid's single-file hello world (the stdlib's make_server) and Robyn's quick
    start passed init without a word: a fixed port and every interface."""
    pyramid = _write(tmp_path / "pyramid", {"app.py": PYRAMID, "requirements.txt": "pyramid\n"})
    found = detect(pyramid)
    assert found.run == "python3 app.py"
    line = "server = make_server('0.0.0.0', 6543, app)"
    assert found.warnings == [
        f"app.py listens on port 6543 ('{line}'): every instance gets its own $PORT, so it "
        "must listen on int(os.environ['PORT']) (and os.environ['HOST'])",
        f"app.py listens on every interface ('{line}'): each instance is then reachable "
        "around kiln's load balancer (no TLS, no host routing, any X-Forwarded-For "
        "believed); listen on os.environ['HOST'] (kiln sets it)",
    ]
    robyn = _write(
        tmp_path / "robyn",
        {
            "app.py": "from robyn import Robyn\n\napp = Robyn(__file__)\n\n"
            '@app.get("/")\nasync def h(request):\n    return "Hello, world!"\n\n'
            'app.start(host="0.0.0.0", port=8080)\n',
            "requirements.txt": "robyn\n",
        },
    )
    warnings = detect(robyn).warnings
    assert [w.split(":")[0] for w in warnings] == [
        "app.py listens on port 8080 ('app.start(host=\"0.0.0.0\", port=8080)')",
        "app.py listens on every interface ('app.start(host=\"0.0.0.0\", port=8080)')",
    ]


@pytest.mark.parametrize(
    ("wanted", "installed", "warned"),
    [
        (">=22", "v20.19.2", True),
        ("^22.3.0", "v20.19.2", True),
        ("22.x", "v20.19.2", True),
        (">=18.17.0", "v20.19.2", False),
        ("*", "v20.19.2", False),
        (">=22", None, False),  # no node here: nothing to compare
    ],
)
def test_a_newer_node_than_this_machines_is_a_warning(
    tmp_path: Path, wanted: str, installed: str | None, warned: bool
) -> None:
    """NestJS 12 and an engines.node >=22 app on this Node 20 host got only npm's
    hundred EBADENGINE lines at bake."""
    _write(tmp_path, {"package.json": {"engines": {"node": wanted}}})
    assert bool(engine_warning(tmp_path, installed)) == warned


def test_init_compares_engines_with_the_node_it_finds(tmp_path: Path) -> None:
    _write(tmp_path, {"package.json": {"engines": {"node": ">=999"}, "main": "index.js"}})
    (tmp_path / "index.js").write_text(
        "require('http').createServer().listen(process.env.PORT, process.env.HOST)\n"
    )
    warnings = detect(tmp_path).warnings
    if shutil.which("node"):
        assert any("engines.node" in w for w in warnings), warnings


# Found by deploying each framework's own starter (helpers, November 30): none of
# these deployed with the kiln.toml kiln init wrote.


def test_react_router_framework_mode_runs_its_server_not_a_static_site(tmp_path: Path) -> None:
    """Taken for a Vite static site: dist/ never existed, every check 404."""
    package = {
        "scripts": {
            "build": "react-router build",
            "start": "react-router-serve ./build/server/index.js",
        },
        "dependencies": {"@react-router/node": "7.16.0", "@react-router/serve": "7.16.0"},
        "devDependencies": {"vite": "^8", "@react-router/dev": "7.16.0"},
    }
    found = detect(_write(tmp_path, {"package.json": package, "package-lock.json": "{}"}))
    assert (found.kind, found.run) == ("React Router", "npm start"), found
    assert "npm run build" in _steps(found.build)
    assert not any("development server" in w for w in found.why + found.warnings)


@pytest.mark.parametrize("adapter", ["@sveltejs/adapter-node", "@sveltejs/adapter-auto"])
def test_sveltekit_runs_adapter_nodes_build_with_the_balancers_headers(
    tmp_path: Path, adapter: str
) -> None:
    """Was 'unknown' (no start script); its form POSTs then answered 403 until told
    where the scheme comes from."""
    package = {
        "scripts": {"build": "vite build", "dev": "vite dev"},
        "devDependencies": {"@sveltejs/kit": "^2", adapter: "^5", "vite": "^8"},
    }
    config = "import adapter from '%s';\nexport default { kit: { adapter: adapter() } };\n"
    found = detect(
        _write(tmp_path, {"package.json": package, "svelte.config.js": config % adapter})
    )
    assert (found.kind, found.run) == ("SvelteKit", "node build"), found
    assert found.env["PROTOCOL_HEADER"] == "x-forwarded-proto"
    assert found.env["ADDRESS_HEADER"] == "x-forwarded-for" and found.env["XFF_DEPTH"] == "1"
    assert "/build/" in found.exclude and "node_modules/" in found.exclude
    assert [s for s in _steps(found.build) if s == "npm run build"] == ["npm run build"]
    warned = any("adapter-node" in w for w in found.warnings)
    assert warned == (adapter != "@sveltejs/adapter-node")


def test_astro_on_demand_runs_its_standalone_server(tmp_path: Path) -> None:
    package = {
        "scripts": {"build": "astro build", "dev": "astro dev"},
        "dependencies": {"astro": "^5", "@astrojs/node": "^9"},
    }
    config = "export default defineConfig({ adapter: node({ mode: 'standalone' }) });\n"
    found = detect(_write(tmp_path, {"package.json": package, "astro.config.mjs": config}))
    assert (found.kind, found.run) == ("Astro", "node ./dist/server/entry.mjs"), found
    assert "/dist/" in found.exclude and not found.warnings
    assert any("security.allowedDomains" in n for n in found.notes)


def test_feathers_compiles_and_keeps_each_client_on_one_instance(tmp_path: Path) -> None:
    """socket.io came in through @feathersjs/socketio: no sticky, so every long-poll
    reaching the other instance answered 400 'Session ID unknown'; and the compile
    script never ran ('Cannot find module lib')."""
    package = {
        "scripts": {"compile": "shx rm -rf lib/ && tsc", "start": "node lib/"},
        "dependencies": {"@feathersjs/feathers": "^5", "@feathersjs/socketio": "^5"},
        "devDependencies": {"typescript": "^5"},
    }
    found = detect(_write(tmp_path, {"package.json": package, "package-lock.json": "{}"}))
    assert found.sticky is not None and "@feathersjs/socketio" in found.sticky
    assert "npm run compile" in _steps(found.build), found.build


def test_honos_fixed_port_is_found_in_its_typescript_source(tmp_path: Path) -> None:
    """create-hono's node template: serve({ fetch, port: 3000 }) in src/index.ts, run as
    dist/index.js; no warning, then EADDRINUSE at the first deploy."""
    package = {
        "scripts": {"build": "tsc", "start": "node dist/index.js"},
        "dependencies": {"hono": "^4", "@hono/node-server": "^1"},
    }
    source = (
        "import { serve } from '@hono/node-server'\n"
        "serve({\n  fetch: app.fetch,\n  port: 3000\n}, (info) => console.log(info.port))\n"
    )
    found = detect(_write(tmp_path, {"package.json": package, "src/index.ts": source}))
    # run as the build makes it, with or without a local dist/ (it was 'npm start' without)
    assert found.run == "node dist/index.js"
    assert any("src/index.ts listens on port 3000" in w for w in found.warnings), found.warnings
    # the line to change is the port's, not the callback's on the closing brace's line
    assert any(
        "src/index.ts listens on every interface ('port: 3000')" in w for w in found.warnings
    ), found.warnings


@pytest.mark.parametrize(
    ("source", "kind", "run"),
    [
        (
            "import panel as pn\npn.panel('hello').servable()\n",
            "Panel",
            "python3 -m panel serve app.py --address $HOST --port $PORT",
        ),
        (
            "from bokeh.io import curdoc\nfrom bokeh.plotting import figure\n"
            "curdoc().add_root(figure())\n",
            "Bokeh",
            "python3 -m bokeh serve app.py --address $HOST --port $PORT",
        ),
        (
            "from shiny import App, ui\napp_ui = ui.page_fluid()\napp = App(app_ui, None)\n",
            "Shiny",
            "python3 -m shiny run app.py --host $HOST --port $PORT",
        ),
        (
            "from nicegui import ui\nui.label('hi')\nui.run()\n",
            "NiceGUI",
            "python3 app.py",
        ),
    ],
)
def test_session_servers_run_under_their_own_server_and_keep_clients_on_one_instance(
    tmp_path: Path, source: str, kind: str, run: str
) -> None:
    """Run as scripts, Panel, Bokeh and Shiny apps ended at once (status 0); through two
    instances, NiceGUI's socket.io and Shiny's uploads failed every time without
    sticky sessions."""
    (tmp_path / "app.py").write_text(source)
    (tmp_path / "requirements.txt").write_text(kind.lower() + "\n")
    found = detect(tmp_path)
    assert (found.kind, found.run) == (kind, run), found
    assert found.sticky is not None and kind in found.sticky
    assert _config(tmp_path).fleet.sticky == "cookie"
    ported = [w for w in found.warnings if "listens on port 8080, NiceGUI's default," in w]
    assert bool(ported) == (kind == "NiceGUI"), found.warnings


# Found by a new user's exploration of Node apps (December 1): each failed its first
# deploy, or deployed something else, with the kiln.toml kiln init wrote.


@pytest.mark.parametrize(
    ("start", "warned"),
    [
        ("node --env-file=.env server.js", True),
        ("node --env-file .env server.js", True),
        ("cross-env NODE_ENV=production node --env-file=./.env.local server.js", True),
        ("node --env-file-if-exists=.env server.js", False),  # Node 22: may be missing
        ("node --env-file=config/app.env server.js", False),  # committed, kept
    ],
)
def test_a_start_script_reading_a_dotenv_file_the_image_lacks_is_a_warning(
    tmp_path: Path, start: str, warned: bool
) -> None:
    """Every instance failed with 'node: .env: not found': kiln leaves .env out."""
    files: dict[str, object] = {"package.json": {"scripts": {"start": start}}}
    files |= {"server.js": "", ".env": "A=1\n", ".env.local": "B=2\n", "config/app.env": "C=3\n"}
    found = detect(_write(tmp_path, files))
    said = [w for w in found.warnings if "--env-file" in w]
    assert bool(said) == warned, found.warnings
    if warned:
        assert said[0].startswith(f"scripts.start ('{start}') gives node --env-file")
        assert "fail at once ('node: " in said[0] and ": not found')" in said[0]
        assert "[env]" in said[0] and "[secrets]" in said[0] and "drop the flag" in said[0]


ELEVENTY = {
    "scripts": {"build": "npx @11ty/eleventy", "start": "npx @11ty/eleventy --serve"},
    "dependencies": {"@11ty/eleventy": "^3"},
}


@pytest.mark.parametrize(
    ("package", "files", "kind", "site"),
    [
        (ELEVENTY, {}, "Eleventy", "_site"),
        (
            {**ELEVENTY, "scripts": {"build": "npx @11ty/eleventy --output=dist"}},
            {".eleventy.js": "module.exports = () => ({ dir: { output: 'www' } })"},
            "Eleventy",
            "dist",  # the command line wins, as in Eleventy
        ),
        ({**ELEVENTY, "scripts": {"build": "eleventy --output public/"}}, {}, "Eleventy", "public"),
        (
            ELEVENTY,
            {"eleventy.config.js": 'export default { dir: { input: "src", output: "www" } }'},
            "Eleventy",
            "www",
        ),
        (ELEVENTY, {".eleventy.js": "c => c.setOutputDirectory('./out/')"}, "Eleventy", "out"),
        (
            {"scripts": {"build": "vitepress build docs"}, "devDependencies": {"vitepress": "^1"}},
            {"docs/index.md": "# hi"},
            "VitePress",
            "docs/.vitepress/dist",
        ),
        (
            {"scripts": {"build": "vitepress build docs"}, "devDependencies": {"vitepress": "^1"}},
            {"docs/.vitepress/config.mts": "export default defineConfig({ outDir: '../site' })"},
            "VitePress",
            "site",  # relative to the site's root, docs/
        ),
        (
            {
                "scripts": {"build": "docusaurus build", "start": "docusaurus start"},
                "dependencies": {"@docusaurus/core": "^3", "react": "^19"},
            },
            {},
            "Docusaurus",
            "build",
        ),
        (
            {"scripts": {"build": "vite build --outDir=site"}, "devDependencies": {"vite": "^5"}},
            {},
            "Vite",
            "site",
        ),
    ],
)
def test_site_generators_are_built_and_their_output_served(
    tmp_path: Path, package: dict[str, object], files: dict[str, object], kind: str, site: str
) -> None:
    """Eleventy ran its file-watching dev server (`--serve`, on 8080): the gate failed."""
    found = detect(_write(tmp_path, {"package.json": package, **files}))
    assert found.kind == f"{kind} static site", found
    assert found.run == f"python3 -m http.server --bind $HOST --directory {site} $PORT"
    assert "npm run build" in _steps(found.build) and found.health_path == "/"
    # a page per route: no note on a single-page app's deep links
    assert any("single-page-app" in n for n in found.notes) == (kind == "Vite")


VITEPRESS_INIT = {  # what `vitepress init` writes: no build script
    "docs:dev": "vitepress dev docs",
    "docs:build": "vitepress build docs",
    "docs:preview": "vitepress preview docs",
}


@pytest.mark.parametrize(
    ("scripts", "deps", "script", "site"),
    [
        (VITEPRESS_INIT, {"vitepress": "^1"}, "docs:build", "docs/.vitepress/dist"),
        (
            {"docs:build": "vitepress build docs --outDir public"},
            {"vitepress": "^1"},
            "docs:build",
            "public",  # --outDir is the working directory's, the config's outDir docs/'s
        ),
        (
            {"all": "npm run site && npm test", "site": "vitepress build"},
            {"vitepress": "^1"},
            "site",  # the script that builds, not one that runs it among others
            ".vitepress/dist",
        ),
        (
            {"start": "eleventy --serve", "watch": "eleventy --watch", "site": "eleventy"},
            {"@11ty/eleventy": "^3"},
            "site",
            "_site",
        ),
    ],
)
def test_a_site_generator_built_by_a_script_not_named_build_is_found(
    tmp_path: Path, scripts: dict[str, str], deps: dict[str, str], script: str, site: str
) -> None:
    """`vitepress init` names its build docs:build: the project was no VitePress site."""
    package = {"scripts": scripts, "devDependencies": deps}
    found = detect(_write(tmp_path, {"package.json": package, "docs/index.md": "# hi"}))
    assert found.kind.endswith(" static site"), found
    assert found.run == f"python3 -m http.server --bind $HOST --directory {site} $PORT"
    assert f"npm run {script}" in _steps(found.build), found.build
    assert f"scripts.{script}: run at bake time" in " ".join(found.why)


LOCKS: dict[str, dict[str, object]] = {
    "npm": {"package-lock.json": "{}"},
    "pnpm": {"pnpm-lock.yaml": "lockfileVersion: '9.0'\n"},
    "yarn": {"yarn.lock": "# yarn lockfile v1\n"},
}


@pytest.mark.parametrize(
    ("scripts", "dev", "lock", "files", "steps", "said"),
    [
        (
            {"start": "tsx src/index.ts"},
            {"tsx": "^4"},
            "npm",
            {},
            ["npm ci --include=dev"],
            "runs tsx, a devDependency: dev packages stay in the image; move tsx to",
        ),
        (
            {"build": "tsc", "start": "cross-env NODE_ENV=production node dist/server.js"},
            {"cross-env": "^7", "typescript": "^5"},
            "npm",
            {},
            ["npm ci --include=dev", "npm run build"],
            "runs cross-env, a devDependency",
        ),
        (
            {"build": "tsc", "start": "npm run serve", "serve": "npx ts-node src/index.ts"},
            {"ts-node": "^10", "typescript": "^5"},
            "pnpm",
            {},
            [
                "npx --yes pnpm@9 install --frozen-lockfile --prod=false",
                "npx --yes pnpm@9 run build",
            ],
            "runs ts-node, a devDependency",
        ),
        (
            {"start": "NODE_ENV=production tsc && node dist/index.js"},
            {"typescript": "^5"},
            "yarn",
            {},
            ["npx --yes yarn@1 install --frozen-lockfile --non-interactive --production=false"],
            "runs tsc (typescript), a devDependency: dev packages stay in the image; move "
            "typescript to dependencies",
        ),
        (  # a command named by the package's bin, found when node_modules/ is there
            {"start": "acme-serve ./site"},
            {"@acme/tools": "^1"},
            "npm",
            {"node_modules/@acme/tools/package.json": '{"bin": {"acme-serve": "serve.js"}}'},
            ["npm ci --include=dev"],
            "runs acme-serve (@acme/tools), a devDependency",
        ),
        (  # @types/node is no `node`; eslint is not run: pruned as before
            {"build": "tsc", "start": "node --enable-source-maps dist/index.js"},
            {"@types/node": "^22", "eslint": "^9", "typescript": "^5"},
            "npm",
            {},
            ["npm ci --include=dev", "npm run build", "npm prune --omit=dev"],
            None,
        ),
    ],
)
def test_a_start_script_running_a_dev_dependency_keeps_the_dev_packages(
    tmp_path: Path,
    scripts: dict[str, str],
    dev: dict[str, str],
    lock: str,
    files: dict[str, object],
    steps: list[str],
    said: str | None,
) -> None:
    """After the prune (or a production install) every instance failed at boot with
    'sh: 1: tsx: not found', 'cross-env: not found'."""
    package = {"scripts": scripts, "dependencies": {"express": "^4"}, "devDependencies": dev}
    found = detect(_write(tmp_path, {"package.json": package, **LOCKS[lock], **files}))
    assert found.run == "npm start"
    assert _steps(found.build) == steps
    kept = [n for n in found.notes if "devDependenc" in n]
    assert [said in n for n in kept] == ([True] if said else [])


@pytest.mark.parametrize(
    ("start", "watching"),
    [
        ("nodemon server.js", "nodemon"),
        ("tsx watch src/index.ts", "tsx watch"),
        ("node --watch server.js", "node --watch"),
        ("cross-env PORT=1 node --watch-path=src server.js", "node --watch"),
        ("node server.js --workers 2", None),
    ],
)
def test_a_start_script_that_watches_files_is_a_warning(
    tmp_path: Path, start: str, watching: str | None
) -> None:
    """A watcher that sees the app crash waits for a file change instead of exiting."""
    package = {"scripts": {"start": start}, "dependencies": {"express": "^4", "tsx": "^4"}}
    files = {"package.json": package, "server.js": ""}
    said = [w for w in detect(_write(tmp_path, files)).warnings if "watcher" in w]
    assert said == (
        [
            f"scripts.start runs {watching} ('{start}'), a development watcher: when "
            "the app crashes it waits for a file to change instead of exiting, and it "
            "watches files an image never changes; start the app without it ('node "
            "server.js', 'tsx src/index.ts')"
        ]
        if watching
        else []
    )


QWIK = {
    "scripts": {
        "build": "qwik build",
        "build.server": "vite build -c adapters/node-server/vite.config.ts",
        "serve": "node server/entry.node-server",
        "start": "vite --open --mode ssr",
    },
    "devDependencies": {
        "@builder.io/qwik": "^1",
        "@builder.io/qwik-city": "^1",
        "undici": "*",
        "vite": "^5",
    },
}
STATIC_RUN = "python3 -m http.server --bind $HOST --directory dist $PORT"
QWIK_ENTRY = (  # the node-server adapter's src/entry.node-server.tsx
    "const PORT = process.env.PORT ?? 3004;\nconst server = createServer();\n"
    "server.listen(PORT, () => {\n  console.log(`listening on ${PORT}`);\n});\n"
)


def test_qwik_city_runs_its_node_server_with_its_dev_packages(tmp_path: Path) -> None:
    """Taken for a Vite static site: dist/ was served, and '/' was a directory listing.
    Its server's packages (undici) are devDependencies, so a prune broke it too."""
    files = {
        "package.json": QWIK,
        "package-lock.json": "{}",
        "adapters/node-server/vite.config.ts": "export default {}",
        "src/entry.node-server.tsx": QWIK_ENTRY,
    }
    found = detect(_write(tmp_path, files))
    assert (found.kind, found.run) == ("Qwik City", "node server/entry.node-server"), found
    assert _steps(found.build) == ["npm ci --include=dev", "npm run build"]  # no prune
    assert found.env["PROTOCOL_HEADER"] == "x-forwarded-proto"
    assert "/server/" in found.exclude and "/dist/" in found.exclude
    assert any("ORIGIN" in n for n in found.notes)
    # the adapter listens on $PORT and every interface: the source is read for it
    (warning,) = found.warnings
    assert warning.startswith("src/entry.node-server.tsx listens on every interface")


@pytest.mark.parametrize(
    ("adapter", "kind", "run", "warned"),
    [
        ("express", "Qwik City", "node server/entry.express", None),
        ("static", "Qwik City static site", STATIC_RUN, None),
        (None, "Qwik City", "node server/entry.node-server", "no adapter in adapters/"),
    ],
)
def test_qwik_city_runs_as_its_adapter_builds_it(
    tmp_path: Path, adapter: str | None, kind: str, run: str, warned: str | None
) -> None:
    package = {**QWIK, "scripts": {"build": "qwik build"}}
    files: dict[str, object] = {"package.json": package}
    if adapter:
        files[f"adapters/{adapter}/vite.config.ts"] = "export default {}"
    found = detect(_write(tmp_path, files))
    assert (found.kind, found.run) == (kind, run), found
    assert [(warned or "") in w for w in found.warnings] == ([True] if warned else [])


@pytest.mark.parametrize(
    ("package", "files", "said"),
    [
        (
            {"scripts": {"build": "vite build"}, "devDependencies": {"vite": "^5", "vike": "^0"}},
            {"index.html": "<div id=app>"},
            "package.json has vike, which renders pages on a server",
        ),
        (
            {"scripts": {"build": "vite build"}, "devDependencies": {"vite": "^5"}},
            {},
            "no index.html, which Vite builds into dist/index.html",
        ),
    ],
)
def test_a_vite_build_that_may_make_no_page_is_a_warning(
    tmp_path: Path, package: dict[str, object], files: dict[str, object], said: str
) -> None:
    """Silently served as a static site, '/' was a directory listing."""
    found = detect(_write(tmp_path, {"package.json": package, **files}))
    assert found.kind == "Vite static site"
    assert [w for w in found.warnings if w.startswith(said)] == found.warnings != []


CHANNELS = {
    "manage.py": "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'mysite.settings')\n",
    "mysite/settings.py": "INSTALLED_APPS = ['daphne', 'chat']\n"
    "ASGI_APPLICATION = 'mysite.asgi.application'\nSTATIC_ROOT = 'static'\n",
    "mysite/asgi.py": "application = ProtocolTypeRouter({})\n",
}
QUART = {"app.py": "from quart import Quart\napp = Quart(__name__)\n"}
FASTAPI = {"main.py": "from fastapi import FastAPI\napp = FastAPI()\n"}


@pytest.mark.parametrize(
    ("files", "listed", "run"),
    [
        (QUART, "quart\nhypercorn\n", "python3 -m hypercorn --bind $HOST:$PORT app:app"),
        (
            CHANNELS,
            "django\nchannels\ndaphne\n",
            "python3 -m daphne -b $HOST -p $PORT mysite.asgi:application",
        ),
        (
            CHANNELS,
            "Django\nchannels[daphne]>=4\n",
            "python3 -m daphne -b $HOST -p $PORT mysite.asgi:application",
        ),
        (
            FASTAPI,
            "fastapi\ngranian\n",
            "python3 -m granian --interface asgi --host $HOST --port $PORT main:app",
        ),
        (
            {
                "main.py": "from quart import Quart\ndef create_app():\n    app = Quart(__name__)\n"
                "    return app\n"
            },
            "quart\nhypercorn\n",
            "python3 -m hypercorn --bind $HOST:$PORT 'main:create_app()'",
        ),
        (
            {
                "main.py": "from litestar import Litestar\ndef make():\n    app = Litestar([])\n"
                "    return app\n"
            },
            "litestar\ngranian\n",
            "python3 -m granian --interface asgi --host $HOST --port $PORT --factory main:make",
        ),
    ],
)
def test_the_asgi_server_the_app_lists_serves_it(
    tmp_path: Path, files: dict[str, str], listed: str, run: str
) -> None:
    """Quart with hypercorn, and Channels with daphne (in INSTALLED_APPS too, as its
    tutorial has it), ran under a uvicorn kiln added, beside websockets."""
    found = detect(_write(tmp_path, {**files, "requirements.txt": listed}))
    assert found.run == run
    pip = next(s.run for s in found.build if isinstance(s, BuildStep))
    assert pip == "python3 -m pip install -q --target deps -r requirements.txt"
    server = run.split()[2]
    assert f"{server} is in requirements.txt, and uvicorn is not: the app's own server runs it" in (
        found.why
    )


def test_uvicorn_listed_beside_another_asgi_server_is_kept(tmp_path: Path) -> None:
    found = detect(_write(tmp_path, {**QUART, "requirements.txt": "quart\nhypercorn\nuvicorn\n"}))
    assert found.run == "python3 -m uvicorn --host $HOST --port $PORT app:app"


BLACKSHEEP = """\
from datetime import datetime

from blacksheep import Application, get

app = Application()


@get("/")
def home():
    return f"Hello, World! {datetime.now().isoformat()}"
"""


@pytest.mark.parametrize(
    ("listed", "run"),
    [
        ("blacksheep\nuvicorn\n", "python3 -m uvicorn --host $HOST --port $PORT server:app"),
        ("blacksheep\nhypercorn\n", "python3 -m hypercorn --bind $HOST:$PORT server:app"),
    ],
)
def test_an_app_object_of_an_unknown_framework_runs_under_the_listed_server(
    tmp_path: Path, listed: str, run: str
) -> None:
    """BlackSheep's quick start ran as 'python3 server.py', which defines the app and
    exits: the boot gate failed, its hint naming Panel."""
    found = detect(_write(tmp_path, {"server.py": BLACKSHEEP, "requirements.txt": listed}))
    assert found.run == run and found.kind == "ASGI"
    server = run.split()[2]
    assert found.why[0] == (
        f"server.py assigns app = Application(…), and {server} is in requirements.txt: "
        "inferred to be an ASGI app for it"
    )
    assert _steps(found.build) == ["python3 -m pip install -q --target deps -r requirements.txt"]
    assert any("kiln does not know the framework of Application()" in n for n in found.notes)


def test_no_server_is_guessed_for_an_app_object_when_none_is_listed(tmp_path: Path) -> None:
    found = detect(_write(tmp_path, {"server.py": BLACKSHEEP, "requirements.txt": "blacksheep\n"}))
    assert found.run == "python3 server.py"


# what `ng new ng-app --ssr --defaults` (Angular CLI 20) writes, in part
NG_SCRIPTS = {
    "ng": "ng",
    "start": "ng serve",
    "build": "ng build",
    "watch": "ng build --watch --configuration development",
    "serve:ssr:ng-app": "node dist/ng-app/server/server.mjs",
}
NG_DEPS = {"@angular/core": "^20.3.0", "@angular/ssr": "^20.3.0", "express": "^5.1.0"}
NG_DEV = {"@angular/build": "^20.3.0", "@angular/cli": "^20.3.0", "typescript": "~5.9.2"}
NG_SERVER = """\
const app = express();
const angularApp = new AngularNodeAppEngine();
if (isMainModule(import.meta.url) || process.env['pm_id']) {
  const port = process.env['PORT'] || 4000;
  app.listen(port, (error) => {
    if (error) {
      throw error;
    }
  });
}
"""


def _angular_json(options: dict[str, object], builder: str = "@angular/build:application") -> str:
    project = {"projectType": "application", "architect": {"build": {"builder": builder}}}
    project["architect"]["build"]["options"] = options  # type: ignore[index]
    return json.dumps({"version": 1, "projects": {"ng-app": project}})


def test_an_angular_ssr_app_runs_its_built_server(tmp_path: Path) -> None:
    """`npm start` is `ng serve`: 'sh: 1: ng: not found' once pruned. Run as built, its
    server rendered nothing (Host 127.0.0.1 not allowed, X-Forwarded-For untrusted)."""
    options = {"outputMode": "server", "ssr": {"entry": "src/server.ts"}}
    files = {
        "package.json": {"scripts": NG_SCRIPTS, "dependencies": NG_DEPS, "devDependencies": NG_DEV},
        "package-lock.json": "{}",
        "angular.json": _angular_json(options),
        "src/server.ts": NG_SERVER,
        "public/favicon.ico": "",
    }
    found = detect(_write(tmp_path, files))
    assert (found.kind, found.run) == ("Angular", "node dist/ng-app/server/server.mjs")
    assert _steps(found.build) == ["npm ci --include=dev", "npm run build", "npm prune --omit=dev"]
    assert found.env["NG_ALLOWED_HOSTS"] == "localhost,127.0.0.1"
    trusted = found.env["NG_TRUST_PROXY_HEADERS"].split(",")
    assert {"x-forwarded-for", "x-forwarded-proto"} <= set(trusted)
    assert any("NG_ALLOWED_HOSTS" in n and "public names" in n for n in found.notes)
    # Express serves it before Angular's host check: answered whatever the check's Host
    assert found.health_path == "/favicon.ico"
    assert "/dist/" in found.exclude and "/.angular/" in found.exclude
    (warning,) = found.warnings
    assert warning.startswith("src/server.ts listens on every interface ('app.listen(port,")


@pytest.mark.parametrize(
    ("options", "scripts", "run"),
    [
        ({}, {"build": "ng build"}, "node dist/ng-app/server/server.mjs"),
        ({"outputPath": "out/web"}, {"build": "ng build"}, "node out/web/server/server.mjs"),
        (
            {"outputPath": {"base": "out", "server": "srv"}},
            {"build": "ng build"},
            "node out/srv/server.mjs",
        ),
    ],
)
def test_an_angular_ssr_server_is_where_angular_json_puts_it(
    tmp_path: Path, options: dict[str, object], scripts: dict[str, str], run: str
) -> None:
    files = {
        "package.json": {"scripts": scripts, "dependencies": NG_DEPS, "devDependencies": NG_DEV},
        "angular.json": _angular_json(options),
    }
    found = detect(_write(tmp_path, files))
    assert (found.kind, found.run) == ("Angular", run)


@pytest.mark.parametrize(
    ("options", "builder", "ssr", "site"),
    [
        ({}, "@angular/build:application", False, "dist/ng-app/browser"),
        (
            {"outputPath": {"base": "www", "browser": ""}},
            "@angular/build:application",
            False,
            "www",
        ),
        ({"outputMode": "static"}, "@angular/build:application", True, "dist/ng-app/browser"),
        ({"outputPath": "dist/web"}, "@angular-devkit/build-angular:browser", False, "dist/web"),
    ],
)
def test_an_angular_app_without_a_server_is_its_browser_build_served(
    tmp_path: Path, options: dict[str, object], builder: str, ssr: bool, site: str
) -> None:
    """Without @angular/ssr (or built to static files), `ng build` writes a single-page
    app: served as the other single-page builds are, not `ng serve`."""
    deps = {**NG_DEPS} if ssr else {"@angular/core": "^20"}
    package = {"scripts": NG_SCRIPTS, "dependencies": deps, "devDependencies": NG_DEV}
    found = detect(
        _write(tmp_path, {"package.json": package, "angular.json": _angular_json(options, builder)})
    )
    assert found.kind == "Angular static site", found
    assert found.why[0].startswith("package.json uses @angular/core and no server: an Angular")
    assert found.run == f"python3 -m http.server --bind $HOST --directory {site} $PORT"
    assert "npm run build" in _steps(found.build)
    assert any("single-page-app fallback" in n for n in found.notes)


# what AdonisJS 6's api-starter-kit has, in part
ADONIS_PACKAGE = {
    "type": "module",
    "scripts": {
        "start": "node bin/server.js",
        "build": "node ace build",
        "dev": "node ace serve --hmr",
    },
    "imports": {"#controllers/*": "./app/controllers/*.js", "#start/*": "./start/*.js"},
    "dependencies": {"@adonisjs/core": "^6.18.0", "@adonisjs/lucid": "^21", "luxon": "^3"},
    "devDependencies": {"@adonisjs/assembler": "^7.8.2", "typescript": "~5.8"},
}
ADONIS_ENV = """\
import { Env } from '@adonisjs/core/env'

export default await Env.create(new URL('../', import.meta.url), {
  NODE_ENV: Env.schema.enum(['development', 'production', 'test'] as const),
  PORT: Env.schema.number(),
  APP_KEY: Env.schema.string(),
  HOST: Env.schema.string({ format: 'host' }),
  LOG_LEVEL: Env.schema.string(),
  /*
  | DB_URL: Env.schema.string(),
  */
  DB_HOST: Env.schema.string({ format: 'host' }),
  DB_PASSWORD: Env.schema.string.optional(),
  // SESSION_DRIVER: Env.schema.enum(['cookie', 'memory'] as const),
})
"""


def test_an_adonisjs_app_runs_from_its_build(tmp_path: Path) -> None:
    """`npm start` from the app's root: 'Cannot find module .../bin/server.js' (the build
    writes build/bin/server.js); then start/env.ts refused the missing APP_KEY."""
    files = {
        "package.json": ADONIS_PACKAGE,
        "package-lock.json": "{}",
        "ace.js": "await import('./bin/console.js')\n",
        "bin/server.ts": "new Ignitor(APP_ROOT).httpServer().start()\n",
        "start/env.ts": ADONIS_ENV,
        "start/routes.ts": "router.get('/health', ({ response }) => response.ok('ok'))\n",
        "tsconfig.json": '{"compilerOptions": {"rootDir": "./", "outDir": "./build"}}',
    }
    found = detect(_write(tmp_path, files))
    assert (found.kind, found.run) == ("AdonisJS", "cd build && node bin/server.js")
    assert _steps(found.build) == ["npm ci --include=dev", "npm run build", "npm prune --omit=dev"]
    assert found.env == {"NODE_ENV": "production", "LOG_LEVEL": "info"}
    assert "/build/" in found.exclude and found.health_path == "/health"
    (warning,) = found.warnings
    # HOST, PORT, NODE_ENV and LOG_LEVEL are set; commented-out and optional ones are not asked
    assert warning.startswith("start/env.ts requires APP_KEY, DB_HOST, which kiln does not set")
    assert 'give it through [secrets] (APP_KEY = "env:APP_KEY"' in warning


def test_an_adonisjs_build_directory_is_tsconfigs_out_dir(tmp_path: Path) -> None:
    files = {
        "package.json": ADONIS_PACKAGE,
        "ace.js": "",
        "bin/server.ts": "",
        "start/env.ts": "export default await Env.create(root, { PORT: Env.schema.number() })",
        "tsconfig.json": (
            '{\n  // node ace build writes there\n  "compilerOptions": {"outDir": "out"}}'
        ),
    }
    found = detect(_write(tmp_path, files))
    assert found.run == "cd out && node bin/server.js"
    assert "LOG_LEVEL" not in found.env and not found.warnings


def test_a_pnpm_workspace_and_a_script_running_pnpm_are_warnings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new user's pnpm workspace: its root declares no dependencies (init installed
    nothing, with no word), and its start script 'pnpm --filter api start' failed at
    boot with 'sh: 1: pnpm: not found' (the build runs pnpm through npx)."""
    monkeypatch.setattr("shutil.which", lambda name, path=None: None)
    root = tmp_path / "mono"
    (root / "apps" / "api").mkdir(parents=True)
    package = {"name": "mono", "private": True, "scripts": {"start": "pnpm --filter api start"}}
    (root / "package.json").write_text(json.dumps(package))
    (root / "pnpm-workspace.yaml").write_text("packages:\n  - 'apps/*'\n")
    (root / "pnpm-lock.yaml").write_text("lockfileVersion: '9.0'\n")
    warnings = detect(root).warnings
    assert any(
        w.startswith("pnpm-workspace.yaml here: kiln init builds npm and yarn") for w in warnings
    )
    assert any(
        w.startswith("scripts.start runs pnpm ('pnpm --filter api start')") for w in warnings
    )
    member = root / "apps" / "api"
    (member / "package.json").write_text(
        json.dumps({"name": "api", "scripts": {"start": "node s.js"}})
    )
    said = [w for w in detect(member).warnings if w.startswith("pnpm-workspace.yaml in ")]
    assert said and str(root.resolve()) in said[0]


@pytest.mark.parametrize(
    ("start", "warned"),
    [
        ("serve public", True),
        ("serve -s build", True),
        ("serve -l tcp://$HOST:$PORT public", False),
        ("http-server dist", True),
        ("http-server dist -a $HOST -p $PORT", False),
        ("node server.js", False),
    ],
)
def test_a_file_server_with_no_host_is_a_warning(tmp_path: Path, start: str, warned: bool) -> None:
    """`serve public` reads $PORT but not $HOST: a new user's instances answered on
    *:PORT, around the balancer."""
    package = {"scripts": {"start": start}, "dependencies": {"serve": "14", "http-server": "14"}}
    (tmp_path / "package.json").write_text(json.dumps(package))
    (tmp_path / "server.js").write_text("")
    said = [w for w in detect(tmp_path).warnings if "with no host: it listens on every" in w]
    assert bool(said) is warned, said


@pytest.mark.parametrize(
    ("dependency", "kind"),
    [("@react-router/serve", "React Router"), ("@remix-run/serve", "Remix"), ("express", "Node")],
)
def test_react_router_and_remix_are_named(tmp_path: Path, dependency: str, kind: str) -> None:
    """Run as any Node app (`npm start`), but reported as 'detected: Node' while
    docs/init.md gives them a row of their own."""
    package = {
        "scripts": {"build": "react-router build", "start": "react-router-serve ./build/x.js"},
        "dependencies": {dependency: "7"},
    }
    (tmp_path / "package.json").write_text(json.dumps(package))
    found = detect(tmp_path)
    assert found.kind == kind and found.run == "npm start"
