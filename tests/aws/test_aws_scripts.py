"""The shell scripts kiln ships: lint-clean, and build-ami.sh fails clearly."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from awskit import TargetFactory

import kiln.aws
from kiln.aws.ami import bake_ami, parse_packages
from kiln.aws.install import FILES
from kiln.config import LoadedConfig
from kiln.home import Home

pytestmark = pytest.mark.aws
REPO = Path(__file__).resolve().parents[2]
BUILD_AMI = REPO / "examples/acebook/scripts/build-ami.sh"
INSTALL = Path(kiln.aws.__file__).with_name("install.sh")


def test_scripts_pass_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).with_name("shellcheck"))
    done = subprocess.run(
        [shellcheck, "--severity=style", str(BUILD_AMI), str(INSTALL)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _run(app: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ["PATH"], "HOME": os.environ["HOME"]}
    return subprocess.run(
        [str(app / "scripts/build-ami.sh")],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def app_copy(tmp_path: Path) -> Path:
    app = tmp_path / "app"
    (app / "scripts").mkdir(parents=True)
    shutil.copy2(BUILD_AMI, app / "scripts/build-ami.sh")
    (app / "kiln.toml").write_text('[app]\nname = "acme"\nrun = "python3 app.py"\n')
    return app


def test_build_ami_names_the_missing_keys(app_copy: Path) -> None:
    done = _run(app_copy, AWS_REGION="eu-west-1")
    assert done.returncode == 2
    assert "AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY not set" in done.stderr
    assert done.stdout == ""
    only_secret = _run(app_copy, AWS_REGION="eu-west-1", AWS_ACCESS_KEY_ID="AKIAEXAMPLE000000000")
    assert "AWS_SECRET_ACCESS_KEY not set" in only_secret.stderr
    assert "AKIAEXAMPLE" not in only_secret.stderr


def test_build_ami_needs_a_region(app_copy: Path) -> None:
    done = _run(app_copy, AWS_ACCESS_KEY_ID="AKIAEXAMPLE000000000", AWS_SECRET_ACCESS_KEY="s")
    assert done.returncode == 2 and "no AWS region" in done.stderr


def test_build_ami_runs_kiln_bake_for_aws(app_copy: Path, tmp_path: Path) -> None:
    """What it runs, from where, with which environment (a recording stand-in for kiln)."""
    fake = tmp_path / "bin/kiln"
    fake.parent.mkdir()
    fake.write_text(
        '#!/bin/sh\necho "{\\"cwd\\": \\"$(pwd)\\", \\"args\\": \\"$*\\", '
        '\\"key\\": \\"$AWS_ACCESS_KEY_ID\\"}"\n'
    )
    fake.chmod(0o755)
    done = _run(
        app_copy,
        AWS_ACCESS_KEY_ID="AKIAEXAMPLE000000000",
        AWS_SECRET_ACCESS_KEY="s",
        AWS_REGION="eu-west-1",
        KILN=str(fake),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        f'{{"cwd": "{app_copy}", "args": "bake --provider aws --json", '
        '"key": "AKIAEXAMPLE000000000"}'
    )


def _kiln_bakes_for_aws() -> bool:
    kiln_bin = Path(sys.executable).with_name("kiln")
    out = subprocess.run([str(kiln_bin), "bake", "--help"], capture_output=True, text=True)
    return "--provider" in out.stdout


@pytest.mark.skipif(not _kiln_bakes_for_aws(), reason="kiln bake has no --provider option yet")
def test_build_ami_end_to_end_reuses_the_ami_of_an_unchanged_app(
    aws_env: str,
    app_factory: Callable[..., LoadedConfig],
    home: Home,
    loopback_target: TargetFactory,
) -> None:
    """The real kiln, against moto: the AMI baked earlier for this digest is reused."""
    loaded = app_factory()
    (loaded.root / "scripts").mkdir()
    shutil.copy2(BUILD_AMI, loaded.root / "scripts/build-ami.sh")
    first = bake_ami(loaded, home, ssh_target=loopback_target)
    done = _run(
        loaded.root,
        AWS_ACCESS_KEY_ID=os.environ["AWS_ACCESS_KEY_ID"],
        AWS_SECRET_ACCESS_KEY=os.environ["AWS_SECRET_ACCESS_KEY"],
        AWS_REGION=os.environ["AWS_REGION"],
        AWS_ENDPOINT_URL=aws_env,
        KILN_HOME=str(home.root),
        KILN=str(Path(sys.executable).with_name("kiln")),
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert first.ami in json.dumps(result)
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in done.stdout + done.stderr


def _staging(tmp_path: Path) -> tuple[Path, str]:
    """What kiln uploads to a builder, minimal: an image.tar and the files beside it."""
    staging = tmp_path / "staging"
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree/app.py").write_text("print('hi')\n")
    staging.mkdir()
    subprocess.run(["tar", "-cf", str(staging / "image.tar"), "-C", str(tmp_path / "tree"), "."],
                   check=True)  # fmt: skip
    for name in (*FILES, "kiln-acme.service"):  # their content is not what is tested
        (staging / name).write_text("#\n")
    sha = hashlib.sha256((staging / "image.tar").read_bytes()).hexdigest()
    return staging, sha


@pytest.mark.parametrize("upgrade", [True, False])
def test_install_runs_the_security_upgrade_only_when_asked(tmp_path: Path, upgrade: bool) -> None:
    """security_upgrades: apt-get update, then a non-interactive upgrade keeping config
    files, before anything is installed (a recording stand-in for apt-get); the package
    list comes last, from this host's real dpkg-query."""
    staging, sha = _staging(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "apt-calls"
    (bin_dir / "apt-get").write_text(f'#!/bin/sh\necho "$DEBIAN_FRONTEND $*" >> {calls}\n')
    (bin_dir / "apt-get").chmod(0o755)
    root = tmp_path / "root"
    root.mkdir()
    args = [str(root), "acme", "ab" * 32, str(staging), sha] + (["upgrade"] if upgrade else [])
    done = subprocess.run(
        ["/bin/sh", str(INSTALL), *args],
        env={"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": os.environ["HOME"]},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    if upgrade:
        assert calls.read_text().splitlines() == [
            "noninteractive -q update",
            "noninteractive -q -y -o Dpkg::Options::=--force-confdef "
            "-o Dpkg::Options::=--force-confold upgrade",
        ]
        assert "security upgrade: apt-get upgrade" in done.stdout
    else:
        assert not calls.exists()
    assert (root / "opt/kiln/acme" / ("ab" * 32) / "app.py").exists()
    packages = parse_packages(done.stdout)
    assert ("dpkg", subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "dpkg"],
            capture_output=True, text=True).stdout) in packages  # fmt: skip
