"""kiln init recognises common apps and writes a kiln.toml that deploys them as written."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pathspec
import pytest

from kiln.config import BuildStep, parse_config
from kiln.detect import BERRY_ENV, LOCK_SCRIPT, PYPROJECT_DEPS, PYPROJECT_LIST, detect
from kiln.pyversion import python_warning
from kiln.runline import exec_form
from kiln.scaffold import render_config
from kilntest import Kiln

BERRY = f"{BERRY_ENV} npx --yes --package @yarnpkg/cli-dist@4 yarn"
BERRY_453 = f"{BERRY_ENV} npx --yes --package @yarnpkg/cli-dist@4.5.3 yarn"
RELEASE = f"{BERRY_ENV} node .yarn/releases/yarn-4.1.0.cjs"

DJANGO_MANAGE = """\
import os, sys
def main():
    os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'mysite.settings')
    from django.core.management import execute_from_command_line
    execute_from_command_line(sys.argv)
"""


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def _steps(build: list[str | BuildStep]) -> list[object]:
    """A cached step as (command, its one output); plain steps as they are."""
    return [s if isinstance(s, str) else (s.run, *s.outputs) for s in build]


def _config(root: Path):  # type: ignore[no-untyped-def]
    return parse_config(render_config(root, name="app"))


def test_django_runs_gunicorn_on_its_wsgi_collects_static_and_migrates(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "manage.py": DJANGO_MANAGE,
            "mysite/settings.py": "STATIC_ROOT = BASE_DIR / 'staticfiles'\nENGINE = 'sqlite3'\n",
            "mysite/wsgi.py": "application = get_wsgi_application()\n",
            "mysite/urls.py": "urlpatterns = [path('admin/', admin.site.urls)]\n",
            "requirements.txt": "Django>=5\n",
        },
    )
    found = detect(tmp_path)
    assert found.kind == "Django" and found.release == "python3 manage.py migrate --noinput"
    config = _config(tmp_path)
    assert config.app.run.startswith("python3 -m gunicorn --bind $HOST:$PORT")
    assert config.app.run.endswith("mysite.wsgi:application")
    assert _steps(config.app.build) == [
        ("python3 -m pip install -q --target deps -r requirements.txt gunicorn", "deps"),
        ("python3 manage.py collectstatic --noinput", "staticfiles"),
    ]
    assert config.env["PYTHONPATH"] == "deps" and config.health.path is None  # TCP
    assert config.app.release == "python3 manage.py migrate --noinput"


def test_a_django_sqlite_database_in_the_app_directory_is_a_warning(tmp_path: Path) -> None:
    """startproject's and wagtail start's BASE_DIR / 'db.sqlite3': init only noted it, the
    deploy went green, and every page that read the database answered 500 (no such table):
    the release migrated a copy that was thrown away. Flask's same case was a warning."""
    settings = (
        "DATABASES = {'default': {'ENGINE': 'django.db.backends.sqlite3',\n"
        "    'NAME': BASE_DIR / 'db.sqlite3'}}\n"
    )
    files = {"mysite/settings.py": settings, "mysite/wsgi.py": ""}
    found = detect(_django_project(tmp_path / "django", "mysite.settings", files))
    (warning,) = [w for w in found.warnings if "SQLite" in w]
    assert "the release's 'manage.py migrate' migrates a copy that is thrown away" in warning
    assert "each instance has its own empty database" in warning
    assert "point DATABASES at a shared database through a [secrets] entry" in warning
    assert not any("SQLite" in n for n in found.notes)
    # Flask's says the same, in the same words
    flask = _write(
        tmp_path / "flask",
        {"app.py": "from flask import Flask\napp = Flask(__name__)\nDB = 'sqlite:///app.db'\n"},
    )
    (same,) = [w for w in detect(flask).warnings if "SQLite" in w]
    assert same.startswith("the database is a SQLite file inside the app directory: ")
    assert warning.startswith("the database is a SQLite file inside the app directory: ")
    assert "each instance has its own empty database" in same


@pytest.mark.parametrize(
    ("files", "kind", "target", "server"),
    [
        (
            {"app.py": "from flask import Flask\napp = Flask(__name__)\n"},
            "Flask",
            "app:app",
            "gunicorn",
        ),
        (
            {"web.py": "import flask\ndef create_app():\n    pass\n"},
            "Flask",
            "'web:create_app()'",
            "gunicorn",
        ),
        (
            {"main.py": "from fastapi import FastAPI\napi: FastAPI = FastAPI()\n"},
            "FastAPI",
            "main:api",
            "uvicorn",
        ),
        (
            {"asgi.py": "from starlette.applications import Starlette\napp = Starlette()\n"},
            "Starlette",
            "asgi:app",
            "uvicorn",
        ),
        (
            {"wsgi.py": "def application(environ, start_response):\n    pass\n"},
            "WSGI",
            "wsgi:application",
            "gunicorn",
        ),
    ],
)
def test_python_frameworks_get_a_production_server(
    tmp_path: Path, files: dict[str, str], kind: str, target: str, server: str
) -> None:
    found = detect(_write(tmp_path, files))
    assert found.kind == kind
    config = _config(tmp_path)
    assert config.app.run.startswith(f"python3 -m {server} ") and config.app.run.endswith(
        f" {target}"
    )
    assert server in str(config.app.build[0])  # installed into deps/ by the build
    assert "$HOST" in config.app.run and "$PORT" in config.app.run


@pytest.mark.parametrize(
    ("files", "kind", "target", "path"),
    [
        (  # FastAPI's "Bigger Applications" layout: relative imports inside a package
            {
                "app/__init__.py": "",
                "app/main.py": "from fastapi import FastAPI\nfrom .routers import items\n"
                "app = FastAPI()\n",
                "app/routers/__init__.py": "",
                "tests/__init__.py": "",
                "tests/test_main.py": "from fastapi import FastAPI\napp = FastAPI()\n",
            },
            "FastAPI",
            "app.main:app",
            "deps",
        ),
        (  # Flask's tutorial: the factory in the package's __init__.py
            {"flaskr/__init__.py": "from flask import Flask\n\ndef create_app(test_config=None):\n"
             "    return Flask(__name__)\n", "flaskr/db.py": "import sqlite3\n"},
            "Flask",
            "'flaskr:create_app()'",
            "deps",
        ),
        (  # a src layout: the package is not installed, so src/ goes on the path
            {"src/shop/__init__.py": "", "src/shop/app.py": "from flask import Flask\n"
             "app = Flask(__name__)\n", "pyproject.toml": "[project]\nname = 'shop'\n"
             "version = '1'\ndependencies = ['flask']\n"},
            "Flask",
            "shop.app:app",
            "src:deps",
        ),
        (  # a module at the top still comes first
            {"main.py": "from fastapi import FastAPI\napi = FastAPI()\n",
             "service/__init__.py": "from fastapi import FastAPI\napp = FastAPI()\n"},
            "FastAPI",
            "main:api",
            "deps",
        ),
    ],
)  # fmt: skip
def test_an_app_in_a_package_is_found_and_imported_as_a_module(
    tmp_path: Path, files: dict[str, str], kind: str, target: str, path: str
) -> None:
    """Before, only modules at the top were read: these were served as a static
    directory."""
    found = detect(_write(tmp_path, files))
    assert (found.kind, found.env["PYTHONPATH"]) == (kind, path)
    assert found.run.endswith(f" {target}") and "$HOST" in found.run
    config = _config(tmp_path)
    assert config.app.run == found.run and config.env["PYTHONPATH"] == path


def test_packages_that_are_not_the_app_are_not_read(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "tests/__init__.py": "",
            "tests/app.py": "from flask import Flask\napp = Flask(__name__)\n",
            "docs/__init__.py": "",
            "docs/main.py": "from fastapi import FastAPI\napp = FastAPI()\n",
            "not-a-name/__init__.py": "",
            "not-a-name/main.py": "from fastapi import FastAPI\napp = FastAPI()\n",
            "index.html": "<p>hi</p>\n",
        },
    )
    assert detect(tmp_path).kind == "static site"


