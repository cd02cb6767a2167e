"""Release commands and one-off commands against a real agent, through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from localtest import APP, Kiln, free_port, http_get

from kiln.home import Home

CONFIG = """
[app]
name = "web"
run = "python3 app.py"
release = {release}

[env]
OUT = "{out}"

[secrets]
API_TOKEN = "env:KILN_TEST_TOKEN"

[health]
path = "/health"
interval = "100ms"
healthy_threshold = 1
grace = "5s"

[fleet]
size = 2
settle = "0s"
drain = "1s"

[provider.local]
listen = "127.0.0.1:{port}"
stop_timeout = "2s"
"""

RECORD = (
    "python3 -c \"import os; open(os.environ['OUT'], 'a').write("
    "os.environ['API_TOKEN'] + ' ' + os.environ['KILN_IMAGE'] + ' ' + os.getcwd() + '\\\\n')\""
)


def _app(root: Path, port: int, release: str, version: str = "v1") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "app.py").write_text(APP + f"# {version}\n")
    out = root.parent / "released"
    (root / "kiln.toml").write_text(CONFIG.format(release=json.dumps(release), out=out, port=port))
    return root


@pytest.fixture
def app(tmp_path: Path, local_home: Home, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KILN_TEST_TOKEN", "tok-123")
    return _app(tmp_path / "app", free_port(), RECORD)


def test_release_runs_once_in_the_new_image_with_its_secrets(app: Path) -> None:
    kiln = Kiln(app)
    out = json.loads(kiln("deploy", "--json").stdout)
    assert out["outcome"] == "succeeded"
    token, image, cwd = (app.parent / "released").read_text().split()
    assert (token, image) == ("tok-123", out["to"])
    assert not Path(cwd).exists()  # its directory is thrown away
    history = json.loads(kiln("history", "--json").stdout)
    assert history[0]["figures"]["release"]["exit_code"] == 0


def test_a_failing_release_shows_its_output_and_leaves_the_fleet_alone(app: Path) -> None:
    kiln = Kiln(app)
    first = json.loads(kiln("deploy", "--json").stdout)
    port = _listen_port(app)
    before = json.loads(kiln("status", "--json").stdout)
    _app(app, port, "echo migrating; echo 'no such table: users' >&2; exit 3", version="v2")
    failed = kiln("deploy", ok=False)
    assert failed.exit_code != 0
    assert "release command exited with status 3" in failed.stderr
    assert "no such table: users" in failed.stderr and "migrating" in failed.stderr
    after = json.loads(kiln("status", "--json").stdout)
    assert _ids(after) == _ids(before) and after["current_image"] == first["to"]
    assert http_get(port, "/")[1]["image"] == first["to"]
    assert json.loads(kiln("history", "--json").stdout)[0]["outcome"] == "failed"


def _listen_port(app: Path) -> int:
    text = (app / "kiln.toml").read_text()
    return int(text.split('listen = "127.0.0.1:')[1].split('"')[0])


def _ids(status: dict[str, object]) -> list[str]:
    instances = status["instances"]
    assert isinstance(instances, list)
    return sorted(i["id"] for i in instances if i["state"] == "healthy")


def test_release_needs_its_secrets_before_anything_starts(
    app: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KILN_TEST_TOKEN")
    failed = Kiln(app)("deploy", ok=False)
    assert "KILN_TEST_TOKEN is not set" in failed.stderr
    assert not (app.parent / "released").exists()
    assert os.environ.get("KILN_TEST_TOKEN") is None


SHOW = (
    "import os, sys; print(os.environ['API_TOKEN'], os.environ['KILN_IMAGE'], os.getcwd(), "
    "sys.stdin.read().strip(), 'VIRTUAL_ENV' in os.environ); sys.exit(7)"
)


def _kiln_run(
    app: Path, *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kiln.cli", "run", *args],
        cwd=app,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_kiln_run_sees_secrets_and_stdin_in_a_throwaway_directory(app: Path) -> None:
    first = json.loads(Kiln(app)("deploy", "--json").stdout)
    done = _kiln_run(app, "--", "python3", "-c", SHOW, stdin="typed\n")
    assert done.returncode == 7, done.stderr
    token, image, cwd, typed, venv = done.stdout.split()
    assert (token, image, typed, venv) == ("tok-123", first["to"], "typed", "False")
    assert not Path(cwd).exists()
    (app / "app.py").write_text(APP + "# v2\n")
    baked = json.loads(Kiln(app)("bake", "--json").stdout)["image"]
    other = _kiln_run(app, "--image", baked, "--", "sh", "-c", 'echo "$KILN_IMAGE"')
    assert other.returncode == 0 and other.stdout.strip() == baked


def test_kiln_run_of_a_command_not_there_is_one_line_with_127(app: Path) -> None:
    """`kiln run -- alembic upgrade head` (alembic not on the PATH) was a traceback."""
    baked = json.loads(Kiln(app)("bake", "--json").stdout)["image"]
    done = _kiln_run(app, "--image", baked, "--", "no-such-tool", "upgrade")
    assert done.returncode == 127, done.stderr
    assert "no-such-tool: not found" in done.stderr and "python3 -m NAME" in done.stderr
    assert "Traceback" not in done.stderr


def test_kiln_run_before_any_deploy_says_what_to_do(app: Path) -> None:
    done = _kiln_run(app, "--", "true")
    assert done.returncode != 0 and "has not been deployed yet" in done.stderr
    assert "kiln run --image ID" in done.stderr


def test_kiln_run_var_passes_values_on_over_the_instances(app: Path) -> None:
    """`DJANGO_SUPERUSER_PASSWORD=… kiln run -- … createsuperuser --noinput` made a user
    without a usable password: kiln run does not pass its shell's environment on, and
    said so, but only `env NAME=VALUE` in the command could pass a value."""
    baked = json.loads(Kiln(app)("bake", "--json").stdout)["image"]
    shell = {**os.environ, "FROM_SHELL": "typed in the shell", "NOT_PASSED": "x"}
    show = 'echo "$FROM_SHELL|$GIVEN|$API_TOKEN|${NOT_PASSED:-unset}"'
    done = _kiln_run(
        app, "--image", baked, "--var", "FROM_SHELL", "--var", "GIVEN=a=b",
        "--var", "API_TOKEN=over the secret", "--", "sh", "-c", show, env=shell,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "typed in the shell|a=b|over the secret|unset"

    unset = _kiln_run(app, "--image", baked, "--var", "NOT_IN_SHELL", "--", "true")
    assert unset.returncode == 2 and "NOT_IN_SHELL is not set in this shell" in unset.stderr
    assert "--var NOT_IN_SHELL=VALUE" in unset.stderr
    bad = _kiln_run(app, "--image", baked, "--var", "2X=1", "--", "true")
    assert bad.returncode == 2 and "'2X' is not a variable name" in bad.stderr
    assert "Traceback" not in unset.stderr + bad.stderr
