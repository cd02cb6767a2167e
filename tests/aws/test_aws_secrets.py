"""fetch-secrets, the boot-time resolver shipped on every AMI, against real HTTP.

It reads SSM Parameter Store (moto) with SigV4 it signs itself, taking the
instance role's credentials and region from an IMDSv2 endpoint (a small
local server here), and writes a root-only environment file.
"""

from __future__ import annotations

import ast
import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from awskit import REGION

from kiln.aws import fetch_secrets
from kiln.aws.session import Aws

pytestmark = pytest.mark.aws
SCRIPT = Path(fetch_secrets.__file__)


class Imds(BaseHTTPRequestHandler):
    """IMDSv2: a token first, then metadata only with that token."""

    token = "imds-token-123"
    failures_left = 0  # answer 503 this many times first: IMDS not up yet at boot
    paths = {
        "/latest/meta-data/placement/region": REGION,
        "/latest/meta-data/iam/security-credentials/": "acme-role",
        "/latest/meta-data/iam/security-credentials/acme-role": json.dumps(
            {"AccessKeyId": "ASIAROLEKEY000000000", "SecretAccessKey": "role", "Token": "t"}
        ),
    }

    def do_PUT(self) -> None:
        if self._unavailable():
            return
        ok = self.path == "/latest/api/token" and self.headers.get(
            "X-aws-ec2-metadata-token-ttl-seconds"
        )
        self._answer(200 if ok else 400, self.token if ok else "")

    def do_GET(self) -> None:
        if self._unavailable():
            return
        if self.headers.get("X-aws-ec2-metadata-token") != self.token:
            self._answer(401, "")
            return
        body = self.paths.get(self.path)
        self._answer(200 if body is not None else 404, body or "")

    def _unavailable(self) -> bool:
        if Imds.failures_left <= 0:
            return False
        Imds.failures_left -= 1
        self._answer(503, "")
        return True

    def _answer(self, status: int, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def imds() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Imds)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _run(spec: dict[str, str], out: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    out.parent.mkdir(parents=True, exist_ok=True)
    spec_path = out.parent / f"{out.stem}-spec.json"
    spec_path.write_text(json.dumps(spec))
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(spec_path), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_secrets_resolved_at_boot_with_the_instance_role(
    aws: Aws, aws_env: str, imds: str, tmp_path: Path
) -> None:
    ssm = aws.client("ssm")
    ssm.put_parameter(Name="/acme/DB_PASSWORD", Value='p"ss\\word', Type="SecureString")
    ssm.put_parameter(Name="/shared/api-token", Value="tok-123", Type="String")
    (tmp_path / "license").write_text("LIC-1\n")
    env = {
        "PATH": os.environ["PATH"],
        "KILN_IMDS_ENDPOINT": imds,
        "KILN_SSM_ENDPOINT": aws_env + "/",
    }
    out = tmp_path / "run" / "secrets.env"
    spec = {
        "DB_PASSWORD": "ssm:/acme/DB_PASSWORD",
        "API_TOKEN": "ssm:/shared/api-token",
        "LICENSE": f"file:{tmp_path / 'license'}",
    }
    done = _run(spec, out, env)
    assert done.returncode == 0, done.stderr
    assert "3 secrets resolved" in done.stdout and "tok-123" not in done.stdout
    assert out.read_text() == (
        'API_TOKEN="tok-123"\nDB_PASSWORD="p\\"ss\\\\word"\nLICENSE="LIC-1"\n'
    )
    assert stat.S_IMODE(out.stat().st_mode) == 0o600

    missing = _run({"X": "ssm:/acme/missing"}, tmp_path / "other.env", env)
    assert missing.returncode != 0 and "/acme/missing" in missing.stderr


def test_signature_is_accepted_by_an_iam_enforcing_endpoint(
    enforced: Aws, enforced_url: str, admin_keys: tuple[str, str], tmp_path: Path
) -> None:
    enforced.client("ssm").put_parameter(Name="/acme/signed", Value="yes", Type="SecureString")
    env = {
        "PATH": os.environ["PATH"],
        "AWS_ACCESS_KEY_ID": admin_keys[0],
        "AWS_SECRET_ACCESS_KEY": admin_keys[1],
        "AWS_REGION": REGION,
        "KILN_SSM_ENDPOINT": enforced_url + "/",
    }
    good = _run({"SIGNED": "ssm:/acme/signed"}, tmp_path / "good.env", env)
    assert good.returncode == 0, good.stderr
    assert (tmp_path / "good.env").read_text() == 'SIGNED="yes"\n'
    forged = _run(
        {"SIGNED": "ssm:/acme/signed"},
        tmp_path / "forged.env",
        {**env, "AWS_SECRET_ACCESS_KEY": "wrong"},
    )
    assert forged.returncode != 0 and not (tmp_path / "forged.env").exists()
    assert "SSM refused GetParameters (403)" in forged.stderr
    assert "Traceback" not in forged.stderr


def test_metadata_not_up_yet_is_retried_with_backoff(
    aws: Aws, aws_env: str, imds: str, tmp_path: Path
) -> None:
    aws.client("ssm").put_parameter(Name="/acme/late", Value="ok", Type="String")
    env = {
        "PATH": os.environ["PATH"],
        "KILN_IMDS_ENDPOINT": imds,
        "KILN_SSM_ENDPOINT": aws_env + "/",
        "KILN_FETCH_DELAY": "0.05",
    }
    Imds.failures_left = 4
    try:
        done = _run({"LATE": "ssm:/acme/late"}, tmp_path / "late.env", env)
    finally:
        Imds.failures_left = 0
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "late.env").read_text() == 'LATE="ok"\n'
    assert done.stderr.count("retrying in") == 4
    assert "0.05s" in done.stderr and "0.4s" in done.stderr  # doubling

    Imds.failures_left = 100  # never comes up: a clear failure after the last attempt
    try:
        gone = _run(
            {"LATE": "ssm:/acme/late"}, tmp_path / "gone.env", {**env, "KILN_FETCH_ATTEMPTS": "3"}
        )
    finally:
        Imds.failures_left = 0
    assert gone.returncode != 0 and gone.stderr.count("retrying in") == 2


@pytest.mark.parametrize("script", [SCRIPT, SCRIPT.with_name("oneoff_runtime.py")])
def test_runs_on_the_python_of_every_mainstream_base_image(script: Path) -> None:
    """Python 3.8+ (AL2023 3.9, Ubuntu 22.04 3.10): no 3.9+ syntax, module or member.

    vermin knows which Python added each stdlib member (datetime.UTC is 3.11);
    annotations are never evaluated (``from __future__ import annotations``), so
    builtin generics there are fine, which is why vermin is not told to judge them.
    """
    source = script.read_text(encoding="utf-8")
    assert "from __future__ import annotations" in source
    ast.parse(source, feature_version=(3, 8))
    vermin = Path(sys.executable).with_name("vermin")
    checked = subprocess.run(
        [str(vermin), "--no-tips", "--target=3.8-", "--violations", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
