"""A bake through Systems Manager: moto for the API, a local double running the commands.

moto records ``SendCommand`` but runs nothing, so the commands go through
:class:`LocalSsm`, which forwards every call to moto (the API's shape and,
on the enforcing server, its IAM action are AWS's) and runs the script here,
installing into a scratch root as the SSH tests' loopback server does.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from awskit import SOURCE_AMI, leftovers, write_app
from localssm import LocalSsm
from policywalk import lint, reachable_destruction

from kiln.aws import ssm as ssm_module
from kiln.aws.ami import bake_ami
from kiln.aws.builder import Builder
from kiln.aws.iam import create_deploy_user
from kiln.aws.policy import (
    PURPOSES,
    SSH_ONLY_ACTIONS,
    SSM_PURPOSES,
    actions,
    builder_role_documents,
    enforceable_documents,
    policy_document,
)
from kiln.aws.session import Aws, connect
from kiln.aws.ssm import SsmTransport
from kiln.aws.transport import Upload, provision
from kiln.config import AwsSettings, LoadedConfig
from kiln.errors import AwsError, ConfigError
from kiln.home import Home
from kiln.image.store import Store

pytestmark = pytest.mark.aws

SSM = 'bake_via = "ssm"\nbuilder_instance_profile = "kiln-builder"\n'


def instance_profile(aws: Aws, name: str = "kiln-builder") -> None:
    """The builder's role and profile, made from `kiln aws policy --builder`'s documents."""
    documents = builder_role_documents()
    aws.iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(documents["trust"]))
    aws.iam.put_role_policy(
        RoleName=name, PolicyName="kiln-ssm-agent",
        PolicyDocument=json.dumps(documents["permissions"]),
    )  # fmt: skip
    aws.iam.create_instance_profile(InstanceProfileName=name)
    aws.iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)


def through(client: LocalSsm, root: Path) -> Callable[[Builder], SsmTransport]:
    def transport(builder: Builder) -> SsmTransport:
        assert builder.key is None  # no key pair exists for an SSM bake
        return SsmTransport(
            client, builder.instance_id, root=str(root), poll=0.0, sleep=lambda _s: None
        )

    return transport


def record(aws: Aws) -> list[tuple[str, dict[str, Any]]]:
    calls: list[tuple[str, dict[str, Any]]] = []

    def seen(model: Any, params: Any, **_kwargs: Any) -> None:
        calls.append((f"{model.service_model.signing_name}:{model.name}", params))

    aws.session.events.register("provide-client-params", seen)
    for client in aws._clients.values():  # those made already copied the session's events
        client.meta.events.register("provide-client-params", seen)
    return calls


def test_an_ssm_bake_installs_through_run_command_with_no_key_and_no_inbound_rule(
    aws: Aws,
    home: Home,
    app_factory: Callable[..., LoadedConfig],
    scratch_root: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    instance_profile(aws)
    monkeypatch.setattr(ssm_module, "CHUNK", 700)  # the image's tar in many commands
    calls = record(aws)
    double = LocalSsm(forward=aws.client("ssm"), unregistered=2, pending_polls=2)
    steps: list[str] = []
    result = bake_ami(
        app_factory(extra=SSM), home, aws=aws, transport=through(double, scratch_root),
        progress=steps.append,
    )  # fmt: skip

    # installed for real, through Run Command
    record_ = Store(home).get(result.image)
    dest = scratch_root / "opt/kiln/acme" / record_.digest.removeprefix("sha256:")
    assert (dest / "app.py").read_text() == "print('acme v1')\n"
    assert (scratch_root / "etc/systemd/system/kiln-acme.service").is_file()
    assert not list((scratch_root / "tmp").glob("kiln-*"))  # staging cleared
    assert any("register with Systems Manager" in s for s in steps)  # waited for the agent
    assert any("Systems Manager up" in s for s in steps)
    chunks = [s for s in double.scripts if "base64 -d >>" in s]
    assert len(chunks) > 3, "the tar travelled in several commands"

    # the launch: an instance profile, no key pair; its group admits nothing
    names = [name for name, _ in calls]
    assert "ec2:ImportKeyPair" not in names and "ec2:AuthorizeSecurityGroupIngress" not in names
    (launch,) = [p for name, p in calls if name == "ec2:RunInstances"]
    assert launch["IamInstanceProfile"] == {"Name": "kiln-builder"} and "KeyName" not in launch
    (group,) = [p for name, p in calls if name == "ec2:CreateSecurityGroup"]
    assert "no inbound rules" in group["Description"]

    # moto saw every command, shaped as Run Command wants it
    sent = [p for name, p in calls if name == "ssm:SendCommand"]
    assert len(sent) == len(double.scripts) and double.unregistered == 0  # 2 were refused
    for request in sent:
        assert request["DocumentName"] == "AWS-RunShellScript"
        assert request["InstanceIds"] == [launch_id(aws, result.build_id)]
        assert list(request["Parameters"]) == ["commands", "executionTimeout"]
    listed = aws.client("ssm").list_commands()["Commands"]
    assert len(listed) == len(double.scripts)
    assert leftovers(aws) == {}


def launch_id(aws: Aws, build_id: str | None) -> str:
    found = aws.ec2.describe_instances(
        Filters=[{"Name": "tag:kiln:build-id", "Values": [build_id or "?"]}]
    )["Reservations"]
    return str(found[0]["Instances"][0]["InstanceId"])


def test_a_builder_that_never_registers_fails_the_bake_with_the_reason(
    aws: Aws, home: Home, app_factory: Callable[..., LoadedConfig], scratch_root: Path
) -> None:
    instance_profile(aws)
    loaded = app_factory(extra=SSM, ssh_timeout="1s")
    never = LocalSsm(unregistered=10**9)

    def slow(builder: Builder) -> SsmTransport:
        return SsmTransport(never, builder.instance_id, root=str(scratch_root), poll=0.0)

    with pytest.raises(AwsError, match=r"did not answer Systems Manager within 1s") as caught:
        bake_ami(loaded, home, aws=aws, transport=slow)
    assert caught.value.hint and "builder_instance_profile" in caught.value.hint
    assert leftovers(aws) == {}


@pytest.mark.parametrize(
    ("damage", "words"),
    [("lose the third chunk", "upload of image.tar failed: gzip: "), ("alter the file", "damaged")],
)
def test_an_upload_damaged_on_the_way_fails_the_bake(
    tmp_path: Path, damage: str, words: str
) -> None:
    """gzip's own check catches a lost piece; the sha256 check whatever gzip cannot."""
    source = tmp_path / "image.tar"
    source.write_bytes(random.Random(7).randbytes(100_000))  # gzip keeps it: five chunks
    seen: list[str] = []

    def tamper(script: str) -> str | None:
        if "base64 -d >>" in script:
            seen.append(script)
            if damage == "lose the third chunk" and len(seen) == 3:
                return None
        if damage == "alter the file" and "gzip -dc" in script:
            return script + f" && printf x >> {upload.dest}"
        return script

    root = tmp_path / "root"
    transport = SsmTransport(LocalSsm(tamper=tamper), "i-0123456789abcdef0", root=str(root))
    upload = Upload(source, str(root / "tmp/kiln-x/image.tar"))
    with pytest.raises(AwsError, match=words):
        provision(transport, [upload], "true", timeout=5, note=lambda _m: None)
    assert len(seen) >= 3