def test_a_health_route_in_the_source_is_used_else_tcp(tmp_path: Path) -> None:
    app = "from flask import Flask\napp = Flask(__name__)\n"
    _write(tmp_path, {"app.py": app, "requirements.txt": "flask\ngunicorn\n"})
    assert _config(tmp_path).health.path is None
    (tmp_path / "app.py").write_text(app + '@app.route("/healthz")\ndef h(): return "ok"\n')
    config = _config(tmp_path)
    assert config.health.path == "/healthz"
    assert _steps(config.app.build) == [
        ("python3 -m pip install -q --target deps -r requirements.txt", "deps")
    ]
    assert config.app.build[0].inputs == ["requirements.txt"]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("files", "build", "run"),
    [
        (
            {
                "package.json": {
                    "scripts": {"start": "node server.js"},
                    "dependencies": {"express": "^4"},
                },
                "server.js": "",
                "package-lock.json": {},
            },
            [("npm ci --omit=dev", "node_modules")],
            "node server.js",
        ),
        (
            {"package.json": {"main": "index.js", "dependencies": {"ws": "^8"}}, "index.js": ""},
            [("npm install --no-audit --no-fund --omit=dev", "node_modules")],
            "node index.js",
        ),
        (  # npm makes no node_modules/ without dependencies: nothing to install
            {
                "package.json": {"main": "index.js", "devDependencies": {"jest": "^29"}},
                "index.js": "",
            },
            [],
            "node index.js",
        ),
        (
            {
                "package.json": {"scripts": {"start": "node dist/s.js", "build": "tsc"}},
                "package-lock.json": {},
            },
            ["npm run build"],
            "node dist/s.js",  # what the build makes: run with node, for its signals
        ),
        (  # [env] NODE_ENV=production reaches the build: npm would skip typescript
            {
                "package.json": {
                    "scripts": {"start": "node dist/s.js", "build": "tsc"},
                    "dependencies": {"express": "^4"},
                    "devDependencies": {"typescript": "^5"},
                },
                "package-lock.json": {},
            },
            [("npm ci --include=dev", "node_modules"), "npm run build", "npm prune --omit=dev"],
            "node dist/s.js",  # what the build makes: run with node, for its signals
        ),
        (  # yarn's lockfile is honoured by yarn (npm would resolve afresh)
            {
                "package.json": {"main": "index.js", "dependencies": {"ms": "^2"}},
                "index.js": "",
                "yarn.lock": "# yarn lockfile v1\n",
            },
            [
                (
                    "npx --yes yarn@1 install --frozen-lockfile --non-interactive --production",
                    "node_modules",
                )
            ],
            "node index.js",
        ),
        (  # pnpm at the version packageManager names, dev dependencies for the build
            {
                "package.json": {
                    "packageManager": "pnpm@9.15.0+sha512.abc",
                    "scripts": {"start": "node dist/s.js", "build": "tsc"},
                    "dependencies": {"express": "^4"},
                    "devDependencies": {"typescript": "^5"},
                },
                "pnpm-lock.yaml": "lockfileVersion: '9.0'\n",
            },
            [
                ("npx --yes pnpm@9.15.0 install --frozen-lockfile --prod=false", "node_modules"),
                "npx --yes pnpm@9.15.0 run build",
                "npx --yes pnpm@9.15.0 prune --prod",
            ],
            "node dist/s.js",  # what the build makes: run with node, for its signals
        ),
        (  # pnpm 8's lockfile without packageManager: pnpm 8
            {
                "package.json": {"main": "index.js", "dependencies": {"ms": "^2"}},
                "index.js": "",
                "pnpm-lock.yaml": "lockfileVersion: '6.0'\n",
            },
            [("npx --yes pnpm@8 install --frozen-lockfile --prod", "node_modules")],
            "node index.js",
        ),
        (  # Yarn 4's lockfile: Yarn 4 into node_modules/, then the dev packages focused out
            {
                "package.json": {"main": "index.js", "dependencies": {"ms": "^2"}},
                "index.js": "",
                "yarn.lock": "__metadata:\n  version: 8\n",
            },
            [
                (
                    f"{BERRY} install --immutable && {BERRY} workspaces focus --all --production",
                    "node_modules",
                )
            ],
            "node index.js",
        ),
        (  # the Yarn packageManager names, dev dependencies for the build, pruned after
            {
                "package.json": {
                    "packageManager": "yarn@4.5.3+sha512.abc",
                    "scripts": {"start": "node dist/s.js", "build": "tsc"},
                    "dependencies": {"express": "^4"},
                    "devDependencies": {"typescript": "^5"},
                },
                "yarn.lock": "__metadata:\n  version: 8\n",
            },
            [
                (f"{BERRY_453} install --immutable", "node_modules"),
                f"{BERRY_453} run build",
                f"{BERRY_453} workspaces focus --all --production",
            ],
            "node dist/s.js",
        ),
        (  # Yarn 3's lockfile: Yarn 3, which cannot leave the dev packages out
            {
                "package.json": {"main": "index.js", "dependencies": {"ms": "^2"}},
                "index.js": "",
                "yarn.lock": "# yarn lockfile\n\n__metadata:\n  version: 6\n  cacheKey: 8\n",
            },
            [
                (
                    f"{BERRY_ENV} npx --yes --package @yarnpkg/cli-dist@3 yarn install --immutable",
                    "node_modules",
                )
            ],
            "node index.js",
        ),
        (  # the release the project commits, named in .yarnrc.yml
            {
                "package.json": {"main": "index.js", "dependencies": {"ms": "^2"}},
                "index.js": "",
                "yarn.lock": "__metadata:\n  version: 8\n",
                ".yarnrc.yml": "nodeLinker: pnp\nyarnPath: .yarn/releases/yarn-4.1.0.cjs\n",
                ".yarn/releases/yarn-4.1.0.cjs": "",
            },
            [
                (
                    f"{RELEASE} install --immutable && "
                    f"{RELEASE} workspaces focus --all --production",
                    "node_modules",
                )
            ],
            "node index.js",
        ),
    ],
)
def test_node_installs_with_or_without_a_lockfile_and_keeps_node_modules(
    tmp_path: Path, files: dict[str, object], build: list[object], run: str
) -> None:
    _write(tmp_path, {k: v if isinstance(v, str) else json.dumps(v) for k, v in files.items()})
    config = _config(tmp_path)
    assert (_steps(config.app.build), config.app.run) == (build, run)
    assert config.env["NODE_ENV"] == "production"
    assert "node_modules/" in config.app.exclude  # the source's: the build's are kept


def test_static_site_is_served_from_its_directory(tmp_path: Path) -> None:
    _write(tmp_path, {"public/index.html": "<h1>hi</h1>"})
    config = _config(tmp_path)
    assert config.app.run == "python3 -m http.server --bind $HOST --directory public $PORT"
    assert config.health.path == "/" and config.app.build == []


def test_init_prints_what_it_detected_and_why(kiln: Kiln) -> None:
    _write(kiln.cwd, {"main.py": "from fastapi import FastAPI\napp = FastAPI()\n"})
    out = kiln("init").stdout
    assert "detected: FastAPI" in out and "main.py defines app = FastAPI" in out
    assert "no requirements.txt" in out
    assert "ok (app" in kiln("config", "check").stdout


def test_an_asgi_py_with_an_app_object_runs_on_uvicorn(tmp_path: Path) -> None:
    _write(tmp_path, {"asgi.py": "from datasette.app import Datasette\napp = Datasette().app()\n"})
    config = _config(tmp_path)
    assert config.app.run.startswith("python3 -m uvicorn ") and config.app.run.endswith("asgi:app")


def test_a_start_script_naming_a_file_runs_node_directly(tmp_path: Path) -> None:
    _write(tmp_path, {"package.json": json.dumps({"scripts": {"start": "node ./bin/www"}})})
    _write(tmp_path, {"bin/www": "#!/usr/bin/env node\n"})
    assert _config(tmp_path).app.run == "node ./bin/www"


