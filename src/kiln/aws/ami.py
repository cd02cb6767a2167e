"""``kiln bake --provider aws``: a baked image becomes an AMI, like Packer but tidy.

Bake locally (the digest is the identity); reuse an AMI already tagged with
that digest, or resume the wait for one still pending; otherwise launch a
builder inside nested ``with`` blocks (key pair → security group →
instance), upload and install the image over SSH, stop, create the AMI, wait,
tag it and its snapshots. Whatever happens, the builder, key pair and
security group are gone when this returns or raises.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
import posixpath
import secrets
import shutil
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from typing import Any

import botocore.exceptions

from kiln.aws import builder as b
from kiln.aws.boottest import Checker, boot_test, is_verified
from kiln.aws.disks import builder_mappings, check_key, image_mappings, key_for
from kiln.aws.images import (
    BASE_CREATED_TAG,
    BASE_NAME_TAG,
    BASE_TAG,
    CODE_TAG,
    COMMIT_TAG,
    DIGEST_TAG,
    ENV_TAG,
    IMAGE_TAG,
    PACKAGES_TAG,
    RECIPE_TAG,
    RELEASE_TAG,
    RUNTIME_TAG,
    Ami,
    delete_ami,
    find_ami,
    find_copy,
    release_tag,
    wait_available,
)
from kiln.aws.install import (
    INSTALLER_VERSION,
    PACKAGES_BEGIN,
    PACKAGES_END,
    recipe,
    render_bundle,
)
from kiln.aws.packages import store_packages
from kiln.aws.policy import APP_TAG, VERIFIED_TAG
from kiln.aws.publish import publish
from kiln.aws.regions import Copy, sync_copies
from kiln.aws.session import Aws, aws_errors, connect, tags
from kiln.aws.ssh import SshTarget, SshTransport
from kiln.aws.ssm import SsmTransport
from kiln.aws.transport import Transport, Upload, provision
from kiln.config import AwsSettings, Config, LoadedConfig
from kiln.errors import AwsError
from kiln.home import Home
from kiln.image.bake import bake
from kiln.image.result import BakeProgress
from kiln.image.store import ImageRecord, Store

Progress = Callable[[str], None]
TargetFactory = Callable[[b.Builder], SshTarget]
TransportFactory = Callable[[b.Builder], Transport]


@dataclass(frozen=True)
class AmiResult:
    ami: str
    image: str
    digest: str
    app: str
    region: str
    reused: bool  # an AMI for this digest existed: no builder launched
    resumed: bool  # it was still pending: this bake waited for it
    build_id: str | None
    base_ami: str | None
    snapshots: tuple[str, ...]
    seconds: float
    verified: bool = False  # tagged kiln:verified: a boot test passed (now or before)
    boot_test_seconds: float | None = None  # this bake's boot test, launch to healthy
    encrypted: bool = False
    copies: tuple[Copy, ...] = ()  # copy_to_regions: started, pending or available

    def with_copies(self, copies: list[Copy]) -> AmiResult:
        return replace(self, copies=tuple(copies))

    def summary(self) -> dict[str, Any]:
        return {
            "provider": "aws",
            "ami": self.ami,
            "image": self.image,
            "digest": self.digest,
            "app": self.app,
            "region": self.region,
            "reused": self.reused,
            "resumed": self.resumed,
            "build_id": self.build_id,
            "base_ami": self.base_ami,
            "snapshots": list(self.snapshots),
            "seconds": round(self.seconds, 3),
            "verified": self.verified,
            "boot_test_seconds": (
                None if self.boot_test_seconds is None else round(self.boot_test_seconds, 3)
            ),
            "encrypted": self.encrypted,
            "copies": [c.summary() for c in self.copies],
        }


def settings_of(config: Config) -> AwsSettings:
    return config.provider.aws or AwsSettings()


def bake_ami(
    loaded: LoadedConfig,
    home: Home,
    *,
    progress: Progress | None = None,
    aws: Aws | None = None,
    ssh_target: TargetFactory | None = None,
    bake_progress: BakeProgress | None = None,
    boot_test: bool | None = None,
    checker: Checker | None = None,
    transport: TransportFactory | None = None,
) -> AmiResult:
    """Bake the app locally, then make (or reuse) its AMI.

    ``progress`` narrates the AWS steps; ``bake_progress`` is handed to the
    local bake. ``boot_test`` overrides ``[provider.aws] boot_test``.
    ``aws``, ``ssh_target`` (SSH), ``transport`` (any way to the builder) and
    ``checker`` are for tests and embedding.
    """
    note = progress or (lambda _msg: None)
    local = bake(loaded, home, bake_progress)
    note(f"image {local.image} ({'reused' if local.reused else 'baked'})")
    store = Store(home)
    record = store.get(local.image)
    settings = settings_of(loaded.config)
    return build_ami(
        store,
        record,
        loaded.config,
        aws=aws or connect(settings),
        progress=note,
        ssh_target=ssh_target,
        boot_test=boot_test,
        checker=checker,
        transport=transport,
    )


def build_ami(
    store: Store,
    record: ImageRecord,
    config: Config,
    *,
    aws: Aws,
    progress: Progress | None = None,
    ssh_target: TargetFactory | None = None,
    boot_test: bool | None = None,
    checker: Checker | None = None,
    transport: TransportFactory | None = None,
    fresh: bool = False,
) -> AmiResult:
    """The AMI for an image already in the store; ``fresh``: a new one even if one exists
    (a refresh that is due, to pick up the distribution's upgrades on the same base)."""
    note = progress or (lambda _msg: None)
    settings = settings_of(config)
    testing = settings.boot_test if boot_test is None else boot_test
    started = time.monotonic()
    shape = recipe(config, settings)
    found_base = resolve_base(aws, settings)
    base = found_base.id
    existing = None if fresh else find_ami(aws, record.digest, shape, base)
    if existing is None and not fresh:
        existing = find_copy(aws, record.digest, shape, found_base.name)
    if existing is None and not fresh:
        _say_if_base_changed(aws, find_ami(aws, record.digest, shape), base, note)
    if existing is not None and existing.state in {"available", "pending"}:
        resumed = existing.state == "pending"
        note(f"{'resuming the wait for' if resumed else 'reusing'} {existing.id}")
        ami = _finish(aws, existing.id, settings, note)
        result = _result(ami, record, aws, None, True, resumed, started)
        if testing:
            result, ami = _verify(aws, result, ami, config, note, checker)
        return _published(aws, result, ami, settings, note)
    if existing is not None:
        note(f"deregistering {existing.id} (state {existing.state}) before baking again")
        delete_ami(aws, existing)
    build_id = "kb-" + secrets.token_hex(6)
    note(f"build {build_id}: base image {base}")
    bundle_dir = store.home.tmp / f"ami-{build_id}"
    try:
        with b.terminate_as_interrupt():
            reach = transport or _reach(settings, aws, ssh_target)
            ami_id = _build(
                store, record, config, settings, aws, build_id, found_base, note,
                reach, unique=fresh,
            )  # fmt: skip
    finally:
        shutil.rmtree(bundle_dir, ignore_errors=True)
    ami = _finish(aws, ami_id, settings, note)
    result = _result(ami, record, aws, build_id, False, False, started, base)
    if testing:
        result, ami = _verify(aws, result, ami, config, note, checker)
    return _published(aws, result, ami, settings, note)


def _published(
    aws: Aws, result: AmiResult, ami: Ami, settings: AwsSettings, note: Progress
) -> AmiResult:
    """Share and deprecate the AMI, then start (or finish) its copies; never wait for them.

    After the boot test: an AMI that failed it is neither shared nor copied,
    and its copies carry the ``kiln:verified`` tag deploys there require.
    """
    publish(aws, ami, settings, note)
    if not settings.copy_to_regions:
        return result
    return result.with_copies(sync_copies(aws, ami, settings, note))


def _verify(
    aws: Aws, result: AmiResult, ami: Ami, config: Config, note: Progress, checker: Checker | None
) -> tuple[AmiResult, Ami]:
    """The boot test, unless the AMI passed one already; the result says it is verified."""
    if is_verified(ami.tags):
        note(f"{ami.id} passed its boot test before")
        return replace(result, verified=True), ami
    settings = settings_of(config)
    build_id = result.build_id or "kb-" + secrets.token_hex(6)
    expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=settings.build_ttl)
    build = b.BuildTags(build_id=build_id, app=result.app, expires=expires.replace(microsecond=0))
    with b.terminate_as_interrupt():
        tested = boot_test(aws, ami.id, settings, config.health, build, note=note, checker=checker)
    seconds = result.seconds + tested.seconds
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    tagged = replace(ami, tags={**ami.tags, VERIFIED_TAG: when})  # copies carry it
    return replace(result, verified=True, boot_test_seconds=tested.seconds, seconds=seconds), tagged