def test_a_failing_installer_says_its_exit_status_and_last_line(tmp_path: Path) -> None:
    source = tmp_path / "f"
    source.write_bytes(b"x")
    transport = SsmTransport(LocalSsm(), "i-0123456789abcdef0", root=str(tmp_path), poll=0.0)
    upload = Upload(source, str(tmp_path / "staging/f"))
    command = "echo starting; echo 'no space left on device' >&2; exit 3"
    with pytest.raises(AwsError, match=r"failed \(exit 3\): no space left on device"):
        provision(transport, [upload], command, timeout=5, note=lambda _m: None)
    assert (tmp_path / "staging/f").read_bytes() == b"x"


def test_ssm_needs_an_instance_profile(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs builder_instance_profile"):
        write_app(tmp_path / "app", extra='bake_via = "ssm"\n')


def test_an_ssm_bake_calls_only_what_its_policy_allows(
    enforced: Aws, tmp_path: Path, home: Home, scratch_root: Path
) -> None:
    """IAM-enforcing moto, the deploy user's keys: the SSM bake's calls are in the bake
    policy, every Run Command action is used, and none of SSH's."""
    instance_profile(enforced, "kiln-builder-ci")
    source = enforced.ec2.run_instances(ImageId=SOURCE_AMI, MinCount=1, MaxCount=1)
    source_id = source["Instances"][0]["InstanceId"]
    base = enforced.ec2.create_image(InstanceId=source_id, Name=f"debian-12-{time.time_ns()}")
    user = create_deploy_user(
        enforced, "ci-ssm", parts=["bake"], documents=enforceable_documents(["bake"])
    )
    assert user.access_key_id and user.secret_access_key
    deploy = connect(
        AwsSettings(), access_key_id=user.access_key_id, secret_access_key=user.secret_access_key
    )
    recorded = record(deploy)
    extra = f'base_image = "{base["ImageId"]}"\nbake_via = "ssm"\n'
    extra += 'builder_instance_profile = "kiln-builder-ci"\n'
    double = LocalSsm(forward=deploy.client("ssm"))
    result = bake_ami(
        write_app(tmp_path / "app", extra=extra), home, aws=deploy,
        transport=through(double, scratch_root),
    )  # fmt: skip
    assert result.ami and double.scripts
    calls = {name for name, _ in recorded}
    assert calls <= actions((*PURPOSES, *SSM_PURPOSES))
    assert actions(SSM_PURPOSES) <= calls
    assert not calls & SSH_ONLY_ACTIONS
    assert leftovers(enforced) == {}
    # this server is shared: the other policy tests count acme's AMIs
    enforced.ec2.deregister_image(ImageId=result.ami)
    for snapshot in result.snapshots:
        enforced.ec2.delete_snapshot(SnapshotId=snapshot)


def test_the_ssm_rendering_scopes_run_command_to_kiln_builders() -> None:
    plain = policy_document(region="eu-west-1", account="123456789012", purposes=PURPOSES)
    document = policy_document(
        region="eu-west-1",
        account="123456789012",
        purposes=(*PURPOSES, *SSM_PURPOSES),
        ssm=True,
        builder_role="kiln-builder",
    )
    # an SSH bake's policy gains no Run Command (its only SSM use is the AMIs' package
    # lists, KilnPackages: parameters, not commands)
    plain_actions = {a for st in plain["Statement"] for a in _actions(st)}
    assert not {a for a in plain_actions if a.startswith("ssm:") and "Parameter" not in a}
    by_sid = {s["Sid"]: s for s in document["Statement"]}
    on_builders = by_sid["KilnBakeRunCommandOnOwnBuilder"]
    assert on_builders["Condition"] == {"StringLike": {"ssm:resourceTag/kiln:build-id": "*"}}
    assert by_sid["KilnBakeRunShellScript"]["Resource"].endswith("document/AWS-RunShellScript")
    assert by_sid["KilnBakePassBuilderRole"]["Resource"].endswith(":role/kiln-builder")
    assert "KilnBakeImportTaggedKeyPair" not in by_sid  # no key pair in an SSM bake
    assert by_sid["KilnBakePassBuilderRole"]["Condition"] == {
        "StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}
    }
    # parliament's community auditors flag any iam:PassRole (the deploy role's too): lint
    # the rest, as the other policy tests do
    unpassed = {
        **document,
        "Statement": [s for s in document["Statement"] if "Pass" not in s["Sid"]],
    }
    for community in (False, True):
        assert lint(unpassed, community=community) == []
    assert reachable_destruction(document) == []


def _actions(statement: dict) -> list[str]:  # type: ignore[type-arg]
    action = statement["Action"]
    return [action] if isinstance(action, str) else list(action)
