"""``kiln aws policy | create-deploy-user | reap`` through the real CLI."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from awskit import TargetFactory

from kiln.aws.ami import bake_ami
from kiln.aws.images import list_amis
from kiln.aws.policy import (
    DEPLOY_PURPOSES,
    PARTS,
    PURPOSES,
    instance_policy_document,
    policy_document,
)
from kiln.aws.session import Aws
from kiln.config import LoadedConfig
from kiln.home import Home
from kilntest import Kiln

pytestmark = pytest.mark.aws


def test_policy_json_is_the_scoped_document(aws: Aws, kiln: Kiln) -> None:
    result = kiln("aws", "policy", "--json")
    assert json.loads(result.stdout) == {
        part: policy_document(region="eu-west-1", account="123456789012", purposes=purposes)
        for part, purposes in PARTS.items()
        if part != "publish"  # nothing to grant: kiln.toml asks for no copies, sharing, ...
    }
    one = kiln("aws", "policy", "--json", "--part", "bake", "--partition", "aws-us-gov")
    assert json.loads(one.stdout) == policy_document(
        region="eu-west-1", account="123456789012", partition="aws-us-gov", purposes=PURPOSES
    )
    table = kiln("aws", "policy", "--region", "us-east-2", "--account", "210987654321")
    assert "kiln bake policy (us-east-2," in table.stdout
    assert "kiln deploy policy (us-east-2," in table.stdout
    assert "/6144 characters)" in table.stdout
    assert "kiln aws policy --json" in table.stdout


def test_policy_without_any_aws_setup_still_prints(kiln: Kiln) -> None:
    result = kiln("aws", "policy", "--json")
    documents = json.loads(result.stdout)
    assert documents["deploy"] == policy_document(
        region=None, account=None, purposes=PARTS["deploy"]
    )
    assert set(PARTS["deploy"]) == {*DEPLOY_PURPOSES, "promote"}


def test_create_deploy_user_prints_keys_once(aws: Aws, kiln: Kiln) -> None:
    first = json.loads(kiln("aws", "create-deploy-user", "--team", "web", "--json").stdout)
    assert first["user"] == "deploy-user-web" and first["created"]
    secrets = first["ci_secrets"]
    assert secrets["AWS_ACCESS_KEY_ID"] == first["access_key_id"]
    assert secrets["AWS_SECRET_ACCESS_KEY"] == first["secret_access_key"]

    again = kiln("aws", "create-deploy-user", "--team", "web")
    assert "exists: deploy-user-web" in again.stdout
    assert first["secret_access_key"] not in again.stdout + again.stderr
    assert "unchanged" in again.stdout

    rotated = kiln("aws", "create-deploy-user", "--team", "web", "--rotate-key")
    assert "AWS_SECRET_ACCESS_KEY=" in rotated.stdout
    assert f"deleted old keys: {first['access_key_id']}" in rotated.stdout


def test_reap_with_nothing_to_do(aws: Aws, kiln: Kiln) -> None:
    assert "nothing to reap" in kiln("aws", "reap").stdout
    summary = json.loads(kiln("aws", "reap", "--dry-run", "--json").stdout)
    assert summary == {"dry_run": True, "removed": [], "kept": []}


def test_errors_are_one_line_not_tracebacks(kiln: Kiln, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    result = kiln("aws", "reap", ok=False)
    assert result.exit_code == 1
    assert "error: no AWS region configured" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_images_and_prune_for_aws_through_the_cli(
    aws: Aws,
    home: Home,
    app_factory: Callable[..., LoadedConfig],
    loopback_target: TargetFactory,
) -> None:
    first = bake_ami(app_factory(), home, aws=aws, ssh_target=loopback_target)
    time.sleep(1.1)  # AMI creation dates have one-second resolution
    loaded = app_factory(version="2")
    second = bake_ami(loaded, home, aws=aws, ssh_target=loopback_target)
    kiln = Kiln(loaded.root)

    listed = json.loads(kiln("images", "--provider", "aws", "--json").stdout)
    assert [row["ami"] for row in listed] == [second.ami, first.ami]
    assert listed[0]["image"] == second.image and listed[0]["digest"] == second.digest

    preview = json.loads(
        kiln("prune", "--provider", "aws", "--keep", "1", "--dry-run", "--json").stdout
    )
    assert [a["ami"] for a in preview["deleted"]] == [first.ami]
    assert len(list_amis(aws, "acme")) == 2
    done = kiln("prune", "--provider", "aws", "--keep", "1")
    assert f"deleted {first.ami}" in done.stdout
    assert [a.id for a in list_amis(aws, "acme")] == [second.ami]


def test_kiln_run_on_aws_says_what_is_missing_in_one_line(aws: Aws, kiln: Kiln) -> None:
    (kiln.cwd / "kiln.toml").write_text(
        '[app]\nname = "shop"\nrun = "python3 app.py"\n[provider.aws]\nssh_cidr = "127.0.0.1/32"\n'
    )
    (kiln.cwd / "app.py").write_text("print('hi')\n")
    never = kiln("run", "--provider", "aws", "--", "true", ok=False)
    assert never.exit_code != 0 and not isinstance(never.exception, AssertionError)
    assert "Traceback" not in never.stderr
    assert "fleet shop has not been deployed on AWS yet" in never.stderr
    assert "kiln run --image ID" in never.stderr
    unknown = kiln("run", "--provider", "aws", "--image", "img-000000000000", "--", "true",
                   ok=False)  # fmt: skip
    assert "image img-000000000000 has no AMI in eu-west-1" in unknown.stderr


def test_a_sticky_fleet_gets_stickiness_on_its_target_groups_in_the_scaling_policy(
    aws: Aws, kiln: Kiln
) -> None:
    tg = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/web/0123456789abcdef"
    (kiln.cwd / "kiln.toml").write_text(
        '[app]\nname = "shop"\nrun = "python3 app.py"\n[fleet]\nsticky = "off"\n'
        f'[provider.aws]\ntarget_group_arn = "{tg}"\n'
    )
    documents = json.loads(kiln("aws", "policy", "--json").stdout)
    (statement,) = [s for s in documents["scaling"]["Statement"] if s["Sid"] == "KilnStickiness"]
    assert statement["Resource"] == tg  # "off" too: kiln turns the ALB's stickiness off
    user = json.loads(kiln("aws", "create-deploy-user", "--team", "web", "--json").stdout)
    assert user["created"]
    attached = aws.iam.get_policy_version(
        PolicyArn="arn:aws:iam::123456789012:policy/kiln/kiln-web-scaling", VersionId="v1"
    )["PolicyVersion"]["Document"]
    assert "KilnStickiness" in json.dumps(attached)
    (kiln.cwd / "kiln.toml").write_text(  # no target group: nothing to set, nothing granted
        '[app]\nname = "shop"\nrun = "python3 app.py"\n[fleet]\nsticky = "cookie"\n'
    )
    assert "KilnStickiness" not in kiln("aws", "policy", "--json").stdout


def test_instance_role_policy_names_the_apps_secrets_and_release_results(
    aws: Aws, kiln: Kiln
) -> None:
    (kiln.cwd / "kiln.toml").write_text(
        '[app]\nname = "shop"\nrun = "python3 app.py"\n'
        '[secrets]\nDB = "env:DB_PASSWORD"\nTOKEN = "ssm:/shared/token"\nCERT = "file:/etc/c"\n'
        '[provider.aws]\nssm_prefix = "/prod/shop/"\n'
    )
    document = json.loads(kiln("aws", "policy", "--instance-role", "--json").stdout)
    assert document == instance_policy_document(
        app="shop",
        parameters=["/prod/shop/DB_PASSWORD", "/shared/token"],
        region="eu-west-1",
        account="123456789012",
    )
    table = kiln("aws", "policy", "--instance-role").stdout
    assert "KilnInstanceSecrets" in table and "KilnInstanceReleaseResult" in table


def test_images_show_where_each_ami_was_copied_and_prune_takes_copies(
    aws: Aws,
    home: Home,
    app_factory: Callable[..., LoadedConfig],
    loopback_target: TargetFactory,
) -> None:
    from awsservers import COPY_SECONDS

    regions = 'copy_to_regions = ["us-east-1", "us-west-2"]\n'
    first = bake_ami(app_factory(extra=regions), home, aws=aws, ssh_target=loopback_target)
    time.sleep(1.1)  # AMI creation dates have one-second resolution
    loaded = app_factory(extra=regions, version="2")
    second = bake_ami(loaded, home, aws=aws, ssh_target=loopback_target)
    kiln = Kiln(loaded.root)

    listed = json.loads(kiln("images", "--provider", "aws", "--json").stdout)
    assert [row["ami"] for row in listed] == [second.ami, first.ami]
    assert listed[0]["region"] == "eu-west-1"
    # pending for 2 s on the test server: a slow machine may list them available already
    assert [(c["region"], c["ami"]) for c in listed[0]["copies"]] == [
        (c.region, c.ami) for c in second.copies
    ]
    assert {c["state"] for c in listed[0]["copies"]} <= {"pending", "available"}

    time.sleep(COPY_SECONDS + 0.2)
    assert "REGIONS" in kiln("images", "--provider", "aws").stdout  # narrow: cells cut
    now = json.loads(kiln("images", "--provider", "aws", "--json").stdout)
    assert [c["state"] for c in now[0]["copies"]] == ["available", "available"]
    done = json.loads(kiln("prune", "--provider", "aws", "--keep", "1", "--json").stdout)
    assert [a["ami"] for a in done["deleted"]] == [first.ami]
    assert {(c["region"], c["ami"]) for c in done["copies_deleted"]} == {
        (c.region, c.ami) for c in first.copies
    }
    for copy in second.copies:  # the kept AMI keeps its copies
        there = aws.in_region(copy.region)
        assert [a.id for a in list_amis(there, "acme")] == [copy.ami]


def test_policy_of_an_environment_that_promotes_into_another_account(tmp_path: Path) -> None:
    """--env: staging's promote_to_accounts renders sharing (and the key-policy read)."""
    (tmp_path / "kiln.toml").write_text(
        "[app]\nname = 'shop'\nrun = 'python3 app.py'\n"
        "[provider.aws]\nkms_key_id = 'alias/shop'\n"
        "[environments.staging]\nprovider.aws = { promote_to_accounts = ['222222222222'] }\n"
        "[environments.production]\n"
    )
    kiln = Kiln(tmp_path)
    where = ("--region", "eu-west-1", "--account", "111111111111", "--part", "publish", "--json")

    def actions(*env: str) -> set[str]:
        document = json.loads(kiln("aws", "policy", *where, *env).stdout)
        return {a for s in document["Statement"] for a in s["Action"]}

    staging = actions("--env", "staging")
    assert {"ec2:ModifyImageAttribute", "ec2:ModifySnapshotAttribute"} <= staging
    assert "kms:GetKeyPolicy" in staging
    assert not {"ec2:ModifyImageAttribute", "kms:GetKeyPolicy"} & actions("--env", "production")
