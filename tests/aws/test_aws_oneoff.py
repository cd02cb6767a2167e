"""The instance side of one-off jobs: the installed ``oneoff`` script, run for real.

A bake installs the app into a scratch root through the loopback SSH server;
then the very command line the release runner's user data gives cloud-init
runs here (pointed at the scratch root), resolving secrets from moto's SSM and
reporting to it, as an instance would with its role's credentials. What
cloud-init and systemd do around it (bootcmd before the unit, power-off) is
only shown by a real boot (docs/aws.md).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from awskit import REGION, TargetFactory, leftovers

from kiln.aws.ami import bake_ami
from kiln.aws.builder import Builder
from kiln.aws.install import ONEOFF_MARK
from kiln.aws.oneoff import release_user_data, result_parameter, run_oneoff, with_env
from kiln.aws.policy import ALL_PURPOSES, actions, instance_policy_document
from kiln.aws.session import Aws, aws_errors, connect, tag_map
from kiln.aws.ssh import SshTarget
from kiln.config import AwsSettings, LoadedConfig, load_config
from kiln.errors import AwsError
from kiln.home import Home

pytestmark = pytest.mark.aws

RELEASE_PY = """\
import os, sys
for n in range(60):
    print("migration", n)
print("cwd", os.path.basename(os.getcwd()), "image", os.environ["KILN_IMAGE"])
print("greeting", os.environ["GREETING"], "password", os.environ["DB_PASSWORD"])
print("aws keys seen:", "AWS_SECRET_ACCESS_KEY" in os.environ)
sys.exit(3 if os.environ["API_TOKEN"] == "fail" else 0)
"""


def _with_release(loaded: LoadedConfig, command: str) -> LoadedConfig:
    path = loaded.path
    (path.parent / "release.py").write_text(RELEASE_PY)
    text = path.read_text().replace('run = "', f'release = "{command}"\nrun = "', 1)
    path.write_text(text)
    return load_config(path)


@pytest.fixture
def installed(
    aws: Aws,
    home: Home,
    app_factory: Callable[..., LoadedConfig],
    loopback_target: TargetFactory,
    scratch_root: Path,
) -> dict[str, Any]:
    loaded = _with_release(app_factory(), "python3 release.py")
    result = bake_ami(loaded, home, aws=aws, ssh_target=loopback_target)
    tags = tag_map(aws.ec2.describe_images(ImageIds=[result.ami])["Images"][0]["Tags"])
    return {"ami": result.ami, "image": result.image, "tags": tags}


def _runcmd(root: Path, parameter: str) -> list[str]:
    """The runner's user data, parsed as cloud-init would; its command, aimed at ``root``."""
    doc = yaml.safe_load(release_user_data("acme", parameter, 60))
    assert doc["bootcmd"] == [["sh", "-c", f"mkdir -p /run/kiln && : > {ONEOFF_MARK}"]]
    assert doc["power_state"]["mode"] == "poweroff"
    (argv,) = doc["runcmd"]
    python, script, *rest = argv
    assert (python, script) == ("/usr/bin/python3", "/usr/local/lib/kiln/oneoff")
    return [python, str(root / script.lstrip("/")), "--root", str(root), *rest]


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)


def _env(endpoint: str, key: str, secret: str) -> dict[str, str]:
    return {
        "PATH": os.environ["PATH"],
        "AWS_ACCESS_KEY_ID": key,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_REGION": REGION,
        "KILN_SSM_ENDPOINT": endpoint + "/",
        "KILN_FETCH_ATTEMPTS": "2",
    }