@pytest.mark.parametrize(
    ("files", "why"),
    [
        (
            {
                "package.json": json.dumps(
                    {"main": "index.js", "dependencies": {"express": "4", "socket.io": "4"}}
                ),
                "index.js": "",
            },
            "socket.io in package.json",
        ),
        (
            {"package.json": json.dumps({"dependencies": {"sockjs": "0.3"}}), "server.js": ""},
            "sockjs in package.json",
        ),
        (
            {
                "app.py": "from flask import Flask\napp = Flask(__name__)\n",
                "requirements.txt": "Flask-SocketIO==5.3\ngunicorn\n",
            },
            "flask-socketio in requirements.txt",
        ),
        (
            {"main.py": "x = 1\n", "requirements.txt": "python_socketio>=5\n"},
            "python-socketio in requirements.txt",
        ),
    ],
)
def test_session_servers_get_sticky_sessions_and_say_why(
    tmp_path: Path, files: dict[str, str], why: str
) -> None:
    found = detect(_write(tmp_path, files))
    assert found.sticky is not None and found.sticky.startswith(why)
    assert found.sticky in found.why  # printed by kiln init with the other reasons
    config = _config(tmp_path)
    assert config.fleet.sticky == "cookie"
    if "gunicorn" in config.app.run:  # its workers share no sessions: one, with threads
        assert "--workers 1 --threads 100 " in config.app.run


def test_apps_without_a_session_server_are_not_sticky(tmp_path: Path) -> None:
    package = {"main": "index.js", "dependencies": {"socket.io-client": "4"}}
    _write(tmp_path, {"package.json": json.dumps(package), "index.js": ""})
    assert detect(tmp_path).sticky is None  # a client of one is not a server
    text = render_config(tmp_path, name="app")
    assert '# sticky = "cookie"' in text and parse_config(text).fleet.sticky is None


SESSION_APP = (
    "const session = require('express-session');\n"
    "app.use(session({ secret: 'keyboard cat', resave: false, saveUninitialized: true%s }));\n"
)


@pytest.mark.parametrize(
    ("deps", "store", "sticky"),
    [
        ({"express": "4", "express-session": "1"}, "", True),  # its MemoryStore
        ({"express": "4", "express-session": "1", "memorystore": "1"}, "", True),
        ({"express": "4", "express-session": "1", "connect-flash": "0.1"}, "", True),
        ({"express": "4", "express-session": "1", "connect-redis": "7"}, "", False),
        ({"express": "4", "express-session": "1", "connect-pg-simple": "9"}, "", False),
        ({"express": "4", "express-session": "1"}, ", store: new KnexStore()", False),
        ({"express": "4"}, "", False),
    ],
)
def test_express_sessions_kept_in_memory_are_sticky(
    tmp_path: Path, deps: dict[str, str], store: str, sticky: bool
) -> None:
    """express-session with no store: on two instances each request met the other's
    empty MemoryStore, and nobody stayed logged in (a new user's Express + EJS app)."""
    package = {"scripts": {"start": "node app.js"}, "dependencies": deps}
    _write(tmp_path, {"package.json": json.dumps(package), "app.js": SESSION_APP % store})
    found = detect(tmp_path)
    assert (found.sticky is not None) is sticky, found.sticky
    if sticky:
        assert found.sticky is not None and found.sticky.startswith("express-session")
        assert _config(tmp_path).fleet.sticky == "cookie"


# config/session.js as `sails new` writes it: the adapter commented out
SAILS_SESSION = """module.exports.session = {
  secret: 'abc',
  // adapter: '@sailshq/connect-redis',
  // url: 'redis://user:password@localhost:6379/databasenumber',
};
"""


# config/env/production.js, abridged from `sails new`: "adapter:" in a block comment,
# and a datastore's adapter, which is not the session's
SAILS_PRODUCTION = """module.exports = {
  datastores: {
    /**
    * 1. Choose an adapter:
    */
    default: {
      adapter: 'sails-mysql',
    },
  },
  session: {
    cookie: { secure: true },
    // adapter: '@sailshq/connect-redis',
  },
};
"""


@pytest.mark.parametrize(
    ("files", "sticky"),
    [
        ({"config/session.js": SAILS_SESSION}, True),
        ({}, True),
        ({"config/session.js": SAILS_SESSION.replace("// adapter", "adapter")}, False),
        ({"config/env/production.js": "session: { adapter: '@sailshq/connect-redis' },"}, False),
        ({"config/env/production.js": SAILS_PRODUCTION}, True),  # as `sails new` writes it
    ],
)
def test_sails_sessions_kept_in_memory_are_sticky(
    tmp_path: Path, files: dict[str, str], sticky: bool
) -> None:
    """A new user's Sails app: a counter in req.session read 1 on every request
    through two instances (Sails bundles express-session, in memory by default)."""
    package = {"main": "app.js", "dependencies": {"sails": "^1.5"}}
    _write(tmp_path, {"package.json": json.dumps(package), "app.js": "sails.lift()\n", **files})
    found = detect(tmp_path)
    assert (found.sticky is not None) is sticky, found.sticky
    if sticky:
        assert found.sticky is not None and found.sticky.startswith("Sails keeps sessions")
        assert _config(tmp_path).fleet.sticky == "cookie"


PRISMA_SQLITE = 'datasource db {\n  provider = "sqlite"\n  url = "file:./dev.db"\n}\n'


@pytest.mark.parametrize(
    ("deps", "files", "named"),
    [
        (
            {"better-sqlite3": "11"},
            {"db.js": "const db = new Database('data/app.db');\n"},
            "db.js ('data/app.db')",
        ),
        (
            {"node-sqlite3-wasm": "1"},
            {"src/db.mjs": "new Database(path.join(__dirname, 'notes.sqlite3'))\n"},
            "src/db.mjs ('notes.sqlite3')",
        ),
        ({"@libsql/client": "0.14"}, {"db.ts": "createClient({ url: 'file:local.db' })"}, "db.ts"),
        (
            {"@prisma/client": "6"},
            {"prisma/schema.prisma": PRISMA_SQLITE},
            "prisma/schema.prisma",
        ),
        ({"better-sqlite3": "11"}, {"db.js": "new Database('/var/lib/notes/app.db')\n"}, None),
        ({"better-sqlite3": "11"}, {"db.js": "new Database(process.env.DB_PATH)\n"}, None),
        ({"express": "4"}, {"db.js": "const name = 'app.db';\n"}, None),  # no driver
    ],
)
def test_a_node_apps_sqlite_file_inside_its_directory_is_a_warning(
    tmp_path: Path, deps: dict[str, str], files: dict[str, str], named: str | None
) -> None:
    """A new user's Express notes API on better-sqlite3's data/app.db: init said
    nothing, and each instance answered with the notes it alone had been given."""
    package = {"scripts": {"start": "node db.js"}, "dependencies": deps}
    _write(tmp_path, {"package.json": json.dumps(package), **files})
    warnings = [w for w in detect(tmp_path).warnings if "SQLite" in w]
    if named is None:
        assert not warnings, warnings
    else:
        (warning,) = warnings
        assert warning.startswith("the database is a SQLite file inside the app directory")
        assert named in warning, warning


def test_an_express_health_route_is_found_in_the_apps_own_sources(tmp_path: Path) -> None:
    package = {"scripts": {"start": "node src/server.mjs"}}
    _write(tmp_path, {"package.json": json.dumps(package), "src/server.mjs": "app.listen()\n"})
    _write(tmp_path, {"node_modules/lib/index.js": "router.get('/health', f)\n"})
    assert _config(tmp_path).health.path is None  # a package's route is not the app's
    _write(tmp_path, {"src/routes.ts": "app.get('/healthz', (req, res) => res.send('ok'))\n"})
    assert _config(tmp_path).health.path == "/healthz"


