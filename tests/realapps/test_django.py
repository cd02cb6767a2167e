"""A Django project from `django-admin startproject`: admin, static files, migrations."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from realkit import SYSTEM_PYTHON, deploy, first_try, free_port, get, pip_tools, review

from kiln.home import Home
from kiln.local.agent import log_path
from kilntest import Kiln

SETTINGS = """
# production settings a Django user adds (kiln init notes say why)
import os
DEBUG = False
ALLOWED_HOSTS = ["*"]
STATIC_ROOT = BASE_DIR / "staticfiles"
MIDDLEWARE.insert(1, "whitenoise.middleware.WhiteNoiseMiddleware")
DATABASES["default"]["NAME"] = os.environ.get("DATABASE_PATH", BASE_DIR / "db.sqlite3")
"""


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    tools = pip_tools("Django>=5,<5.2")
    app = tmp_path / "mysite"
    app.mkdir()
    subprocess.run(
        [SYSTEM_PYTHON, "-m", "django", "startproject", "mysite", str(app)],
        check=True,
        env={**os.environ, "PYTHONPATH": str(tools)},
    )
    with (app / "mysite" / "settings.py").open("a") as f:
        f.write(SETTINGS)
    (app / "requirements.txt").write_text("Django>=5,<5.2\nwhitenoise>=6\n")
    monkeypatch.setenv("DJANGO_DB", str(tmp_path / "shared.sqlite3"))
    return app


SECRET = 'DATABASE_PATH = "env:DJANGO_DB"'


def _configure(app: Path) -> None:
    """The secret the settings read, and excludes that must not strip build outputs."""
    path = app / "kiln.toml"
    text = path.read_text().replace("[secrets]\n", f"[secrets]\n{SECRET}\n", 1)
    # unanchored: would match deps/django/contrib/admin/static… if applied to build outputs
    text = text.replace('exclude = ["', 'exclude = ["staticfiles/", "static/", "deps/", "', 1)
    path.write_text(text)
    (app / "staticfiles").mkdir()
    (app / "staticfiles" / "stale.css").write_text("a local leftover, not for the image\n")


def _kiln_run(app: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kiln.cli", "run", "--", *argv],
        cwd=app,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.timeout(900)  # three bakes' worth of Django processes: minutes on a busy machine
def test_django_admin_static_and_migrations_on_the_first_try(site: Path) -> None:
    urls = site / "mysite" / "urls.py"
    kiln = Kiln(site)
    init = kiln("init").stdout
    assert "detected: Django" in init and "SQLite" in init
    (site / "kiln.toml").unlink()

    def change() -> None:
        urls.write_text(urls.read_text() + "# v2\n")

    kiln, port = first_try(
        site, "/admin/login/", change, lambda body: b"Django" in body, configure=_configure
    )
    status, css = get(port, "/static/admin/css/base.css")
    assert status == 200 and b"body" in css  # collected at bake, served by whitenoise
    assert get(port, "/static/stale.css")[0] == 404  # the source's staticfiles/ left out
    history = json.loads(kiln("history", "--json").stdout)
    releases = [h["figures"].get("release") for h in history if h["kind"] == "deploy"]
    assert all(r and r["command"] == "python3 manage.py migrate --noinput" for r in releases)

    # kiln run: the instance environment with its secrets, and the migrated database
    made = _kiln_run(
        site,
        "python3",
        "manage.py",
        "shell",
        "-c",
        "from django.contrib.auth.models import User; "
        "User.objects.create_superuser('admin', 'a@example.com', 'pw'); "
        "print('users', User.objects.count())",
    )
    assert made.returncode == 0 and "users 1" in made.stdout, made.stderr
    assert b"admin" in get(port, "/admin/login/")[1]

    # a release that fails leaves the fleet as it was, and shows why
    before = json.loads(kiln("status", "--json").stdout)
    toml = (site / "kiln.toml").read_text()
    (site / "kiln.toml").write_text(
        toml.replace(
            'release = "python3 manage.py migrate --noinput"',
            'release = "python3 manage.py migrate nosuchapp"',
        )
    )
    change()
    failed = kiln("deploy", ok=False)
    assert failed.exit_code != 0 and "No installed app with label 'nosuchapp'" in failed.stderr
    after = json.loads(kiln("status", "--json").stdout)
    assert after["current_image"] == before["current_image"]
    assert sorted(i["id"] for i in after["instances"] if i["state"] == "healthy") == sorted(
        i["id"] for i in before["instances"] if i["state"] == "healthy"
    )


@pytest.mark.timeout(600)
def test_a_project_answering_only_its_public_name_is_checked_with_it(site: Path) -> None:
    """ALLOWED_HOSTS = ["mysite.example.com"]: Django answers 400 (DisallowedHost) to a
    check sent with the instance's address as its Host, so the first deploy rolled
    back with every check 400. kiln init reads the name and the checks send it."""
    settings = site / "mysite" / "settings.py"
    settings.write_text(
        settings.read_text().replace(
            'ALLOWED_HOSTS = ["*"]', 'ALLOWED_HOSTS = ["mysite.example.com"]'
        )
    )
    kiln = Kiln(site)
    port = free_port()
    kiln("init")
    review(site, port)
    _configure(site)
    toml = (site / "kiln.toml").read_text()
    assert 'host = "mysite.example.com"' in toml
    # the admin's login page: a route every startproject has, 200 to a GET
    (site / "kiln.toml").write_text(toml.replace('# path = "/health"', 'path = "/admin/login/"', 1))
    deploy(kiln)
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/admin/login/", headers={"Host": "mysite.example.com"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200
    assert get(port, "/admin/login/")[0] == 400  # any other name is still refused


BLOG_VIEWS = """
from django.http import HttpResponse
from .models import Post