def test_release_runs_once_with_env_and_secrets_and_reports_to_ssm(
    aws: Aws, aws_env: str, installed: dict[str, Any], scratch_root: Path
) -> None:
    assert installed["tags"]["kiln:release"] == "python3 release.py"
    assert installed["tags"]["kiln:runtime"] == "4"
    unit = (scratch_root / "etc/systemd/system/kiln-acme.service").read_text()
    assert f"ConditionPathExists=!{ONEOFF_MARK}" in unit.split("[Service]")[0]
    ssm = aws.client("ssm")
    ssm.put_parameter(Name="/acme/DB_PASSWORD", Value="s3cret", Type="SecureString")
    ssm.put_parameter(Name="/shared/api-token", Value="tok", Type="String")
    env = _env(aws_env, "AKIAADMINTESTING0000", "admin-secret")

    parameter = result_parameter("acme", "kr-000000000001")
    done = _run(_runcmd(scratch_root, parameter), env)
    assert done.returncode == 0, done.stderr
    assert "migration 59" in done.stdout  # the console shows all of it
    result = json.loads(ssm.get_parameter(Name=parameter)["Parameter"]["Value"])
    assert result["command"] == "python3 release.py" and result["exit_code"] == 0
    lines = result["output"].splitlines()
    assert len(lines) == 40 and lines[0] == "migration 23"  # the last 40 lines
    assert f"image {installed['image']}" in result["output"]
    assert 'greeting say "hi" password s3cret' in result["output"]
    assert "aws keys seen: False" in result["output"]  # the runtime's own keys stay its own
    assert 0 <= result["seconds"] < 30

    ssm.put_parameter(Name="/shared/api-token", Value="fail", Type="String", Overwrite=True)
    failed = result_parameter("acme", "kr-000000000002")
    assert _run(_runcmd(scratch_root, failed), env).returncode == 0
    result = json.loads(ssm.get_parameter(Name=failed)["Parameter"]["Value"])
    assert result["exit_code"] == 3 and "migration 59" in result["output"]

    ssm.delete_parameter(Name="/acme/DB_PASSWORD")  # a secret it needs is missing
    missing = result_parameter("acme", "kr-000000000003")
    assert _run(_runcmd(scratch_root, missing), env).returncode == 0
    result = json.loads(ssm.get_parameter(Name=missing)["Parameter"]["Value"])
    assert result["exit_code"] == 1
    assert "SSM parameters not found: /acme/DB_PASSWORD" in result["output"]