@pytest.mark.parametrize(
    ("requirements", "added"),
    [
        ("fastapi\n", "uvicorn websockets"),  # plain uvicorn: no WebSocket at all
        ("fastapi\nwsproto\n", "uvicorn"),
        ("fastapi\nuvicorn\n", None),  # the app's own choice of server, left alone
        # ...unless it has WebSocket routes: `uv add uvicorn` lists it plainly, and every
        # WebSocket got 404
        ("fastapi\nuvicorn\n#ws", "websockets"),
        ("fastapi\nuvicorn[standard]\n#ws", None),
    ],
)
def test_uvicorn_added_by_the_build_brings_a_websocket_library(
    tmp_path: Path, requirements: str, added: str | None
) -> None:
    main = "from fastapi import FastAPI\napp = FastAPI()\n"
    if requirements.endswith("#ws"):
        main += "@app.websocket('/ws')\nasync def ws(socket): ...\n"
    _write(tmp_path, {"main.py": main})
    (tmp_path / "requirements.txt").write_text(requirements.removesuffix("#ws"))
    (install,) = _steps(_config(tmp_path).app.build)
    pip = "python3 -m pip install -q --target deps -r requirements.txt"
    assert install == (f"{pip} {added}" if added else pip, "deps")


def test_pyproject_dependencies_are_installed_without_a_requirements_txt(tmp_path: Path) -> None:
    _write(tmp_path, {"main.py": "from fastapi import FastAPI\napp = FastAPI()\n"})
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\ndependencies = ["FastAPI>=0.110", "uvicorn[standard]"]\n'
    )
    (step,) = _config(tmp_path).app.build
    assert isinstance(step, BuildStep) and step.inputs == ["pyproject.toml"]
    assert step.run.endswith(
        "&& python3 -m pip install -q --target deps -r .kiln-requirements.txt"
        " && rm .kiln-requirements.txt"
    )
    (tmp_path / "pyproject.toml").write_text('[tool.poetry.dependencies]\nfastapi = "^0.110"\n')
    found = detect(tmp_path)  # Poetry 1's own table: read at bake time too (tests/test_pylocks.py)
    assert any("Poetry's [tool.poetry.dependencies]" in why for why in found.why)
    (step,) = _config(tmp_path).app.build
    assert isinstance(step, BuildStep) and step.inputs == ["pyproject.toml", LOCK_SCRIPT]
    assert step.run.endswith(
        " pyproject.toml > .kiln-requirements.txt && python3 -m pip install -q --target deps"
        " -r .kiln-requirements.txt uvicorn websockets && rm .kiln-requirements.txt"
    )


def test_the_pyproject_step_installs_what_the_file_lists(tmp_path: Path) -> None:
    """The generated shell line, run by /bin/sh: pip gets the [project] dependencies."""
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\ndependencies = ["a>=1", "b[c]; python_version >= \'3\'"]\n'
    )
    line = PYPROJECT_DEPS + f"cat {PYPROJECT_LIST}"
    listed = subprocess.run(["/bin/sh", "-c", line], cwd=tmp_path, capture_output=True, text=True)
    assert listed.stdout.splitlines() == ["a>=1", "b[c]; python_version >= '3'"]


