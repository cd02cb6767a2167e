"""The environment builds and instances run in: the system's, never kiln's own.

kiln itself runs from a virtualenv whose python, PATH entry and packages
(aiohttp, boto3, pydantic, ...) must not leak into an app: an instance that
found gunicorn in kiln's venv would work here and fail on a fresh host. So an
instance gets a fixed system PATH (``[env] PATH`` overrides it, e.g.
``"deps/bin:/usr/local/bin:/usr/bin:/bin"``), a handful of locale variables,
and nothing of Python's. Build steps keep the caller's environment (proxies,
registry tokens, pip settings) minus the virtualenv, with the same PATH, so a
step's ``python3`` is the one instances will run.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from kiln.errors import ProviderError

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PASSED = ("LANG", "LC_ALL", "TZ", "HOME", "USER", "TMPDIR")
# what makes a python (or its packages) somebody else's
PYTHON_VARS = (
    "VIRTUAL_ENV",
    "VIRTUAL_ENV_PROMPT",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PYTHONUSERBASE",
    "PYTHONEXECUTABLE",
    "__PYVENV_LAUNCHER__",
    "CONDA_PREFIX",
    "CONDA_DEFAULT_ENV",
    "PYENV_VERSION",
)


def instance_env(image_env: Mapping[str, str]) -> dict[str, str]:
    """What an instance starts from, before secrets and HOST/PORT: nothing of kiln's."""
    env = {k: os.environ[k] for k in PASSED if k in os.environ}
    env["PATH"] = SYSTEM_PATH
    env["PYTHONUNBUFFERED"] = "1"  # log lines arrive when written; the image may override
    return env | dict(image_env)


def build_env(image_env: Mapping[str, str]) -> dict[str, str]:
    """The caller's environment without its virtualenv, on the instances' PATH."""
    env = {k: v for k, v in os.environ.items() if k not in PYTHON_VARS}
    env["PATH"] = SYSTEM_PATH
    return env | dict(image_env) | {"KILN_BUILD": "1"}


def check_interpreter(python: str, path: str) -> None:
    """Refuse to start an image whose recorded interpreter this host lacks."""
    if python and shutil.which(python, path=path) is None:
        raise ProviderError(
            f"the image needs {python}, which is not on the instance PATH ({path})",
            hint="install it on this host, or set [app] python and bake again",
        )


_VERSIONED = re.compile(r"^python\d+\.\d+$")


@functools.lru_cache(maxsize=16)
def python_on(path: str, name: str = "python3") -> str | None:
    """The versioned name (``python3.11``) of ``name`` on ``path``; None if absent.

    The image records it: an instance on a host whose python3 is another
    version would load compiled dependencies built for the wrong one.
    """
    found = shutil.which(name, path=path)
    if found is None:
        return None
    real = Path(found).resolve().name
    if _VERSIONED.match(real):
        return real
    try:
        out = subprocess.run(
            [found, "-c", "import sys; print('python%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out if _VERSIONED.match(out) else None