def _build(
    store: Store,
    record: ImageRecord,
    config: Config,
    settings: AwsSettings,
    aws: Aws,
    build_id: str,
    found_base: BaseImage,
    note: Progress,
    reach: TransportFactory,
    *,
    unique: bool = False,
) -> str:
    base = found_base.id
    kms_key = check_key(aws, key_for(settings, aws.region, aws.region), shared=settings.shares)
    expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=settings.build_ttl)
    build = b.BuildTags(build_id=build_id, app=record.app, expires=expires.replace(microsecond=0))
    bundle = render_bundle(store, record, config, settings, store.home.tmp / f"ami-{build_id}")
    devices = builder_mappings(settings, found_base.root_device, kms_key, found_base.root_size)
    with running_builder(aws, settings, build, base, note, devices) as builder:
        target = reach(builder)
        staging = posixpath.join(target.root, "tmp", f"kiln-{build_id}")
        uploads = [Upload(path, posixpath.join(staging, path.name)) for path in bundle.files()]
        output = provision(
            target,
            uploads,
            bundle.command(staging, target.root, target.sudo),
            timeout=settings.ssh_timeout,
            note=note,
        )
        packages = parse_packages(output)
        note(f"{len(packages)} packages installed on the builder")
        stop_builder(aws, builder, note)
        made = Made(base, found_base.created, len(packages), build_id if unique else None)
        ami_id = _create_image(
            aws, record, builder.instance_id, made, settings, config, base=found_base
        )
        if packages:
            parts = store_packages(aws, record.app, ami_id, packages)
            note(f"package list of {ami_id} kept in SSM ({parts} parameter(s))")
        note(f"creating {ami_id}")
        wait_available(aws, ami_id, timeout=settings.image_timeout, note=note)
        return ami_id