def test_a_pyproject_that_does_not_parse_fails_the_step(tmp_path: Path) -> None:
    """Through a pipe, pip got nothing and the step succeeded: the bake went on
    without the app's dependencies and every instance died at boot."""
    (tmp_path / "pyproject.toml").write_text('[project\ndependencies = ["a"]\n')
    line = PYPROJECT_DEPS + f"cat {PYPROJECT_LIST}"
    done = subprocess.run(["/bin/sh", "-c", line], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode != 0 and "TOMLDecodeError" in done.stderr


def test_nothing_recognised_fails_at_the_first_deploy_instead_of_serving_the_source(
    tmp_path: Path,
) -> None:
    """The placeholder was `python3 -m http.server`: it passed every gate and served
    the app's source (a Sanic app in a package: `GET /myapp/server.py` gave its code)."""
    _write(tmp_path, {"myapp/server.py": "print('hi')\n", "requirements.txt": "weird-fw\n"})
    found = detect(tmp_path)
    assert found.kind == "unknown"
    assert "http.server" not in found.run
    assert any("set [app] run" in w for w in found.warnings)
    run = exec_form(found.run)  # as an instance runs it
    done = subprocess.run(["/bin/sh", "-c", run], capture_output=True, text=True)
    assert done.returncode == 64 and "set [app] run in kiln.toml" in done.stderr
    assert _config(tmp_path).app.run == found.run


def test_local_dotenv_files_stay_out_of_every_kind_of_image(tmp_path: Path) -> None:
    """create-next-app's .gitignore lists .env*; kiln left out only .env, so a
    developer's .env.local (which `next start` loads) was baked and served secrets."""
    kinds = {
        "node": {"package.json": '{"scripts": {"start": "node server.js"}}', "server.js": ""},
        "python": {"app.py": "from flask import Flask\napp = Flask(__name__)\n"},
        "static": {"index.html": "<p>hi</p>"},
        "unknown": {"notes.txt": "?"},
    }
    for kind, files in kinds.items():
        root = _write(tmp_path / kind, {**files, ".env.local": "API_SECRET=sk_live\n"})
        (root / ".env.production").write_text("NEXT_PUBLIC_A=1\n")  # a committed default
        excluded = pathspec.GitIgnoreSpec.from_lines(_config(root).app.exclude)
        assert excluded.match_file(".env.local") and excluded.match_file(".env"), kind
        assert excluded.match_file(".env.production.local"), kind
        assert not excluded.match_file(".env.production"), kind
        assert any(".env.local stays out of the image" in n for n in detect(root).notes), kind


def test_dotenv_note_is_grammatical_for_one_file_and_several(tmp_path: Path) -> None:
    """It read ".env stay out of the image" for a single file."""
    one = _write(tmp_path / "one", {"index.html": "<p>hi</p>", ".env": "A=1\n"})
    assert any(n.startswith(".env stays out of the image") for n in detect(one).notes)
    files = {"index.html": "<p>hi</p>", ".env": "A=1\n", ".env.local": "B=2\n"}
    files[".env.production.local"] = "C=3\n"
    several = _write(tmp_path / "several", files)
    said = ".env, .env.local and .env.production.local stay out of the image"
    assert any(n.startswith(said) for n in detect(several).notes)


@pytest.mark.parametrize(
    ("files", "kind", "run_end", "pythonpath"),
    [
        (  # Sanic in a package: was "unknown"
            {
                "myapp/__init__.py": "",
                "myapp/server.py": "from sanic import Sanic\napp = Sanic('x')\n",
            },
            "Sanic",
            "-m sanic myapp.server:app --host $HOST --port $PORT --no-motd",
            "deps",
        ),
        (  # aiohttp factory in a package: was taken for Flask's create_app
            {
                "app/__init__.py": "from aiohttp import web\n\ndef create_app():\n"
                "    app = web.Application()\n    return app\n"
            },
            "aiohttp",
            "aiohttp.GunicornWebWorker 'app:create_app()'",
            "deps",
        ),
        (  # a top-level aiohttp factory: its run line was unquoted, a /bin/sh syntax error
            {
                "server.py": "from aiohttp import web\n\ndef make():\n"
                "    a = web.Application()\n    return a\n"
            },
            "aiohttp",
            "aiohttp.GunicornWebWorker 'server:make()'",
            "deps",
        ),
        (  # Quart's factory: was taken for Flask's
            {
                "app.py": "from quart import Quart\n\ndef create_app():\n"
                "    app = Quart(__name__)\n    return app\n"
            },
            "Quart",
            "--factory app:create_app",
            "deps",
        ),
        (  # Quart's tutorial layout (src/blog/__init__.py)
            {"src/blog/__init__.py": "from quart import Quart\napp = Quart(__name__)\n"},
            "Quart",
            " blog:app",
            "src:deps",
        ),
        (  # Litestar in a package
            {
                "app/__init__.py": "",
                "app/main.py": "from litestar import Litestar\napp = Litestar([])\n",
            },
            "Litestar",
            " app.main:app",
            "deps",
        ),
        (  # Flasky: create_app(config_name) is called by flasky.py with its argument
            {
                "app/__init__.py": "from flask import Flask\n\ndef create_app(config_name):\n"
                "    app = Flask(__name__)\n    return app\n",
                "flasky.py": "import os\nfrom app import create_app\n"
                "app = create_app(os.getenv('FLASK_CONFIG') or 'default')\n",
            },
            "Flask",
            " flasky:app",
            "deps",
        ),
        (  # a FastAPI factory: was "Python script", run as python3 main.py (exits at once)
            {
                "main.py": "from fastapi import FastAPI\n\ndef create_app():\n"
                "    app = FastAPI()\n    return app\n"
            },
            "FastAPI",
            "--factory main:create_app",
            "deps",
        ),
        (  # a factory whose parameters all have defaults (Flaskr's shape), called at the
            # top: the app it made is served, not made a second time
            {
                "app.py": "from quart import Quart\n\ndef create_app(test_config=None):\n"
                "    app = Quart(__name__)\n    return app\n\napp = create_app()\n"
            },
            "Quart",
            " app:app",
            "deps",
        ),
        (  # src/ itself a package: Sanic was served as app:app with src on the path (its
            # relative imports failed) while FastAPI in the same layout got src.app:app
            {
                "src/__init__.py": "",
                "src/routes.py": "",
                "src/app.py": "from sanic import Sanic\nfrom .routes import bp\napp = Sanic('x')\n",
            },
            "Sanic",
            "-m sanic src.app:app --host $HOST --port $PORT --no-motd",
            "deps",
        ),
    ],
)
def test_framework_apps_in_packages_and_factories(
    tmp_path: Path, files: dict[str, str], kind: str, run_end: str, pythonpath: str
) -> None:
    """Found by deploying real apps laid out as their frameworks' own docs do."""
    found = detect(_write(tmp_path, files))
    assert (found.kind, found.env.get("PYTHONPATH")) == (kind, pythonpath), found
    assert found.run.endswith(run_end), found.run
    assert subprocess.run(["/bin/sh", "-n", "-c", found.run]).returncode == 0  # parses


def test_sanic_health_endpoint_only_when_it_is_served(tmp_path: Path) -> None:
    """HEALTH = True alone (Sanic's docs) serves nothing at /__health__: sanic-ext
    serves it, with HEALTH_ENDPOINT = True too. The guess rolled a deploy back."""
    app = "from sanic import Sanic\napp = Sanic('x')\napp.config.HEALTH = True\n"
    assert detect(_write(tmp_path / "a", {"server.py": app})).health_path is None
    both = app + "app.config.HEALTH_ENDPOINT = True\n"
    assert detect(_write(tmp_path / "b", {"server.py": both})).health_path == "/__health__"


def _django_project(root: Path, settings: str, files: dict[str, str]) -> Path:
    manage = DJANGO_MANAGE.replace("mysite.settings", settings)
    return _write(root, {"manage.py": manage, "requirements.txt": "Django>=5\n", **files})


@pytest.mark.parametrize(
    ("settings", "files", "pythonpath", "settings_inputs"),
    [
        (  # a settings package: settings/__init__.py imports base.py, which has the rest
            "mysite.settings",
            {
                "mysite/settings/__init__.py": "from .base import *\n",
                "mysite/settings/base.py": "STATIC_ROOT = BASE_DIR / 'staticfiles'\n",
                "mysite/wsgi.py": "",
            },
            "deps",
            ["mysite/settings/__init__.py", "mysite/settings/base.py"],
        ),
        (  # split settings: DJANGO_SETTINGS_MODULE names a module of the package
            "mysite.settings.production",
            {
                "mysite/settings/__init__.py": "",
                "mysite/settings/base.py": "STATIC_ROOT = BASE_DIR / 'staticfiles'\n",
                "mysite/settings/production.py": "from .base import *\n",
                "mysite/wsgi.py": "",
            },
            "deps",
            [
                "mysite/settings/__init__.py",
                "mysite/settings/base.py",
                "mysite/settings/production.py",
            ],
        ),
        (  # manage.py at the top, the project in src/
            "mysite.settings",
            {
                "src/mysite/settings.py": "STATIC_ROOT = BASE_DIR / 'staticfiles'\n",
                "src/mysite/wsgi.py": "",
            },
            "src:deps",
            ["src/mysite/settings.py"],
        ),
    ],
)
def test_django_layouts_beyond_startproject(
    tmp_path: Path,
    settings: str,
    files: dict[str, str],
    pythonpath: str,
    settings_inputs: list[str],
) -> None:
    """Each was taken for a plain WSGI app (no migrate, no collectstatic: every page a
    500, no CSS), or read the wrong file for STATIC_ROOT."""
    found = detect(_django_project(tmp_path, settings, files))
    assert found.kind == "Django" and found.run.endswith("mysite.wsgi:application"), found
    assert found.env["PYTHONPATH"] == pythonpath
    collect = [s for s in found.build if isinstance(s, BuildStep) and "collectstatic" in s.run]
    assert collect, found.build
    # every static/ directory however deep (apps/polls/static was missed), and what
    # installs the packages, so a stylesheet edit is never served stale
    assert collect[0].inputs == ["requirements.txt", *settings_inputs, "**/static"]


def test_django_channels_is_served_over_asgi(tmp_path: Path) -> None:
    """ASGI_APPLICATION set and asgi.py present: WebSockets need the ASGI app; gunicorn on
    wsgi.py answered the chat's WebSocket with 404."""
    root = _django_project(
        tmp_path,
        "mysite.settings",
        {
            "mysite/settings.py": "ASGI_APPLICATION = 'mysite.asgi.application'\n",
            "mysite/wsgi.py": "",
            "mysite/asgi.py": "application = ProtocolTypeRouter({})\n",
        },
    )
    found = detect(root)
    assert found.kind == "Django" and found.run.startswith("python3 -m uvicorn"), found.run
    assert found.run.endswith("mysite.asgi:application")
    assert "websockets" in str(found.build[0])


def test_django_health_checks_send_a_name_allowed_hosts_lists(tmp_path: Path) -> None:
    base = "STATIC_ROOT = BASE_DIR / 'staticfiles'\nALLOWED_HOSTS = []\n"
    cases = {
        'ALLOWED_HOSTS = ["www.example.com", "example.com"]': "www.example.com",
        "ALLOWED_HOSTS = ['.example.com']  # and subdomains": "example.com",
        'ALLOWED_HOSTS = ["*"]': None,
        'ALLOWED_HOSTS = ["localhost", "example.com"]': None,
        'ALLOWED_HOSTS = os.environ["HOSTS"].split(",")': None,  # computed: not read
        'ALLOWED_HOSTS = [\n    "www.example.com",\n]': "www.example.com",  # black's layout
        'ALLOWED_HOSTS = ("www.example.com",)': "www.example.com",
        # computed, once taken for the names "DOMAIN" and "{DOMAIN}" (every check a 400,
        # and a kiln.toml that did not load)
        'ALLOWED_HOSTS = [os.getenv("DOMAIN")]': None,
        'DOMAIN = "x"\nALLOWED_HOSTS = [f"{DOMAIN}"]': None,
        'ALLOWED_HOSTS = ["www.example.com"]\nALLOWED_HOSTS += EXTRA': None,
        'if DEBUG:\n    ALLOWED_HOSTS = ["dev.example.com"]': None,  # depends on the run
    }
    for n, (line, host) in enumerate(cases.items()):
        files = {"mysite/settings.py": base + line + "\n", "mysite/wsgi.py": ""}
        root = _django_project(tmp_path / str(n), "mysite.settings", files)
        assert detect(root).health_host == host, line
        assert _config(root).health.host == host, line


def test_django_reads_the_settings_module_in_use_not_its_siblings(tmp_path: Path) -> None:
    """With mysite.settings.production in use, staging.py (sorted after it) set the
    health checks' Host, and production answered every check with 400."""
    files = {
        "mysite/settings/__init__.py": "",
        "mysite/settings/base.py": "ALLOWED_HOSTS = ['base.example.com']\nSTATIC_ROOT = 'st'\n",
        "mysite/settings/production.py": (
            "ALLOWED_HOSTS = ['early.example.com']\n"
            "from .base import *  # base's value replaces the one above\n"
            "try:\n    from mysite.settings.local import *\nexcept ImportError:\n    pass\n"
        ),
        "mysite/settings/local.py": "ALLOWED_HOSTS = ['www.example.com']\n",
        "mysite/settings/staging.py": "ALLOWED_HOSTS = ['staging.example.com']\n",
        "mysite/wsgi.py": "",
    }
    root = _django_project(tmp_path, "mysite.settings.production", files)
    found = detect(root)
    assert found.health_host == "www.example.com"
    # every sibling still counts for collectstatic: any may be the one in use somewhere
    collect = next(s for s in found.build if isinstance(s, BuildStep) and "static" in s.run)
    assert "mysite/settings/staging.py" in collect.inputs

    files["mysite/settings/production.py"] = "from .base import *\nALLOWED_HOSTS = ['p.example']\n"
    root = _django_project(tmp_path / "later", "mysite.settings.production", files)
    assert detect(root).health_host == "p.example"  # assigned after the import: it wins


def test_a_monorepo_root_points_at_its_apps(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "api/app.py": "from flask import Flask\napp = Flask(__name__)\n",
            "api/requirements.txt": "flask\n",
            "web/package.json": "{}",
            "docs/index.md": "# docs",
        },
    )
    found = detect(tmp_path)
    assert found.kind == "unknown"
    assert any("apps in api/, web/: run kiln init in each" in w for w in found.why), found.why


