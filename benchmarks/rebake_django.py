"""Code-only re-bake of a Django app with ~40 dependencies, against its first bake.

The app's build is what `kiln init` writes for a Django project: a cached
`pip install -r requirements.txt --target deps` step (inputs requirements.txt,
outputs deps) and a cached collectstatic (inputs requirements, settings and
static dirs, outputs STATIC_ROOT). A one-line code change must re-bake in a
fraction of the first bake (goal: <= 10 %), because pip does not run again.
Needs PyPI (or a warm pip cache). Saves benchmarks/results/rebake_django.json.

    .venv/bin/python benchmarks/rebake_django.py
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from benchutil import machine, save_and_print

from kiln.config import load_config
from kiln.home import Home
from kiln.image.bake import bake
from kiln.image.store import Store

REQUIREMENTS = """\
Django>=5.0,<5.2
djangorestframework
django-filter
django-cors-headers
django-environ
whitenoise
gunicorn
celery
redis
requests
psycopg2-binary
Pillow
PyYAML
Markdown
Jinja2
python-dateutil
sentry-sdk
"""

SETTINGS = """\
from pathlib import Path
BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "bench"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["django.contrib.admin", "django.contrib.auth", "django.contrib.contenttypes",
    "django.contrib.sessions", "django.contrib.messages", "django.contrib.staticfiles",
    "rest_framework"]
ROOT_URLCONF = "site1.urls"
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "/tmp/bench.sqlite3"}}
"""

MANAGE = """\
import os, sys
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "site1.settings")
from django.core.management import execute_from_command_line
execute_from_command_line(sys.argv)
"""


def write_app(root: Path) -> None:
    (root / "site1").mkdir(parents=True)
    (root / "manage.py").write_text(MANAGE)
    (root / "requirements.txt").write_text(REQUIREMENTS)
    (root / "site1" / "__init__.py").write_text("")
    (root / "site1" / "settings.py").write_text(SETTINGS)
    (root / "site1" / "urls.py").write_text("urlpatterns = []\n")
    (root / "site1" / "wsgi.py").write_text(
        "from django.core.wsgi import get_wsgi_application\napplication = get_wsgi_application()\n"
    )
    (root / "kiln.toml").write_text(
        '[app]\nname = "bench"\n'
        'run = "python3 -m gunicorn --bind $HOST:$PORT site1.wsgi:application"\n'
        "build = [\n"
        '  { run = "python3 -m pip install -q -r requirements.txt --target deps", '
        'inputs = ["requirements.txt"], outputs = ["deps"] },\n'
        '  { run = "python3 manage.py collectstatic --noinput", inputs = ["requirements.txt", '
        '"site1/settings.py", "static", "*/static"], outputs = ["staticfiles"] },\n'
        "]\n"
        '[env]\nPYTHONPATH = "deps"\n'
    )


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="kiln-bench-django-"))
    try:
        app = work / "app"
        write_app(app)
        home = Home(work / "home").ensure()
        start = time.perf_counter()
        first = bake(load_config(app / "kiln.toml"), home)
        first_s = time.perf_counter() - start
        with (app / "site1" / "urls.py").open("a") as f:
            f.write("# a code change\n")
        start = time.perf_counter()
        second = bake(load_config(app / "kiln.toml"), home)
        rebake_s = time.perf_counter() - start
        assert not second.reused and second.image != first.image
        dists = {
            f.path.split("/")[1]
            for f in Store(home).get(first.image).manifest.files
            if f.path.startswith("deps/") and f.path.endswith(".dist-info/METADATA")
        }
        figures = {
            "files": first.files,
            "bytes": first.bytes,
            "distributions": len(dists),
            "first_bake_s": round(first_s, 2),
            "code_only_rebake_s": round(rebake_s, 2),
            "rebake_vs_first": round(rebake_s / first_s, 4),
            "goals": {"rebake_vs_first<=0.10": rebake_s / first_s <= 0.10},
            "pip_cache": os.environ.get("PIP_CACHE_DIR", "default (warm after a first run)"),
            **machine(),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    save_and_print("rebake_django", figures)


if __name__ == "__main__":
    main()