def test_exec_replaces_itself_with_the_command_and_its_status(
    aws: Aws, aws_env: str, installed: dict[str, Any], scratch_root: Path
) -> None:
    ssm = aws.client("ssm")
    ssm.put_parameter(Name="/acme/DB_PASSWORD", Value="s3cret", Type="SecureString")
    ssm.put_parameter(Name="/shared/api-token", Value="tok", Type="String")
    script = str(scratch_root / "usr/local/lib/kiln/oneoff")
    shell = 'echo "$DB_PASSWORD $GREETING $(basename "$PWD")"; read x; echo "$x"; exit 7'
    argv = ["sh", "-c", shell]
    done = subprocess.run(
        ["/usr/bin/python3", script, "--root", str(scratch_root), "exec", "acme", "--", *argv],
        env=_env(aws_env, "AKIAADMINTESTING0000", "admin-secret"),
        input="typed\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 7, done.stderr
    digest = (scratch_root / "opt/kiln/acme/current").resolve().name  # the unit's directory
    assert done.stdout.splitlines() == [f's3cret say "hi" {digest}', "typed"]


def test_the_instance_policy_is_enough_and_no_more(
    enforced: Aws,
    enforced_url: str,
    aws: Aws,
    installed: dict[str, Any],
    scratch_root: Path,
) -> None:
    """The instance role's actions, as an IAM user's on an IAM-enforcing moto.

    moto evaluates no SSM resource ARN (it checks every SSM call against "*"),
    so the user holds the statements unscoped; their scope is checked as text.
    """
    for name, value in (("/acme/DB_PASSWORD", "s3cret"), ("/shared/api-token", "tok")):
        enforced.client("ssm").put_parameter(
            Name=name, Value=value, Type="SecureString", Overwrite=True
        )
    account = enforced.sts.get_caller_identity()["Account"]
    document = instance_policy_document(
        app="acme",
        parameters=["/shared/api-token", "/acme/DB_PASSWORD"],
        region=REGION,
        account=account,
    )
    arn = f"arn:aws:ssm:{REGION}:{account}:parameter"
    assert [(s["Action"], s["Resource"]) for s in document["Statement"]] == [
        ("ssm:GetParameters", [f"{arn}/acme/DB_PASSWORD", f"{arn}/shared/api-token"]),
        ("ssm:PutParameter", f"{arn}/kiln/oneoff/acme/*"),
    ]
    unscoped = {**document, "Statement": [{**s, "Resource": "*"} for s in document["Statement"]]}
    user = f"acme-instance-{os.getpid()}"
    enforced.iam.create_user(UserName=user)
    enforced.iam.put_user_policy(
        UserName=user, PolicyName="instance", PolicyDocument=json.dumps(unscoped)
    )
    key = enforced.iam.create_access_key(UserName=user)["AccessKey"]
    env = _env(enforced_url, key["AccessKeyId"], key["SecretAccessKey"])

    parameter = result_parameter("acme", "kr-00000000000a")
    done = _run(_runcmd(scratch_root, parameter), env)
    assert done.returncode == 0, done.stderr
    value = enforced.client("ssm").get_parameter(Name=parameter)["Parameter"]["Value"]
    assert json.loads(value)["exit_code"] == 0 and "password s3cret" in value

    role = connect(
        AwsSettings(region=REGION, endpoint_url=enforced_url),
        access_key_id=key["AccessKeyId"],
        secret_access_key=key["SecretAccessKey"],
    )
    with pytest.raises(AwsError, match="AccessDenied"), aws_errors("deleting a result"):
        role.client("ssm").delete_parameter(Name=parameter)  # that is the deployer's


def test_kiln_run_on_a_fresh_instance_sees_secrets_and_returns_the_status(
    aws: Aws,
    aws_env: str,
    installed: dict[str, Any],
    loopback_target: TargetFactory,
    ssh_server: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through the bake's own machinery: key pair, SSH-only group, SSH to the instance.

    The loopback SSH server plays the instance: the command kiln sends runs
    here, through the installed ``oneoff exec``, secrets from moto's SSM.
    """
    ssm = aws.client("ssm")
    ssm.put_parameter(Name="/acme/DB_PASSWORD", Value="s3cret", Type="SecureString")
    ssm.put_parameter(Name="/shared/api-token", Value="tok", Type="String")
    monkeypatch.setenv("KILN_SSM_ENDPOINT", aws_env + "/")  # the "instance" reads it
    kiln = connect(AwsSettings())  # a fresh session: every call it makes is seen
    calls = _record(kiln)
    (tmp_path / "in").write_bytes(b"typed\n")
    settings = AwsSettings(ssh_cidr="127.0.0.1/32", ssh_timeout=20, instance_type="t3.micro")
    notes: list[str] = []
    shell = 'echo "$DB_PASSWORD $GREETING $GIVEN"; read x; echo "got $x"; echo oops >&2; exit 7'
    given = {"GIVEN": "it's given", "DB_PASSWORD": "over"}  # kiln run --var: over the secrets
    with (
        (tmp_path / "in").open("rb") as stdin,
        (tmp_path / "out").open("wb") as stdout,
        (tmp_path / "err").open("wb") as stderr,
    ):
        code = run_oneoff(
            kiln, settings, "acme", "acme", installed["ami"], with_env(["sh", "-c", shell], given),
            note=notes.append, ssh_target=loopback_target, streams=(stdin, stdout, stderr),
        )  # fmt: skip

    assert code == 7
    assert (tmp_path / "out").read_bytes() == b'over say "hi" it\'s given\ngot typed\n'
    assert (tmp_path / "err").read_bytes() == b"oops\n"
    (command,) = [c for c in ssh_server.commands if " exec acme -- " in c]
    assert command.startswith("/usr/bin/python3 ") and "lib/kiln/oneoff --root" in command
    # the instance: the AMI, the fleet's launch data plus the temporary SSH group and
    # key, the app's unit held back; then everything temporary is gone
    found = aws.ec2.describe_instances(
        Filters=[{"Name": "tag:Name", "Values": ["kiln-run-acme-*"]}]
    )["Reservations"]
    (instance,) = [i for r in found for i in r["Instances"]]
    assert instance["ImageId"] == installed["ami"] and instance["State"]["Name"] == "terminated"
    assert instance["KeyName"].startswith("kiln-kx-")
    raw = aws.ec2.describe_instance_attribute(
        InstanceId=instance["InstanceId"], Attribute="userData"
    )["UserData"]["Value"]
    assert ONEOFF_MARK in yaml.safe_load(base64.b64decode(raw))["bootcmd"][0][-1]
    assert leftovers(aws) == {}
    assert calls <= actions(ALL_PURPOSES), sorted(calls - actions(ALL_PURPOSES))


def test_kiln_run_cleans_up_when_ssh_never_answers(
    aws: Aws, installed: dict[str, Any], tmp_path: Path
) -> None:
    def nobody_home(instance: Builder) -> SshTarget:
        with socket.socket() as closed:  # a port nothing listens on
            closed.bind(("127.0.0.1", 0))
            port = closed.getsockname()[1]
        return SshTarget(host="127.0.0.1", port=port, username="admin", key=instance.key)

    settings = AwsSettings(ssh_cidr="127.0.0.1/32", ssh_timeout=1)
    with pytest.raises(AwsError, match="did not accept SSH"):
        run_oneoff(
            aws, settings, "acme", "acme", installed["ami"], ["true"],
            note=lambda _m: None, ssh_target=nobody_home,
        )  # fmt: skip
    assert leftovers(aws) == {}  # instance terminated, group and key pair deleted


def _record(aws: Aws) -> set[str]:
    calls: set[str] = set()

    def seen(model: Any, **_kwargs: Any) -> None:
        calls.add(f"{model.service_model.signing_name}:{model.name}")

    aws.session.events.register("before-call", seen)
    return calls