def test_alembic_and_flask_migrate_migrations_are_the_release(tmp_path: Path) -> None:
    """A uv-managed FastAPI app with Alembic, and a Flask app with Flask-Migrate: each
    deployed green with no release, every page that read the database a 500."""
    api = _write(
        tmp_path / "api",
        {
            "main.py": "from fastapi import FastAPI\napp = FastAPI()\n",
            "requirements.txt": "fastapi\nsqlalchemy\nalembic\n",
            "alembic.ini": "[alembic]\nsqlalchemy.url = sqlite:///./app.db\n",
        },
    )
    found = detect(api)
    assert found.release == "python3 -m alembic upgrade head"
    assert any("SQLite file inside the app directory" in w for w in found.warnings)
    assert _config(api).app.release == "python3 -m alembic upgrade head"

    web = _write(
        tmp_path / "web",
        {
            "shop/__init__.py": "from flask import Flask\n\ndef create_app():\n"
            "    app = Flask(__name__)\n    return app\n",
            "requirements.txt": "flask\nflask-migrate\n",
            "migrations/alembic.ini": "[alembic]\n",
            "config.py": "DATABASE_URL = 'postgresql://db/shop'\n",
        },
    )
    found = detect(web)
    assert found.release == "python3 -m flask --app 'shop:create_app()' db upgrade"
    assert not any("SQLite" in w for w in found.warnings)


def test_django_debug_in_the_settings_in_use_is_a_warning(tmp_path: Path) -> None:
    """wagtail start runs settings.dev (DEBUG = True) beside a production.py: the 500
    pages of a broken deploy were full debug pages, served through the balancer."""
    files = {
        "mysite/settings/__init__.py": "",
        "mysite/settings/base.py": "DEBUG = False\nMEDIA_ROOT = BASE_DIR / 'media'\n",
        "mysite/settings/dev.py": "from .base import *\nDEBUG = True\n",
        "mysite/settings/production.py": "from .base import *\n",
        "mysite/wsgi.py": "",
    }
    found = detect(_django_project(tmp_path / "dev", "mysite.settings.dev", files))
    (warning,) = [w for w in found.warnings if "DEBUG = True" in w]
    assert 'DJANGO_SETTINGS_MODULE = "mysite.settings.production"' in warning
    assert any("MEDIA_ROOT is inside the app directory" in n for n in found.notes)
    found = detect(_django_project(tmp_path / "prod", "mysite.settings.production", files))
    assert not any("DEBUG = True" in w for w in found.warnings)


@pytest.mark.parametrize(
    ("settings", "warned"),
    [
        ("DEBUG = False\nALLOWED_HOSTS = []\n", True),  # startproject, made ready by hand
        ("SECRET_KEY = 'x'\n", True),  # neither assigned: Django's defaults, False and []
        ("DEBUG = os.environ.get('DEBUG') == '1'\nALLOWED_HOSTS = ()\n", True),
        ("DEBUG = False\nALLOWED_HOSTS = ['www.example.com']\n", False),
        ("DEBUG = False\nALLOWED_HOSTS = os.environ['HOSTS'].split(',')\n", False),
        ("DEBUG = False\nif X:\n    ALLOWED_HOSTS = ['a.example']\n", False),  # may be set
        # Django answers localhost then; the DEBUG warning says to list them
        ("DEBUG = True\nALLOWED_HOSTS = []\n", False),
        ("from .base import *\n", True),  # nor in the base it runs
        ("from .base import *\nALLOWED_HOSTS = ['www.example.com']\n", False),
        ("from django_base_settings import *\n", False),  # another package's: unknown
        (
            "from .base import *\ntry:\n    from .local import *\nexcept ImportError:\n    pass\n",
            True,
        ),  # local.py is not there, nor in the image
    ],
)
def test_django_with_debug_off_and_no_allowed_hosts_is_a_warning(
    tmp_path: Path, settings: str, warned: bool
) -> None:
    """DEBUG off and ALLOWED_HOSTS empty: Django answers 400 to every request, and init
    said nothing."""
    files = {
        "mysite/settings/__init__.py": "",
        "mysite/settings/base.py": "STATIC_ROOT = 'static'\n",
        "mysite/settings/site.py": settings,
        "mysite/wsgi.py": "",
    }
    found = detect(_django_project(tmp_path, "mysite.settings.site", files))
    hosts = [w for w in found.warnings if "leaves ALLOWED_HOSTS empty" in w]
    assert bool(hosts) == warned, found.warnings
    if warned:
        (warning,) = hosts
        assert warning.startswith("mysite.settings.site leaves ALLOWED_HOSTS empty: ")
        assert "Django answers 400 (Bad Request) to every request" in warning
        assert "os.environ['ALLOWED_HOSTS'].split(',')" in warning
        assert "[env] ALLOWED_HOSTS entry" in warning


def test_the_production_settings_init_suggests_must_list_allowed_hosts(tmp_path: Path) -> None:
    """wagtail start: settings.dev has DEBUG = True, and the production.py init said to
    use instead leaves ALLOWED_HOSTS empty: followed as written, every request a 400."""
    files = {
        "mysite/settings/__init__.py": "",
        "mysite/settings/base.py": "DEBUG = False\n",
        "mysite/settings/dev.py": "from .base import *\nDEBUG = True\nALLOWED_HOSTS = ['*']\n",
        "mysite/settings/production.py": "from .base import *\nDEBUG = False\n"
        "try:\n    from .local import *\nexcept ImportError:\n    pass\n",
        "mysite/wsgi.py": "",
    }
    found = detect(_django_project(tmp_path / "wagtail", "mysite.settings.dev", files))
    (warning,) = [w for w in found.warnings if "DEBUG = True" in w]
    assert warning.endswith(
        'use [env] DJANGO_SETTINGS_MODULE = "mysite.settings.production", and list the '
        "public host names in its ALLOWED_HOSTS (from the environment: ALLOWED_HOSTS = "
        "os.environ['ALLOWED_HOSTS'].split(','), with an [env] ALLOWED_HOSTS entry)"
    )
    assert not any("leaves ALLOWED_HOSTS empty" in w for w in found.warnings)  # dev lists *
    files["mysite/settings/dev.py"] = "DEBUG = True\n"  # no production.py beside it
    del files["mysite/settings/production.py"]
    found = detect(_django_project(tmp_path / "alone", "mysite.settings.dev", files))
    (warning,) = [w for w in found.warnings if "DEBUG = True" in w]
    assert "DEBUG from the environment" in warning
    assert "list the public host names in ALLOWED_HOSTS (from the environment" in warning
    files["mysite/settings/production.py"] = "from .base import *\nDEBUG = False\n"
    files["mysite/settings/production.py"] += "ALLOWED_HOSTS = ['www.example.com']\n"
    files["mysite/settings/dev.py"] = "from .base import *\nDEBUG = True\n"
    found = detect(_django_project(tmp_path / "listed", "mysite.settings.dev", files))
    (warning,) = [w for w in found.warnings if "DEBUG = True" in w]
    assert warning.endswith('use [env] DJANGO_SETTINGS_MODULE = "mysite.settings.production"')