@contextmanager
def running_builder(
    aws: Aws,
    settings: AwsSettings,
    build: b.BuildTags,
    base: str,
    note: Progress,
    devices: list[Any] | None = None,
) -> Iterator[b.Builder]:
    """A builder launched from ``base``, reachable as bake_via says; all of it gone after.

    SSH: its own key pair and a security group open to ``ssh_cidr`` (or this
    machine's address); SSM: a security group with no inbound rule.
    """
    ssh = settings.bake_via == "ssh"
    cidr = (settings.ssh_cidr or caller_cidr(aws)) if ssh else None  # SSM: no inbound rule
    vpc_id = subnet_vpc(aws, settings.subnet_id) if settings.subnet_id else None
    if vpc_id is None:
        require_default_vpc(aws)
    with ExitStack() as stack:
        key_name, key = stack.enter_context(b.key_pair(aws, build, note)) if ssh else (None, None)
        group_id = stack.enter_context(b.security_group(aws, build, cidr, vpc_id, note))
        yield stack.enter_context(
            b.builder_instance(
                aws,
                build,
                base_ami=base,
                instance_type=settings.builder_instance_type,
                key_name=key_name,
                key=key,
                group_id=group_id,
                subnet_id=settings.subnet_id,
                ttl=settings.build_ttl,
                note=note,
                instance_profile=None if ssh else settings.builder_instance_profile,
                block_devices=devices,
            )
        )


def stop_builder(aws: Aws, builder: b.Builder, note: Progress) -> None:
    """Stopped, so CreateImage takes a consistent disk without rebooting it."""
    note(f"stopping {builder.instance_id}")
    with aws_errors("stopping the builder"):
        aws.ec2.stop_instances(InstanceIds=[builder.instance_id])
    b.wait_instance(aws, builder.instance_id, "stopped", timeout=600, note=note)


@dataclass(frozen=True)
class Made:
    """What an AMI is built from, beyond the image: recorded in its tags."""

    base: str
    base_created: str  # the base AMI's CreationDate
    packages: int  # how many packages the builder had
    build_id: str | None = None  # set: a fresh AMI beside an existing one, named apart


def _create_image(
    aws: Aws,
    record: ImageRecord,
    instance_id: str,
    made: Made,
    settings: AwsSettings,
    config: Config,
    *,
    base: BaseImage,
) -> str:
    name = f"kiln-{record.app}-{record.id}-{recipe(config, settings)[:8]}"
    if made.build_id:
        name += f"-{made.build_id}"
    image_tags = ami_tags(record, made.base, recipe(config, settings))
    image_tags[BASE_CREATED_TAG] = made.base_created
    image_tags[PACKAGES_TAG] = str(made.packages)
    if base.name:
        image_tags[BASE_NAME_TAG] = base.name[:256]
    # Snapshots are tagged by the same call: a bake killed during the long wait
    # for "available" leaves snapshots prune may delete (DeleteSnapshot needs kiln:app).
    spec: list[Any] = [
        {"ResourceType": kind, "Tags": tags(image_tags)} for kind in ("image", "snapshot")
    ]
    args: dict[str, Any] = {}
    mappings = image_mappings(settings, base.root_device)
    if mappings:
        args["BlockDeviceMappings"] = mappings
    with aws_errors("creating the AMI"):
        try:
            response = aws.ec2.create_image(
                InstanceId=instance_id,
                Name=name,
                Description=f"kiln image {record.id} of {record.app}",
                TagSpecifications=spec,
                **args,
            )
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "InvalidAMIName.Duplicate":
                raise
            return _same_name(aws, name)  # another runner baked this image meanwhile
    return response["ImageId"]