def home(request):
    return HttpResponse("posts: %d" % Post.objects.count())
"""


@pytest.mark.timeout(900)
def test_a_home_page_that_reads_an_unmigrated_database_fails_the_boot_gate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new project as `startproject` writes it (SQLite in the app directory), with a
    home page that reads a model. Each instance had its own empty copy of the database
    (the release migrated another, thrown away): every TCP check passed, the deploy
    was green, and `/` answered 500 "no such table". Now the first GET / of each new
    instance fails the boot gate, with Django's own error in the log tail; given a
    shared database, the same image deploys."""
    tools = pip_tools("Django>=5,<5.2")
    app = tmp_path / "blogsite"
    app.mkdir()
    env = {**os.environ, "PYTHONPATH": str(tools)}
    django = [SYSTEM_PYTHON, "-m", "django"]
    subprocess.run([*django, "startproject", "blogsite", str(app)], check=True, env=env)
    subprocess.run([*django, "startapp", "blog"], cwd=app, check=True, env=env)
    (app / "blog" / "models.py").write_text(
        "from django.db import models\n\nclass Post(models.Model):\n"
        "    title = models.CharField(max_length=100)\n"
    )
    (app / "blog" / "views.py").write_text(BLOG_VIEWS)
    settings = app / "blogsite" / "settings.py"
    settings.write_text(
        settings.read_text().replace("INSTALLED_APPS = [", 'INSTALLED_APPS = [\n    "blog",', 1)
        + '\nimport os\nDATABASES["default"]["NAME"] = os.environ.get("DATABASE_PATH", '
        'BASE_DIR / "db.sqlite3")\n'
    )
    urls = app / "blogsite" / "urls.py"
    urls.write_text(
        urls.read_text().replace(
            "urlpatterns = [", "from blog.views import home\n\nurlpatterns = [\n    path('', home),"
        )
    )
    made = subprocess.run(
        [SYSTEM_PYTHON, "manage.py", "makemigrations", "blog"],
        cwd=app,
        env={**env, "DJANGO_SETTINGS_MODULE": "blogsite.settings"},
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    (app / "requirements.txt").write_text("Django>=5,<5.2\n")
    kiln = Kiln(app)
    port = free_port()
    init = kiln("init").stdout
    assert "SQLite" in init, init
    review(app, port)

    failed = kiln("deploy", "--json", ok=False)
    looks = [
        line
        for line in log_path(Home.resolve(os.environ["KILN_HOME"])).read_text().splitlines()
        if "first look" in line
    ]
    assert failed.exit_code == 4, failed.stdout + failed.stderr + "\n".join(looks)
    doc = json.loads(failed.stdout)
    assert doc["outcome"] == "rolled back" and doc["gate"] == "boot", doc
    assert "GET / answered 500" in doc["message"], doc["message"]
    shown = kiln("history", "--json").stdout + failed.stdout + failed.stderr
    assert "no such table: blog_post" in shown, shown

    monkeypatch.setenv("BLOG_DB", str(tmp_path / "shared.sqlite3"))
    path = app / "kiln.toml"
    path.write_text(
        path.read_text().replace("[secrets]\n", '[secrets]\nDATABASE_PATH = "env:BLOG_DB"\n', 1)
    )
    deploy(kiln)
    assert get(port, "/") == (200, b"posts: 0")
