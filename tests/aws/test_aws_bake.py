"""The AMI bake, end to end: moto for EC2, a real SSH server, a real installer run."""

from __future__ import annotations

import datetime
import json
import os
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from awskit import SOURCE_AMI, TargetFactory, leftovers, write_app

from kiln.aws.ami import bake_ami, host_cidr
from kiln.aws.builder import BuildTags, security_group, ssh_from
from kiln.aws.images import list_amis
from kiln.aws.session import Aws, tag_map
from kiln.config import LoadedConfig
from kiln.errors import AwsError
from kiln.home import Home
from kiln.image.store import Store

pytestmark = pytest.mark.aws


def test_bake_installs_image_unit_and_clears_first_boot_state(
    aws: Aws,
    home: Home,
    app_factory: Callable[..., LoadedConfig],
    loopback_target: TargetFactory,
    scratch_root: Path,
    base_ami: str,
    tmp_path: Path,
) -> None:
    loaded = app_factory()
    steps: list[str] = []
    result = bake_ami(loaded, home, progress=steps.append, aws=aws, ssh_target=loopback_target)

    assert not result.reused and result.build_id and result.base_ami == base_ami
    record = Store(home).get(result.image)
    hexd = record.digest.removeprefix("sha256:")

    # the unpacked image, byte for byte and mode for mode
    dest = scratch_root / "opt/kiln/acme" / hexd
    assert (dest / "app.py").read_text() == "print('acme v1')\n"
    assert (dest / "static/index.html").read_text() == "<h1>acme</h1>\n"
    assert (scratch_root / "opt/kiln/acme/current").resolve() == dest.resolve()
    for entry in record.manifest.files:
        assert stat.S_IMODE((dest / entry.path).stat().st_mode) == entry.mode

    # the unit: enabled, runs the app from its image directory, secrets at boot
    unit = (scratch_root / "etc/systemd/system/kiln-acme.service").read_text()
    assert f"WorkingDirectory=/opt/kiln/acme/{hexd}" in unit
    assert "ExecStart=/etc/kiln/acme/run" in unit
    assert "EnvironmentFile=/etc/kiln/acme/env" in unit
    assert "fetch-secrets /etc/kiln/acme/secrets.json /run/kiln-acme/secrets.env" in unit
    _verify_unit(unit, scratch_root, tmp_path)
    wants = scratch_root / "etc/systemd/system/multi-user.target.wants/kiln-acme.service"
    assert wants.is_symlink()
    env = (scratch_root / "etc/kiln/acme/env").read_text()
    assert 'PORT="3000"' in env and 'HOST="0.0.0.0"' in env
    assert 'GREETING="say \\"hi\\""' in env
    assert f'KILN_IMAGE="{record.id}"' in env
    assert "DB_PASSWORD" not in env  # secrets are never baked, only their names
    spec = json.loads((scratch_root / "etc/kiln/acme/secrets.json").read_text())
    assert spec == {"API_TOKEN": "ssm:/shared/api-token", "DB_PASSWORD": "ssm:/acme/DB_PASSWORD"}
    run = scratch_root / "etc/kiln/acme/run"
    assert f"cd /opt/kiln/acme/{hexd}" in run.read_text() and run.stat().st_mode & 0o111
    fetch = scratch_root / "usr/local/lib/kiln/fetch-secrets"
    assert fetch.stat().st_mode & 0o111
    # the run script really starts the app's command through /bin/sh
    out = subprocess.run(
        ["/bin/sh", "-c", f"cd {dest} && PORT=3000 /bin/sh -c 'python3 app.py --port $PORT'"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout == "acme v1\n"

    # first-boot state cleared so clones boot fresh; staging removed
    assert (scratch_root / "etc/machine-id").read_text() == ""
    assert not list((scratch_root / "etc/ssh").glob("ssh_host_*"))
    assert not (scratch_root / "var/lib/cloud/instances").exists()
    assert not (scratch_root / "home/admin/.ssh/authorized_keys").exists()
    assert not list((scratch_root / "tmp").glob("kiln-*"))

    # the AMI and its snapshots carry kiln's tags; nothing temporary survives
    ami = aws.ec2.describe_images(ImageIds=[result.ami])["Images"][0]
    ami_tags = tag_map(ami["Tags"])
    assert ami_tags["kiln:app"] == "acme"
    assert ami_tags["kiln:digest"] == record.digest
    assert ami_tags["kiln:base-ami"] == base_ami
    assert "kiln:commit" in ami_tags
    assert result.snapshots
    for snapshot in aws.ec2.describe_snapshots(SnapshotIds=list(result.snapshots))["Snapshots"]:
        snap_tags = tag_map(snapshot["Tags"])
        assert snap_tags["kiln:digest"] == record.digest and snap_tags["kiln:app"] == "acme"
    assert leftovers(aws) == {}
    builder = aws.ec2.describe_instances(
        Filters=[{"Name": "tag:kiln:build-id", "Values": [result.build_id]}]
    )["Reservations"][0]["Instances"][0]
    assert builder["State"]["Name"] == "terminated"
    assert any("SSH up" in s for s in steps)


def test_unchanged_app_reuses_its_ami_without_a_builder(
    aws: Aws,
    home: Home,
    app_factory: Callable[..., LoadedConfig],
    loopback_target: TargetFactory,
) -> None:
    loaded = app_factory()
    first = bake_ami(loaded, home, aws=aws, ssh_target=loopback_target)

    def no_builder(_builder: object) -> object:
        raise AssertionError("a reused AMI must not launch a builder")

    again = bake_ami(loaded, home, aws=aws, ssh_target=no_builder)  # type: ignore[arg-type]
    assert again.reused and again.ami == first.ami and again.build_id is None
    assert again.seconds < 5

    changed = app_factory(version="2")
    second = bake_ami(changed, home, aws=aws, ssh_target=loopback_target)
    assert not second.reused and second.ami != first.ami
    assert [a.id for a in list_amis(aws, "acme")] == [second.ami, first.ami] or {
        a.id for a in list_amis(aws, "acme")
    } == {first.ami, second.ami}


def _verify_unit(unit: str, root: Path, tmp_path: Path) -> None:
    """systemd's own checker; the run script is looked up in the scratch root."""
    # restarts forever: no start limit to give up on a boot whose secrets come late
    head = unit.split("[Service]")[0]
    assert "StartLimitIntervalSec=0" in head.splitlines() and "Restart=always" in unit
    copy = tmp_path / "kiln-acme.service"
    copy.write_text(unit.replace("ExecStart=/etc/kiln/", f"ExecStart={root}/etc/kiln/"))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


def test_a_newer_base_image_makes_a_new_ami(
    aws: Aws,
    home: Home,
    tmp_path: Path,
    base_ami: str,
    loopback_target: TargetFactory,
) -> None:
    """Patched by replacement: the same app on a newer base is another AMI, not a reuse."""
    loaded = write_app(tmp_path / "app", extra='base_image = "debian-12-amd64-*"\n'
                       'base_image_owner = "self"\n')  # fmt: skip
    first = bake_ami(loaded, home, aws=aws, ssh_target=loopback_target)
    assert first.base_ami == base_ami
    steps: list[str] = []
    again = bake_ami(loaded, home, aws=aws, ssh_target=loopback_target, progress=steps.append)
    assert again.reused and again.ami == first.ami
    assert not any("base image changed" in s for s in steps)

    time.sleep(1.1)  # creation dates have one-second resolution
    source = aws.ec2.run_instances(ImageId=SOURCE_AMI, MinCount=1, MaxCount=1)
    patched = aws.ec2.create_image(
        InstanceId=source["Instances"][0]["InstanceId"], Name="debian-12-amd64-20260301-2000"
    )["ImageId"]
    steps.clear()
    second = bake_ami(loaded, home, aws=aws, ssh_target=loopback_target, progress=steps.append)
    assert not second.reused and second.ami != first.ami and second.base_ami == patched
    changed = [s for s in steps if s.startswith("base image changed")]
    assert changed and base_ami in changed[0] and patched in changed[0]
    assert second.image == first.image  # the same app image: only the machine under it changed


def test_the_installer_waits_for_cloud_init_before_clearing_its_state(
    aws: Aws,
    home: Home,
    tmp_path: Path,
    scratch_root: Path,
    app_factory: Callable[..., LoadedConfig],
    loopback_target: TargetFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fake cloud-init on the builder's PATH notes when it is asked, and whether
    cloud-init's instance state still existed then (it must: wiped afterwards)."""
    bin_dir, log = tmp_path / "bin", tmp_path / "cloud-init.log"
    bin_dir.mkdir()
    fake = bin_dir / "cloud-init"
    state = scratch_root / "var/lib/cloud/instances"
    fake.write_text(
        f'#!/bin/sh\necho "$*" >> {log}\n[ -d {state} ] && echo "state present" >> {log}\n'
        "exit 2\n"  # 2: finished with recoverable errors (cloud-init >= 23.4)
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    notes: list[str] = []
    bake_ami(app_factory(), home, aws=aws, ssh_target=loopback_target, progress=notes.append)
    assert log.read_text().splitlines() == ["status --wait", "state present"]
    assert not state.exists()  # and cleared after it finished


def test_ssh_source_may_be_ipv6() -> None:
    """checkip answers an IPv6 address on IPv6-only runners: /128, in Ipv6Ranges."""
    assert host_cidr("2001:db8::7\n") == "2001:db8::7/128"
    assert host_cidr("203.0.113.7") == "203.0.113.7/32"
    assert ssh_from("2001:db8::7/128")["Ipv6Ranges"] == [
        {"CidrIpv6": "2001:db8::7/128", "Description": "kiln bake"}
    ]
    assert "Ipv6Ranges" not in ssh_from("203.0.113.7/32")
    with pytest.raises(AwsError, match="not a CIDR"):
        ssh_from("somewhere")


def test_builder_security_group_opens_ssh_to_an_ipv6_address(aws: Aws) -> None:
    build = BuildTags("kb-ipv6", "acme", datetime.datetime.now(datetime.UTC))
    with security_group(aws, build, "2001:db8::7/128", None, lambda _m: None) as group_id:
        [group] = aws.ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"]
        [rule] = group["IpPermissions"]
        assert rule["Ipv6Ranges"][0]["CidrIpv6"] == "2001:db8::7/128"
        assert rule["FromPort"] == 22 and not rule.get("IpRanges")
    assert leftovers(aws) == {}


def test_no_default_vpc_and_no_subnet_is_a_clear_error(
    aws: Aws, home: Home, app_factory: Callable[..., LoadedConfig]
) -> None:
    loaded = app_factory()  # its base image is registered before the VPC goes
    for subnet in aws.ec2.describe_subnets(
        Filters=[{"Name": "default-for-az", "Values": ["true"]}]
    )["Subnets"]:
        aws.ec2.delete_subnet(SubnetId=subnet["SubnetId"])
    with pytest.raises(AwsError, match=r"no default VPC and \[provider\.aws\] subnet_id") as err:
        bake_ami(loaded, home, aws=aws)
    assert err.value.hint and "subnet_id" in err.value.hint
    assert leftovers(aws) == {}  # refused before creating anything