def _same_name(aws: Aws, name: str) -> str:
    found = aws.ec2.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [name]}])
    if not found["Images"]:
        raise AwsError(f"AWS reports an AMI named {name} exists, but it cannot be found")
    return found["Images"][0]["ImageId"]


def ami_tags(record: ImageRecord, base: str, shape: str) -> dict[str, str]:
    found = {
        "Name": f"kiln-{record.app}-{record.id}",
        APP_TAG: record.app,
        DIGEST_TAG: record.digest,
        CODE_TAG: record.manifest.code_digest,
        ENV_TAG: env_digest(record.manifest.env),
        IMAGE_TAG: record.id,
        COMMIT_TAG: str(record.meta.get("commit") or "unknown"),
        BASE_TAG: base,
        RECIPE_TAG: shape,
        RUNTIME_TAG: INSTALLER_VERSION,
    }
    if record.manifest.release:  # a deployer that never saw the image knows it has one
        found[RELEASE_TAG] = release_tag(record.manifest.release)
    return found


def env_digest(env: dict[str, str]) -> str:
    """The env layer's identity, tagged on an AMI: a promotion compares it without the store."""
    canonical = json.dumps(dict(sorted(env.items())), separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(canonical).hexdigest()


def _finish(aws: Aws, ami_id: str, settings: AwsSettings, note: Progress) -> Ami:
    """Wait until available (image and snapshots were tagged when CreateImage ran)."""
    ami = wait_available(aws, ami_id, timeout=settings.image_timeout, note=note)
    note(f"{ami_id} available")
    return ami


def _result(
    ami: Ami,
    record: ImageRecord,
    aws: Aws,
    build_id: str | None,
    reused: bool,
    resumed: bool,
    started: float,
    base: str | None = None,
) -> AmiResult:
    return AmiResult(
        ami=ami.id,
        image=record.id,
        digest=record.digest,
        app=record.app,
        region=aws.region,
        reused=reused,
        resumed=resumed,
        build_id=build_id,
        base_ami=base or ami.tags.get(BASE_TAG),
        snapshots=ami.snapshots,
        seconds=time.monotonic() - started,
        verified=is_verified(ami.tags),
        encrypted=ami.encrypted,
    )


def _say_if_base_changed(aws: Aws, previous: Ami | None, base: str, note: Progress) -> None:
    """This image was baked before on another base: say so, that is why it bakes again."""
    old = previous.tags.get(BASE_TAG) if previous is not None else None
    if not old or old == base:
        return
    with aws_errors("describing the base images"):
        found = aws.ec2.describe_images(Filters=[{"Name": "image-id", "Values": [old, base]}])[
            "Images"
        ]
    dates = {i["ImageId"]: i.get("CreationDate", "?")[:10] for i in found}
    note(
        f"base image changed: {old} ({dates.get(old, 'gone')}) → {base} "
        f"({dates.get(base, '?')}), baking"
    )


@dataclass(frozen=True)
class BaseImage:
    id: str
    name: str  # the same base in another region has another id, the same name
    root_device: str  # where the builder's root volume mapping goes
    root_size: int | None = None  # GiB of its root snapshot
    created: str = ""  # ISO 8601, as EC2 reports it


def resolve_base_image(aws: Aws, settings: AwsSettings) -> str:
    """Pin the base image to an id: a given 'ami-' id, or the newest name match."""
    return resolve_base(aws, settings).id


def resolve_base(aws: Aws, settings: AwsSettings) -> BaseImage:
    """The base image pinned by id, with its name and root device."""
    wanted = settings.base_image
    with aws_errors("resolving the base image"):
        if wanted.startswith("ami-"):
            found = aws.ec2.describe_images(ImageIds=[wanted])["Images"]
        else:
            found = aws.ec2.describe_images(
                Owners=[settings.base_image_owner],
                Filters=[
                    {"Name": "name", "Values": [wanted]},
                    {"Name": "state", "Values": ["available"]},
                ],
            )["Images"]
    if not found:
        raise AwsError(
            f"no base image {wanted!r} (owner {settings.base_image_owner}) in {aws.region}",
            hint="set [provider.aws] base_image to an AMI id or name pattern available there",
        )
    newest = max(found, key=lambda image: image.get("CreationDate", ""))
    return BaseImage(
        id=newest["ImageId"],
        name=str(newest.get("Name", "")),
        root_device=str(newest.get("RootDeviceName") or "/dev/xvda"),
        root_size=_root_size(newest),
        created=str(newest.get("CreationDate", "")),
    )


def _root_size(image: Any) -> int | None:
    root = image.get("RootDeviceName")
    for mapping in image.get("BlockDeviceMappings", []):
        if mapping.get("DeviceName") == root and mapping.get("Ebs", {}).get("VolumeSize"):
            return int(mapping["Ebs"]["VolumeSize"])
    return None


def parse_packages(output: str) -> list[tuple[str, str]]:
    """(name, version) pairs install.sh printed between its package markers, sorted."""
    lines = output.splitlines()
    try:
        start, end = lines.index(PACKAGES_BEGIN), lines.index(PACKAGES_END)
    except ValueError:
        return []
    pairs = (line.split("\t", 1) for line in lines[start + 1 : end])
    return sorted((p[0], p[1]) for p in pairs if len(p) == 2 and p[0])


def subnet_vpc(aws: Aws, subnet_id: str) -> str:
    with aws_errors(f"looking up subnet {subnet_id}"):
        subnets = aws.ec2.describe_subnets(SubnetIds=[subnet_id])["Subnets"]
    return subnets[0]["VpcId"]


def require_default_vpc(aws: Aws) -> None:
    """Without subnet_id the builder goes to the default VPC: say so if there is none."""
    with aws_errors("looking for the default VPC"):
        found = aws.ec2.describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]}])[
            "Subnets"
        ]
    if not found:
        raise AwsError(
            f"{aws.region} has no default VPC and [provider.aws] subnet_id is not set",
            hint="set subnet_id to a subnet whose instances get a public address (or set "
            "ssh_private_ip = true when kiln runs inside that VPC)",
        )


