"""A Procfile's web process is the run line, made to listen on $HOST:$PORT; its release
process is the release command; other processes are named in a note."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from kiln.config import BuildStep, parse_config
from kiln.detect import detect
from kiln.listenargs import listen_on_host_port
from kiln.procfile import parse_procfile
from kiln.runenv import SYSTEM_PATH
from kiln.runline import exec_form, simple_commands
from kiln.scaffold import render_config
from kilntest import Kiln

DJANGO_MANAGE = "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'mysite.settings')\n"


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def _runs(build: list[str | BuildStep]) -> list[str]:
    return [s if isinstance(s, str) else s.run for s in build]


def test_parse_takes_types_and_commands_and_names_what_it_skips() -> None:
    text = (
        "\ufeff# the app's processes\r\n"
        "web: gunicorn app:app --log-file -\r\n"
        "\r\n"
        "release:python manage.py migrate\n"
        "worker: celery -A app worker -l info  \n"
        "not a process line\n"
        "web: gunicorn app:app --timeout 60\n"
        "bad name: x\n"
    )
    procfile = parse_procfile(text)
    assert procfile.processes == {
        "web": "gunicorn app:app --timeout 60",  # the last one declared wins, as in foreman
        "release": "python manage.py migrate",
        "worker": "celery -A app worker -l info",
    }
    assert procfile.malformed == [(6, "not a process line"), (8, "bad name: x")]
    assert procfile.repeated == ["web"]


def test_simple_commands_leave_out_assignments_and_redirections() -> None:
    line = "FOO=1 python manage.py migrate >log 2>&1 && X=2 gunicorn app:app"
    words = [[w for w, _ in command] for command in simple_commands(line) or []]
    assert words == [["python", "manage.py", "migrate", "2"], ["gunicorn", "app:app"]]
    assert simple_commands("gunicorn app:app | tee log") is None


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        # Heroku's gunicorn reads $PORT and binds every interface
        (
            "gunicorn myproj.wsgi --log-file -",
            "python3 -m gunicorn --bind $HOST:$PORT myproj.wsgi --log-file -",
        ),
        ("gunicorn -b 0.0.0.0:$PORT app:app", "python3 -m gunicorn -b $HOST:$PORT app:app"),
        ("gunicorn --bind=0.0.0.0:$PORT app:app", "python3 -m gunicorn --bind=$HOST:$PORT app:app"),
        (
            'gunicorn "app:create_app()" --bind "0.0.0.0:${PORT}"',
            'python3 -m gunicorn "app:create_app()" --bind $HOST:$PORT',
        ),
        (
            "gunicorn -b0.0.0.0:5000 -b [::]:$PORT app:app",
            "python3 -m gunicorn -b$HOST:$PORT app:app",
        ),
        ("gunicorn -b $HOST:$PORT app:app", "python3 -m gunicorn -b $HOST:$PORT app:app"),
        ("python -m gunicorn -w 3 app:app", "python3 -m gunicorn --bind $HOST:$PORT -w 3 app:app"),
        # uvicorn ignores $PORT: 127.0.0.1:8000 unless told
        ("uvicorn main:app", "python3 -m uvicorn --host $HOST --port $PORT main:app"),
        (
            "uvicorn main:app --host 0.0.0.0 --port $PORT",
            "python3 -m uvicorn main:app --host $HOST --port $PORT",
        ),
        (
            "uvicorn main:app --host=0.0.0.0 --port=${PORT:-5000}",
            "python3 -m uvicorn main:app --host=$HOST --port=${PORT:-5000}",
        ),
        ("uvicorn main:app --port $PORT", "python3 -m uvicorn --host $HOST main:app --port $PORT"),
        (
            "python3 -m uvicorn main:app --host 0.0.0.0 --port 8000",
            "python3 -m uvicorn main:app --host $HOST --port $PORT",
        ),
        (
            "hypercorn main:app --bind 0.0.0.0:$PORT",
            "python3 -m hypercorn main:app --bind $HOST:$PORT",
        ),
        (
            "daphne p.asgi:application --port $PORT --bind 0.0.0.0",
            "python3 -m daphne p.asgi:application --port $PORT --bind $HOST",
        ),
        (
            "daphne p.asgi:application",
            "python3 -m daphne --bind $HOST --port $PORT p.asgi:application",
        ),
        (
            "waitress-serve --port=$PORT app:app",
            "python3 -m waitress --host $HOST --port=$PORT app:app",
        ),
        (
            "waitress-serve --listen=*:$PORT app:app",
            "python3 -m waitress --listen=$HOST:$PORT app:app",
        ),
        (  # Sanic's own server, told where to listen with -H/--host and -p/--port
            "sanic myapp.server:app --host 0.0.0.0 --port 8000 --workers 2",
            "python3 -m sanic myapp.server:app --host $HOST --port $PORT --workers 2",
        ),
        # FastAPI's documented production command binds 0.0.0.0:8000 when told nothing
        (
            "fastapi run main.py --port $PORT",
            "python3 -m fastapi run --host $HOST main.py --port $PORT",
        ),
        ("fastapi run", "python3 -m fastapi run --host $HOST --port $PORT"),
        (
            "python -m fastapi run app/main.py --host=0.0.0.0 --port=80 --workers 4",
            "python3 -m fastapi run app/main.py --host=$HOST --port=$PORT --workers 4",
        ),
        # Litestar: --app belongs to the group, --host/--port to its run subcommand
        (
            "litestar --app app:app run --host 0.0.0.0 --port $PORT",
            "python3 -m litestar --app app:app run --host $HOST --port $PORT",
        ),
        ("litestar run -H 0.0.0.0 -p 8000", "python3 -m litestar run -H $HOST -p $PORT"),
        (
            "litestar --app app:app run",
            "python3 -m litestar --app app:app run --host $HOST --port $PORT",
        ),
        (
            "granian --interface asgi --host 0.0.0.0 --port $PORT main:app",
            "python3 -m granian --interface asgi --host $HOST --port $PORT main:app",
        ),
        (
            "granian --interface wsgi app:app",
            "python3 -m granian --host $HOST --port $PORT --interface wsgi app:app",
        ),
        # the server is the last command; python is python3 everywhere
        (
            "python manage.py migrate && gunicorn p.wsgi",
            "python3 manage.py migrate && python3 -m gunicorn --bind $HOST:$PORT p.wsgi",
        ),
        ("python app.py", "python3 app.py"),
        ("node server.js", "node server.js"),
        ("npm start", "npm start"),
    ],
)
def test_a_server_is_made_to_listen_on_host_port(line: str, expected: str) -> None:
    adapted = listen_on_host_port(line)
    assert adapted.line == expected
    assert not adapted.warnings
    assert bool(adapted.changes) == (line != expected)


@pytest.mark.parametrize(
    "line",
    [
        "gunicorn --bind unix:/tmp/app.sock app:app",
        "uvicorn main:app --uds /tmp/a.sock",
        "litestar --app app:app run --uds /tmp/a.sock",
        "granian --interface asgi --uds /tmp/a.sock main:app",
        "gunicorn app:app | tee log",
    ],
)
def test_a_listener_kiln_cannot_reach_is_left_with_a_warning(line: str) -> None:
    adapted = listen_on_host_port(line)
    assert "$HOST:$PORT" in adapted.warnings[0]
    assert adapted.line.endswith(line.split(" ", 1)[1])


def test_django_with_a_heroku_procfile(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "manage.py": DJANGO_MANAGE,
            "mysite/settings.py": "",
            "mysite/wsgi.py": "application = get_wsgi_application()\n",
            "requirements.txt": "Django>=5\ngunicorn>=22\n",
            "Procfile": (
                "release: python manage.py migrate\n"
                "web: gunicorn mysite.wsgi --log-file -\n"
                "worker: celery -A mysite worker\n"
                "clock: python clock.py\n"
            ),
        },
    )
    found = detect(tmp_path)
    assert found.kind == "Django"
    assert found.run == "python3 -m gunicorn --bind $HOST:$PORT mysite.wsgi --log-file -"
    assert found.run_source == "Procfile" and found.release_source == "Procfile"
    assert found.release == "python3 manage.py migrate"
    assert any(w.startswith("Procfile: web process") for w in found.why)
    assert found.env["WEB_CONCURRENCY"] == "2"
    others = [n for n in found.notes if "worker, clock" in n]
    assert len(others) == 1 and "not run by kiln" in others[0]
    config = parse_config(render_config(tmp_path, name="mysite", found=found))
    assert config.app.run == found.run and config.app.release == found.release
    assert "From the Procfile's web process" in render_config(tmp_path, "mysite", found)


def test_without_a_procfile_the_sources_say_detected(tmp_path: Path) -> None:
    _write(tmp_path, {"manage.py": DJANGO_MANAGE, "mysite/wsgi.py": "application = 1\n"})
    found = detect(tmp_path)
    assert found.run_source == "detected" and found.release_source == "detected"
    assert "Procfile" not in render_config(tmp_path, "mysite", found)


def test_the_procfiles_server_is_installed_when_not_listed(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "app.py": "from flask import Flask\napp = Flask(__name__)\n",
            "requirements.txt": "flask\n",
            "Procfile": "web: waitress-serve --port=$PORT app:app\n",
        },
    )
    found = detect(tmp_path)
    assert found.run == "python3 -m waitress --host $HOST --port=$PORT app:app"
    # waitress only: gunicorn, kiln's own server for Flask, runs nothing here
    assert _runs(found.build) == [
        "python3 -m pip install -q --target deps -r requirements.txt waitress"
    ]
    assert "WEB_CONCURRENCY" not in found.env  # gunicorn's setting


@pytest.mark.parametrize(
    ("files", "web", "pip"),
    [
        (  # Channels: daphne listed, kiln's own line was uvicorn
            {
                "manage.py": DJANGO_MANAGE,
                "mysite/settings.py": "ASGI_APPLICATION = 'mysite.asgi.application'\n",
                "mysite/asgi.py": "application = 1\n",
                "requirements.txt": "django\nchannels\n",
            },
            "daphne mysite.asgi:application --port $PORT --bind 0.0.0.0",
            "-r requirements.txt daphne",
        ),
        (
            {
                "main.py": "from fastapi import FastAPI\napp = FastAPI()\n",
                "requirements.txt": "fastapi\n",
            },
            "granian --interface asgi --host 0.0.0.0 --port $PORT main:app",
            "-r requirements.txt granian",
        ),
        (
            {
                "app.py": "from flask import Flask\napp = Flask(__name__)\n",
                "requirements.txt": "flask\n",
            },
            "python app.py",
            "-r requirements.txt",
        ),
    ],
)
def test_the_procfiles_server_is_the_only_one_the_build_ensures(
    tmp_path: Path, files: dict[str, str], web: str, pip: str
) -> None:
    """uvicorn and websockets were added for a Procfile running daphne or granian, and
    gunicorn for `web: python app.py`, each with a why line saying the app lacked them."""
    _write(tmp_path, {**files, "Procfile": f"web: {web}\n"})
    found = detect(tmp_path)
    assert [r for r in _runs(found.build) if "pip" in r] == [
        f"python3 -m pip install -q --target deps {pip}"
    ]
    added = [w for w in found.why if "the build adds it" in w]
    server = pip.split()[2:]
    assert added == ([f"{server[0]} not in requirements.txt: the build adds it"] if server else [])
    assert any(w.startswith("the Procfile's web process decides the server") for w in found.why)


def test_a_server_a_listed_package_brings_is_not_added(tmp_path: Path) -> None:
    """python-fasthtml requires uvicorn[standard]: init said uvicorn was not listed and
    added a second, plain one to the build."""
    _write(
        tmp_path,
        {
            "main.py": "from fasthtml.common import *\napp, rt = fast_app()\nserve()\n",
            "requirements.txt": "python-fasthtml\n",
            "Procfile": "web: uvicorn main:app --host 0.0.0.0 --port $PORT\n",
        },
    )
    found = detect(tmp_path)
    assert found.run == "python3 -m uvicorn main:app --host $HOST --port $PORT"
    assert _runs(found.build) == ["python3 -m pip install -q --target deps -r requirements.txt"]
    assert not any("is not listed" in w for w in found.why), found.why


def test_an_app_detection_misses_gets_its_python_build_from_the_procfile(tmp_path: Path) -> None:
    """The app object is made in a way detection does not recognise; the Procfile names it."""
    _write(
        tmp_path,
        {
            "shop/__init__.py": "from shop.factory import make\napp = make()\n",
            "requirements.txt": "flask\nuvicorn\n",
            "Procfile": "web: uvicorn shop:app --host 0.0.0.0 --port $PORT\n",
        },
    )
    found = detect(tmp_path)
    assert found.kind == "Python app (Procfile)"
    assert found.why[0].startswith("Procfile: web process")  # not the placeholder's reason
    assert not found.warnings  # nor its warning that there is no run line
    assert found.run == "python3 -m uvicorn shop:app --host $HOST --port $PORT"
    assert found.env["PYTHONPATH"] == "deps"
    assert _runs(found.build) == ["python3 -m pip install -q --target deps -r requirements.txt"]


def test_a_console_script_from_the_build_is_found_on_path(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "app.py": "from flask import Flask\napp = Flask(__name__)\n",
            "requirements.txt": "flask\ngunicorn\nflask-migrate\n",
            "Procfile": "web: gunicorn app:app\nrelease: flask db upgrade\n",
        },
    )
    found = detect(tmp_path)
    assert found.release == "flask db upgrade"
    assert found.env["PATH"] == f"deps/bin:{SYSTEM_PATH}"


def test_a_node_procfile(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "package.json": json.dumps(
                {"dependencies": {"express": "^4", "serve": "^14"}, "scripts": {"start": "x"}}
            ),
            "server.js": "require('express')().listen(3000)\n",
            "Procfile": "web: node server.js\nworker: node worker.js\n",
        },
    )
    found = detect(tmp_path)
    assert found.kind == "Node" and found.run == "node server.js"
    assert any("worker process is not run by kiln" in n for n in found.notes)
    assert any("listens on port 3000" in w for w in found.warnings)  # the Procfile's file
    (tmp_path / "Procfile").write_text("web: serve -s build -l $PORT\n")
    found = detect(tmp_path)
    assert found.run == "serve -s build -l $PORT"
    assert found.env["PATH"] == f"node_modules/.bin:{SYSTEM_PATH}"


def test_no_web_process_or_bad_lines_fall_back_to_detection(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "app.py": "from flask import Flask\napp = Flask(__name__)\n",
            "Procfile": "worker: python worker.py\nweb gunicorn app:app\n",
        },
    )
    found = detect(tmp_path)
    assert found.run_source == "detected" and found.run.endswith("app:app")
    assert "--workers 2 --threads 4" in found.run  # kiln's own line
    assert "Procfile line 2 ('web gunicorn app:app') is not 'type: command': ignored" in found.notes
    assert "Procfile has no web process: the run line is kiln's own guess" in found.notes


def test_init_json_says_where_the_run_line_came_from(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "app.py": "from flask import Flask\napp = Flask(__name__)\n",
            "requirements.txt": "flask\ngunicorn\n",
            "Procfile": "web: gunicorn app:app -b 0.0.0.0:$PORT\n",
        },
    )
    doc = json.loads(Kiln(tmp_path)("init", "--json").stdout)
    assert doc["run"] == "python3 -m gunicorn app:app -b $HOST:$PORT"
    assert doc["run_source"] == "Procfile" and doc["release_source"] is None
    assert doc["path"] == str(tmp_path / "kiln.toml") and (tmp_path / "kiln.toml").is_file()
    (tmp_path / "Procfile").unlink()
    doc = json.loads(Kiln(tmp_path)("init", "--json", "--force").stdout)
    assert doc["run_source"] == "detected"


def test_exec_before_the_server_is_kept() -> None:
    adapted = listen_on_host_port("exec gunicorn app:app")
    assert adapted.line == "exec python3 -m gunicorn --bind $HOST:$PORT app:app"


@pytest.mark.parametrize(
    ("web", "run"),
    [
        ("yarn start", "npm start"),
        ("pnpm run serve --port $PORT", "npm run serve -- --port $PORT"),
        ("cd web && yarn start", "cd web && npm start"),
        ("yarn start 2>&1", "yarn start 2>&1"),  # a redirection: left as written
    ],
)
def test_yarn_and_pnpm_scripts_run_with_npm(tmp_path: Path, web: str, run: str) -> None:
    """The build runs yarn and pnpm through npx: the instances may have neither."""
    package = {"dependencies": {"express": "^4"}, "scripts": {"start": "node s.js"}}
    _write(tmp_path, {"package.json": json.dumps(package), "Procfile": f"web: {web}\n"})
    found = detect(tmp_path)
    assert found.run == run
    assert any(f"run as '{run.split(' && ')[-1]}'" in w for w in found.why) == (web != run)


def test_a_command_kiln_cannot_see_into_gets_a_note(tmp_path: Path) -> None:
    _write(tmp_path, {"requirements.txt": "flask\n", "Procfile": "web: ./bin/start-web\n"})
    found = detect(tmp_path)
    assert found.run == "./bin/start-web" and found.kind == "Python app (Procfile)"
    assert _runs(found.build) == ["python3 -m pip install -q --target deps -r requirements.txt"]
    assert found.env["PATH"] == f"deps/bin:{SYSTEM_PATH}"  # the script may run gunicorn
    assert any(
        "kiln cannot see where the Procfile's './bin/start-web' listens" in n for n in found.notes
    )


def test_a_python_web_process_beside_a_node_build_keeps_both(tmp_path: Path) -> None:
    """A Flask app in a package whose assets npm builds: pip first, then the Node build."""
    package = {"scripts": {"build": "webpack", "start": "node x.js"}}
    package["devDependencies"] = {"webpack": "^5"}
    _write(
        tmp_path,
        {
            "package.json": json.dumps(package),
            "requirements.txt": "flask\ngunicorn\n",
            "shop/__init__.py": "app = None\n",
            "Procfile": "web: gunicorn shop:app\n",
        },
    )
    found = detect(tmp_path)
    assert found.kind == "Python app (Procfile)"
    runs = _runs(found.build)
    assert runs[0] == "python3 -m pip install -q --target deps -r requirements.txt"
    assert "npm run build" in runs
    assert found.env["PYTHONPATH"] == "deps" and "node_modules/" in found.exclude
    assert not any("process.env" in n for n in found.notes)  # no Node server runs


def test_an_apm_launcher_keeps_running_the_rewritten_server(tmp_path: Path) -> None:
    """newrelic-admin and ddtrace-run are console scripts in deps/bin that run the server."""
    _write(
        tmp_path,
        {
            "app.py": "from flask import Flask\napp = Flask(__name__)\n",
            "requirements.txt": "flask\ngunicorn\nnewrelic\n",
            "Procfile": "web: newrelic-admin run-program gunicorn app:app\n",
        },
    )
    found = detect(tmp_path)
    assert found.run == (
        "newrelic-admin run-program python3 -m gunicorn --bind $HOST:$PORT app:app"
    )
    assert found.env["PATH"] == f"deps/bin:{SYSTEM_PATH}"
    assert found.env["WEB_CONCURRENCY"] == "2"
    adapted = listen_on_host_port("ddtrace-run uvicorn main:app --host 0.0.0.0 --port $PORT")
    assert adapted.line == "ddtrace-run python3 -m uvicorn main:app --host $HOST --port $PORT"


def test_a_development_server_in_the_procfile_is_warned_about(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "manage.py": DJANGO_MANAGE,
            "mysite/wsgi.py": "application = 1\n",
            "Procfile": "web: python manage.py runserver 0.0.0.0:$PORT\n",
        },
    )
    found = detect(tmp_path)
    assert found.run == "python3 manage.py runserver 0.0.0.0:$PORT"  # the user's call
    (warning,) = [w for w in found.warnings if "development server" in w]
    assert "manage.py runserver" in warning and "mysite.wsgi:application" in warning


def test_fastapi_and_litestar_procfiles_listen_on_host_port(tmp_path: Path) -> None:
    """FastAPI's `fastapi run` (its documented production command) bound 0.0.0.0 and got
    only a note that kiln could not see where it listens; so did Litestar and Granian."""
    app = {"main.py": "from fastapi import FastAPI\napp = FastAPI()\n"}
    for n, (web, run, dist) in enumerate(
        [
            (
                "fastapi run main.py --port $PORT",
                "python3 -m fastapi run --host $HOST main.py --port $PORT",
                "fastapi[standard]",
            ),
            (
                "granian --interface asgi --host 0.0.0.0 --port $PORT main:app",
                "python3 -m granian --interface asgi --host $HOST --port $PORT main:app",
                "fastapi\ngranian",
            ),
        ]
    ):
        files = {**app, "requirements.txt": dist, "Procfile": f"web: {web}\n"}
        root = _write(tmp_path / str(n), files)
        found = detect(root)
        assert found.run == run
        assert not found.warnings and not any("cannot see" in n for n in found.notes)
    found = detect(
        _write(
            tmp_path / "litestar",
            {
                "app.py": "from litestar import Litestar\napp = Litestar([])\n",
                "requirements.txt": "litestar[standard]\n",
                "Procfile": "web: litestar --app app:app run --host 0.0.0.0 --port $PORT\n",
            },
        )
    )
    assert found.run == "python3 -m litestar --app app:app run --host $HOST --port $PORT"
    assert "litestar --host 0.0.0.0 → $HOST: kiln gives each instance its own address" in (
        found.why
    )


def test_fastapi_dev_in_the_procfile_is_a_development_server(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "main.py": "from fastapi import FastAPI\napp = FastAPI()\n",
            "requirements.txt": "fastapi[standard]\n",
            "Procfile": "web: fastapi dev main.py --port $PORT\n",
        },
    )
    found = detect(tmp_path)
    assert found.run == "fastapi dev main.py --port $PORT"  # the user's call
    (warning,) = [w for w in found.warnings if "development server" in w]
    assert "FastAPI's development server (fastapi dev" in warning
    assert "python3 -m uvicorn --host $HOST --port $PORT main:app" in warning  # kiln's guess


@pytest.mark.parametrize(
    ("web", "first"),
    [
        ("python manage.py runserver 0.0.0.0:$PORT", "python manage.py"),
        ("HOST=0.0.0.0 node server.js", "node server.js"),
        ("bin/start-web --listen 0.0.0.0:$PORT", "bin/start-web"),
        ("hug -f app.py --host=0.0.0.0 -p $PORT", "hug"),
    ],
)
def test_a_web_process_kiln_cannot_rewrite_that_binds_every_interface_is_a_warning(
    tmp_path: Path, web: str, first: str
) -> None:
    """A literal 0.0.0.0 kiln leaves in the line got only a note (or nothing): each
    instance was reachable around the balancer."""
    _write(tmp_path, {"requirements.txt": "flask\n", "Procfile": f"web: {web}\n"})
    found = detect(tmp_path)
    (warning,) = [w for w in found.warnings if "every interface" in w]
    assert warning.startswith("the Procfile's web process listens on 0.0.0.0 (every interface)")
    assert f"kiln does not rewrite where '{first}' listens" in warning
    assert "reachable around kiln's load balancer" in warning
    assert not any("cannot see where" in n for n in found.notes)


def test_a_development_server_of_an_app_kiln_does_not_know_names_no_guess(
    tmp_path: Path,
) -> None:
    """kiln had no guess of its own: the warning quoted its failing placeholder."""
    _write(tmp_path, {"Procfile": "web: flask run --port $PORT\n", "notes.txt": "?"})
    found = detect(tmp_path)
    (warning,) = [w for w in found.warnings if "not made for production" in w]
    assert "guess" not in warning and "exit 64" not in warning, warning
    assert not any("nothing recognised" in w for w in found.why), found.why


def test_a_pythonpath_the_procfile_sets_keeps_deps_on_it(tmp_path: Path) -> None:
    """Set alone, PYTHONPATH=src would hide deps/, where the build installs gunicorn."""
    _write(
        tmp_path,
        {
            "requirements.txt": "flask\ngunicorn\n",
            "app.py": "from flask import Flask\napp = Flask(__name__)\n",
            "Procfile": "web: PYTHONPATH=src gunicorn app:app\n"
            'release: PYTHONPATH="src" python init_db.py\n',
        },
    )
    found = detect(tmp_path)
    assert found.run == "PYTHONPATH=src:$PYTHONPATH python3 -m gunicorn --bind $HOST:$PORT app:app"
    assert found.release == 'PYTHONPATH="src":$PYTHONPATH python3 init_db.py'
    # as an instance's shell runs it (exec before the server), deps/ is still there
    line = exec_form(
        'PYTHONPATH="src":$PYTHONPATH python3 -c "import os; print(os.environ[\'PYTHONPATH\'])"'
    )
    shown = subprocess.run(
        ["/bin/sh", "-c", line],
        env={"PATH": SYSTEM_PATH, "PYTHONPATH": "deps"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert shown.stdout.strip() == "src:deps"