@pytest.mark.parametrize(
    ("scripts", "lock", "said"),
    [
        (
            {"start": "bun run index.ts"},
            "bun.lock",
            ["scripts.start runs Bun", "bun.lock is Bun's"],
        ),
        ({"start": "node dist/i.js", "build": "bunx tsc"}, None, ["scripts.build runs Bun"]),
        ({"start": "cross-env NODE_ENV=production bun index.ts"}, None, ["scripts.start runs"]),
        ({"start": "node server.js"}, "bun.lockb", ["bun.lockb is Bun's lockfile"]),
        ({"start": "node bun.js", "build": "npm run bundle"}, None, []),  # no Bun there
        ({"start": "NODE_ENV=production bun run src/index.ts"}, None, ["scripts.start runs"]),
    ],
)
def test_init_says_a_bun_project_needs_bun_which_the_image_lacks(
    tmp_path: Path, scripts: dict[str, str], lock: str | None, said: list[str]
) -> None:
    """Before, a Bun project was baked as a Node one without a word: its first deploy
    failed at boot with 'bun: not found', and bun.lock was silently ignored."""
    files = {"package.json": json.dumps({"scripts": scripts, "dependencies": {"hono": "^4"}})}
    _write(tmp_path, {**files, **({lock: ""} if lock else {})})
    bun = [w for w in detect(tmp_path).warnings if "Bun" in w]
    assert len(bun) == len(said), bun
    for warning, start in zip(bun, said, strict=True):
        assert warning.startswith(start), warning


def test_a_package_manager_or_yarn_path_is_never_shell_syntax_in_the_build(tmp_path: Path) -> None:
    """packageManager and .yarnrc.yml's yarnPath reach the install command: a value that
    is not a plain name@version is not used, and a release path is quoted."""
    _write(
        tmp_path,
        {
            "package.json": json.dumps(
                {
                    "packageManager": "yarn@4;touch pwned",
                    "main": "index.js",
                    "dependencies": {"ms": "^2"},
                }
            ),
            "index.js": "",
            "yarn.lock": "__metadata:\n  version: 8\n",
        },
    )
    (step,) = detect(tmp_path).build
    assert isinstance(step, BuildStep) and "pwned" not in step.run and "cli-dist@4 " in step.run
    _write(tmp_path, {".yarnrc.yml": "yarnPath: .yarn/r$(x).cjs\n", ".yarn/r$(x).cjs": ""})
    (step,) = detect(tmp_path).build
    assert isinstance(step, BuildStep) and "node '.yarn/r$(x).cjs' install" in step.run


def test_a_bun_lockfile_beside_the_one_npm_uses_is_not_said_to_be_ignored(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "package.json": json.dumps({"main": "i.js", "dependencies": {"ms": "^2"}}),
            "i.js": "",
            "package-lock.json": "{}",
            "bun.lockb": "",
        },
    )
    assert not [w for w in detect(tmp_path).warnings if "Bun" in w]


def test_a_committed_yarn_release_without_a_version_in_its_name_follows_the_lockfile(
    tmp_path: Path,
) -> None:
    """`yarn set version berry` (Yarn 2 and 3) wrote .yarn/releases/yarn-berry.cjs: its
    Yarn is the lockfile's (version 6: Yarn 3), which has no `workspaces focus`."""
    _write(
        tmp_path,
        {
            "package.json": json.dumps({"main": "i.js", "dependencies": {"ms": "^2"}}),
            "i.js": "",
            "yarn.lock": "__metadata:\n  version: 6\n",
            ".yarnrc.yml": "yarnPath: .yarn/releases/yarn-berry.cjs\n",
            ".yarn/releases/yarn-berry.cjs": "",
        },
    )
    (step,) = detect(tmp_path).build
    assert isinstance(step, BuildStep)
    assert step.run == f"{BERRY_ENV} node .yarn/releases/yarn-berry.cjs install --immutable"


FASTAPI_APP = "from fastapi import FastAPI\napp = FastAPI()\n"


@pytest.mark.parametrize(
    ("files", "said"),
    [
        (
            {"pyproject.toml": '[project]\nrequires-python = ">=3.13"\ndependencies = []\n'},
            "pyproject.toml (requires-python) asks for Python >=3.13",
        ),
        ({".python-version": "3.13\n", "requirements.txt": "fastapi\n"}, ".python-version"),
        ({"runtime.txt": "python-3.13.1\n", "requirements.txt": "fastapi\n"}, "runtime.txt"),
    ],
)
def test_a_python_newer_than_the_hosts_python3_is_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, str], said: str
) -> None:
    """The bake and the instances run python3 on the instances' PATH: Wagtail's template
    (Django 6.1, Python 3.12+) failed at bake on 3.11 with 'No matching distribution'."""
    monkeypatch.setattr("kiln.runenv.python_on", lambda path, name="python3": "python3.11")
    _write(tmp_path, {"main.py": FASTAPI_APP, **files})
    [warning] = [w for w in detect(tmp_path).warnings if "asks for Python" in w]
    assert warning.startswith(said) and "python3 on the instances' PATH here is python3.11" in (
        warning
    )
    assert 'install Python 3.13 on the hosts, then set [app] python = "python3.13"' in warning


@pytest.mark.parametrize(
    ("files", "warned"),
    [
        ({"pyproject.toml": '[project]\nrequires-python = ">=3.10,<4"\n'}, False),
        ({"pyproject.toml": '[project]\nrequires-python = "~=3.11"\n'}, False),
        ({"pyproject.toml": '[project]\nrequires-python = ">=3.11.4"\n'}, False),  # patch: unknown
        ({"pyproject.toml": '[project]\nrequires-python = "==3.12.*"\n'}, True),
        ({"pyproject.toml": '[project]\nrequires-python = "<3.11"\n'}, True),
        ({"pyproject.toml": '[project]\nrequires-python = "<3.11.5"\n'}, False),
        ({"pyproject.toml": '[project]\nrequires-python = ">=3.12 || >=2.7"\n'}, False),
        ({"pyproject.toml": '[tool.poetry.dependencies]\npython = "^3.12"\n'}, True),
        ({"pyproject.toml": '[tool.poetry.dependencies]\npython = "^3.10"\n'}, False),
        ({"pyproject.toml": '[tool.poetry.dependencies]\npython = "~3.10"\n'}, True),
        ({"Pipfile": '[requires]\npython_version = "3.12"\n'}, True),
        ({".python-version": "3.11.9\n"}, False),
        ({".python-version": "system\n"}, False),
        ({"runtime.txt": "python-3.11.10\n"}, False),
    ],
)
def test_the_python_version_asked_for_is_compared_by_major_and_minor(
    tmp_path: Path, files: dict[str, str], warned: bool
) -> None:
    _write(tmp_path, files)
    assert (python_warning(tmp_path, "python3.11") is not None) == warned


FASTIFY_TS = {  # `fastify-cli generate app --lang=ts`
    "clean": "node -e \"require('fs').rmSync('dist', {recursive: true, force: true})\"",
    "start": "npm run build:ts && fastify start -l info dist/app.js",
    "build:ts": "npm run clean && tsc",
    "watch:ts": "tsc -w",
}