def host_cidr(address: str) -> str:
    """One address as a CIDR: /32 for IPv4, /128 for IPv6."""
    ip = ipaddress.ip_address(address.strip())
    return f"{ip}/{ip.max_prefixlen}"


def caller_cidr(aws: Aws) -> str:
    """The address AWS sees us from, as a one-address CIDR (IPv4 or IPv6)."""
    if aws.is_local:
        return "127.0.0.1/32"
    try:
        with urllib.request.urlopen("https://checkip.amazonaws.com", timeout=5) as resp:
            address = resp.read().decode().strip()
    except OSError as exc:
        raise AwsError(
            f"cannot find this machine's public address: {exc}",
            hint="set [provider.aws] ssh_cidr to the CIDR the builder should accept SSH from",
        ) from None
    try:
        return host_cidr(address)
    except ValueError:
        raise AwsError(
            f"checkip.amazonaws.com answered {address[:60]!r}, not an address",
            hint="set [provider.aws] ssh_cidr to the CIDR the builder should accept SSH from",
        ) from None


def _reach(settings: AwsSettings, aws: Aws, ssh_target: TargetFactory | None) -> TransportFactory:
    """The way to the builder [provider.aws] bake_via chose (``ssh_target``: tests' SSH)."""
    if settings.bake_via == "ssm":
        return lambda builder: SsmTransport(aws.client("ssm"), builder.instance_id)
    target = ssh_target or default_target(settings)
    return lambda builder: SshTransport(target(builder))


def default_target(settings: AwsSettings) -> TargetFactory:
    """SSH to the builder's public address (or private, with ssh_private_ip) on port 22."""

    def target(builder: b.Builder) -> SshTarget:
        host = builder.private_ip if settings.ssh_private_ip else builder.public_ip
        if not host:
            raise AwsError(
                f"builder {builder.instance_id} has no "
                f"{'private' if settings.ssh_private_ip else 'public'} address",
                hint="use a subnet that assigns public addresses, or set ssh_private_ip = true "
                "when kiln runs inside the VPC",
            )
        assert builder.key is not None, "an SSH bake imports a key pair"
        return SshTarget(host=host, port=22, username=settings.ssh_user, key=builder.key)

    return target