@pytest.mark.parametrize(
    ("scripts", "run", "build"),
    [
        (
            FASTIFY_TS,
            "node_modules/.bin/fastify start -l info dist/app.js",
            ["npm run build:ts"],
        ),
        ({"start": "tsc && node dist/index.js"}, "node dist/index.js", ["node_modules/.bin/tsc"]),
        (
            {"start": "tsc -p tsconfig.build.json && PORT=$PORT fastify start dist/app.js"},
            "PORT=$PORT node_modules/.bin/fastify start dist/app.js",
            ["node_modules/.bin/tsc -p tsconfig.build.json"],
        ),
        (  # the build script runs it already: once
            {
                "build": "npm run compile:ts",
                "compile:ts": "tsc",
                "start": "npm run build && node .",
            },
            "node .",
            ["npm run build"],
        ),
        (  # a script named otherwise that runs a compiler; then the build script's too
            {
                "build": "vite build",
                "server": "babel src -d lib",
                "start": "npm run server && node lib/",
            },
            "node lib/",
            ["npm run build", "npm run server"],
        ),
    ],
)
def test_a_start_script_that_compiles_first_compiles_at_bake_time(
    tmp_path: Path, scripts: dict[str, str], run: str, build: list[str]
) -> None:
    """fastify-cli's TypeScript template ran tsc at every instance start, where the
    prune had removed it ('tsc: not found'): the compile is the bake's, the rest runs."""
    package = {
        "scripts": scripts,
        "dependencies": {"fastify": "^5", "fastify-cli": "^7"},
        "devDependencies": {"typescript": "^5", "@babel/cli": "^7"},
    }
    found = detect(_write(tmp_path, {"package.json": json.dumps(package)}))
    assert found.run == run
    assert _steps(found.build) == [
        ("npm install --no-audit --no-fund --include=dev", "node_modules"),
        *build,
        "npm prune --omit=dev",
    ]
    assert any("compiles the app: run at bake time" in w for w in found.why), found.why


@pytest.mark.parametrize(
    "start",
    [
        "npm run watch:ts && node dist/app.js",  # a watcher never ends
        "npm run clean && node dist/app.js",  # no compiler
        "tsc && node dist/a.js; node dist/b.js",  # the rest is more than one command
        "node dist/app.js && tsc",
        "npm run build:ts -- --sourceMap && node dist/app.js",  # its arguments are the run's
    ],
)
def test_a_start_script_that_does_not_compile_first_is_run_as_it_is(
    tmp_path: Path, start: str
) -> None:
    package = {
        "scripts": {**FASTIFY_TS, "start": start},
        "dependencies": {"fastify": "^5"},
        "devDependencies": {"typescript": "^5"},
    }
    found = detect(_write(tmp_path, {"package.json": json.dumps(package)}))
    assert found.run == "npm start", found.run
    assert not any("compiles the app" in w for w in found.why)


@pytest.mark.parametrize(
    ("marker", "what"),
    [("go.mod", "a Go module"), ("Cargo.toml", "a Rust crate"), ("deno.json", "a Deno project")],
)
def test_a_stack_kiln_does_not_build_is_named(tmp_path: Path, marker: str, what: str) -> None:
    """ "nothing recognised here" alone left a Go, Rust or Deno user guessing."""
    _write(tmp_path, {marker: "x\n", "README.md": "hi\n"})
    found = detect(tmp_path)
    assert found.kind == "unknown"
    assert any(
        line.startswith(f"{marker}: {what}, which kiln init does not build") for line in found.why
    )


def test_a_python_apps_front_end_build_that_is_not_run_is_a_warning(tmp_path: Path) -> None:
    """A Django site bundling its JavaScript with esbuild: the image had no bundle and
    every page answered 500 (whitenoise's manifest had no entry for it)."""
    package = {
        "scripts": {"build": "esbuild assets/main.js --bundle --outfile=static/dist/main.js"},
        "devDependencies": {"esbuild": "0.24"},
    }
    _write(
        tmp_path,
        {
            "app.py": "from flask import Flask\napp = Flask(__name__)\n",
            "requirements.txt": "flask\n",
            "package.json": json.dumps(package),
        },
    )
    [warning] = [w for w in detect(tmp_path).warnings if "is not run by the build" in w]
    assert warning.startswith("package.json's build script ('esbuild assets/main.js")
    _write(tmp_path, {"package.json": json.dumps({"dependencies": {"htmx.org": "2"}})})
    assert not [w for w in detect(tmp_path).warnings if "is not run by the build" in w]


@pytest.mark.parametrize(
    ("config", "warned"),
    [
        ('SQLALCHEMY_DATABASE_URI = "sqlite:///" + os.path.join(basedir, "app.db")\n', True),
        ("SQLALCHEMY_DATABASE_URI = f\"sqlite:///{BASE_DIR / 'app.db'}\"\n", True),
        ('SQLALCHEMY_DATABASE_URI = "sqlite:///" + os.environ["DB_PATH"]\n', False),
        ('SQLALCHEMY_DATABASE_URI = "sqlite:////var/lib/app/app.db"\n', False),
    ],
)
def test_a_sqlite_path_made_from_the_apps_directory_is_a_warning(
    tmp_path: Path, config: str, warned: bool
) -> None:
    """Flask-AppBuilder's config.py builds its URI from basedir: no warning, and each
    instance wrote to its own app.db (a role added showed on every other request)."""
    app = "from flask import Flask\napp = Flask(__name__)\napp.config.from_object('config')\n"
    _write(tmp_path, {"app.py": app, "config.py": "import os\n" + config})
    found = detect(tmp_path)
    assert any("SQLite file inside the app directory" in w for w in found.warnings) is warned


@pytest.mark.parametrize(
    ("requirements", "settings", "served"),
    [
        ("Django>=5\n", "", False),
        ("Django>=5\nwhitenoise>=6\n", "", True),
        ("Django>=5\n", "MIDDLEWARE = ['whitenoise.middleware.WhiteNoiseMiddleware']\n", True),
        ("Django>=5\ndjango-storages[s3]\n", 'STORAGES = {"staticfiles": {"BACKEND": '
         '"storages.backends.s3.S3Storage"}}\n', True),
        ("Django>=5\n", "STATIC_URL = 'https://cdn.example.com/static/'\n", True),
    ],
)  # fmt: skip
def test_collected_static_files_that_nothing_serves_are_a_warning(
    tmp_path: Path, requirements: str, settings: str, served: bool
) -> None:
    """A new user's Django REST framework API: collectstatic ran at bake, and every
    /static/ URL answered 404 through gunicorn (the browsable API and admin unstyled)."""
    files = {
        "mysite/settings.py": "STATIC_ROOT = BASE_DIR / 'staticfiles'\n" + settings,
        "mysite/wsgi.py": "",
        "requirements.txt": requirements,
    }
    found = detect(_django_project(tmp_path, "mysite.settings", files))
    warned = [w for w in found.warnings if w.startswith("STATIC_ROOT is collected")]
    assert bool(warned) is not served, found.warnings


EMMETT = """from emmett import App

app = App(__name__)


@app.route("/")
async def hello():
    return "Hello world!"
"""


def test_a_script_that_starts_no_server_is_a_warning(tmp_path: Path) -> None:
    """Emmett's quick start: app.py only defines the app (`emmett serve` runs it); init
    wrote `run = "python3 app.py"` with no word, and the first deploy failed."""
    _write(tmp_path, {"app.py": EMMETT, "requirements.txt": "emmett\n"})
    found = detect(tmp_path)
    assert found.run == "python3 app.py"
    (warning,) = found.warnings
    assert warning.startswith("app.py starts no server that kiln can see")
    serving = "server = HTTPServer((os.environ['HOST'], port), H)\nserver.serve_forever()\n"
    (tmp_path / "app.py").write_text(serving)
    assert detect(tmp_path).warnings == []


def test_a_pelican_site_is_named(tmp_path: Path) -> None:
    _write(tmp_path, {"pelicanconf.py": "AUTHOR = 'me'\n", "requirements.txt": "pelican\n"})
    found = detect(tmp_path)
    assert found.kind == "unknown"
    assert any(line.startswith("pelicanconf.py: a Pelican site") for line in found.why)
