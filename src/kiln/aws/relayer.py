"""A promoted AMI with the target environment's [env]: derived from it, never baked.

On AWS the env layer is a file inside the AMI (``/etc/kiln/<app>/env``, read
by the app's unit), so an environment whose ``[env]`` differs needs another
AMI. kiln derives it from the AMI the source environment serves: a builder
launched from that AMI gets the new env file and the installer, which in its
``env-only`` mode stops the app's unit, replaces that one file and clears
first-boot state exactly as a bake does; then the builder is stopped and
imaged. The code, the build output, the base and the packages are the
promoted AMI's; the boot side is the baked AMI's unchanged (the unit reads the
same file), so what the VM rehearsal proves of how an AMI boots its env file
holds for derived ones too. A derived AMI passes its own boot test.

The derived image's identity is computed from what it is, the promoted code
and the target's env layer (:func:`derived_image`), so any runner, with or
without the image store, finds the same derived AMI again by its tags, and
a second promotion builds nothing. Its provenance is in its tags:
``kiln:promoted-from`` (the source image) and ``kiln:source-ami``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import posixpath
import secrets
import shlex
import shutil
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import botocore.exceptions

from kiln.aws import builder as b
from kiln.aws.ami import (
    Progress,
    TargetFactory,
    TransportFactory,
    _reach,
    _same_name,
    env_digest,
    running_builder,
    stop_builder,
)
from kiln.aws.boottest import Checker, boot_test
from kiln.aws.images import (
    CODE_TAG,
    DIGEST_TAG,
    ENV_TAG,
    IMAGE_TAG,
    PROMOTED_FROM_TAG,
    SOURCE_AMI_TAG,
    Ami,
    wait_available,
)
from kiln.aws.install import env_text
from kiln.aws.policy import BUILD_TAG, VERIFIED_TAG
from kiln.aws.publish import PUBLISHED_TAG, publish
from kiln.aws.session import Aws, aws_errors, tags
from kiln.aws.transport import Upload, provision
from kiln.config import AwsSettings, HealthSettings
from kiln.errors import PromotionRefused
from kiln.image.store import short_id

_NOT_CARRIED = {VERIFIED_TAG, PUBLISHED_TAG, BUILD_TAG, "Name"}  # this AMI earns its own


def derived_image(code: str, env: dict[str, str]) -> tuple[str, str]:
    """(image id, digest) of ``code`` with the env layer ``env``: the same on every runner."""
    doc = {"code": code, "env": env_digest(env)}
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    digest = "sha256:" + hashlib.sha256(canonical).hexdigest()
    return short_id(digest), digest


@dataclass
class Relayer:
    """How the target environment derives its AMI: its env, builder settings and checks."""

    app: str
    env: dict[str, str]
    settings: AwsSettings
    health: HealthSettings
    scratch: Path  # a local directory for the env file (KILN_HOME/tmp)
    boot_test: bool | None = None  # None: [provider.aws] boot_test
    ssh_target: TargetFactory | None = field(default=None, repr=False)  # tests' SSH
    transport: TransportFactory | None = field(default=None, repr=False)
    checker: Checker | None = field(default=None, repr=False)

    def image_for(self, origin: Ami) -> str:
        """The derived image of ``origin``'s code with this env (refused without a code tag)."""
        code = origin.tags.get(CODE_TAG)
        if not code:
            raise PromotionRefused(
                f"{origin.id} has no {CODE_TAG} tag (baked by an older kiln): its code "
                "digest is unknown, so no env layer can be derived from it",
                hint="bake the source environment again ('kiln bake --provider aws --env ...')",
            )
        return derived_image(code, self.env)[0]

    def make(self, aws: Aws, base: Ami, note: Progress) -> Ami:
        """Launch a builder from ``base`` (in ``aws``'s account and region), write the env."""
        image, digest = derived_image(base.tags[CODE_TAG], self.env)
        build_id = "kb-" + secrets.token_hex(6)
        ttl = datetime.timedelta(seconds=self.settings.build_ttl)
        expires = (datetime.datetime.now(datetime.UTC) + ttl).replace(microsecond=0)
        build = b.BuildTags(build_id=build_id, app=self.app, expires=expires)
        note(f"deriving {image} from {base.id}: only the env layer changes (build {build_id})")
        local = self.scratch / f"relayer-{build_id}"
        local.mkdir(parents=True)
        try:
            (local / "env").write_text(env_text(self.env, self.settings.port, image), "utf-8")
            installer = resources.files("kiln.aws").joinpath("install.sh").read_bytes()
            (local / "install.sh").write_bytes(installer)
            files = [local / "install.sh", local / "env"]
            with b.terminate_as_interrupt():
                ami_id = self._build(aws, base, image, digest, build, files, note)
        finally:
            shutil.rmtree(local, ignore_errors=True)
        ami = wait_available(aws, ami_id, timeout=self.settings.image_timeout, note=note)
        testing = self.settings.boot_test if self.boot_test is None else self.boot_test
        if testing and not ami.tags.get(VERIFIED_TAG):
            with b.terminate_as_interrupt():
                boot_test(aws, ami.id, self.settings, self.health, build, note=note,
                          checker=self.checker)  # fmt: skip
            ami = wait_available(aws, ami_id, timeout=self.settings.image_timeout, note=note)
        publish(aws, ami, self.settings, note)
        return ami

    def _build(
        self,
        aws: Aws,
        base: Ami,
        image: str,
        digest: str,
        build: b.BuildTags,
        files: list[Path],
        note: Progress,
    ) -> str:
        reach = self.transport or _reach(self.settings, aws, self.ssh_target)
        with running_builder(aws, self.settings, build, base.id, note) as builder:
            target = reach(builder)
            staging = posixpath.join(target.root, "tmp", f"kiln-{build.build_id}")
            uploads = [Upload(path, posixpath.join(staging, path.name)) for path in files]
            args = [target.root, self.app, "-", staging, "-", "env-only"]
            command = f"/bin/sh {shlex.quote(posixpath.join(staging, 'install.sh'))} " + " ".join(
                shlex.quote(a) for a in args
            )
            prefix = "sudo -n " if target.sudo else ""
            provision(
                target,
                uploads,
                prefix + command,
                timeout=self.settings.ssh_timeout,
                note=note,
                doing="replacing the env layer",
            )
            stop_builder(aws, builder, note)
            return self._create_image(aws, base, image, digest, builder.instance_id)

    def _create_image(self, aws: Aws, base: Ami, image: str, digest: str, instance: str) -> str:
        found = {k: v for k, v in base.tags.items() if k.startswith("kiln:")}
        found = {k: v for k, v in found.items() if k not in _NOT_CARRIED}
        name = f"kiln-{self.app}-{image}-{base.tags.get('kiln:recipe', '')[:8]}"
        found |= {
            "Name": name,
            IMAGE_TAG: image,
            DIGEST_TAG: digest,
            ENV_TAG: env_digest(self.env),
            PROMOTED_FROM_TAG: base.image,
            SOURCE_AMI_TAG: base.id,
        }
        spec: list[Any] = [{"ResourceType": k, "Tags": tags(found)} for k in ("image", "snapshot")]
        with aws_errors("creating the derived AMI"):
            try:
                made = aws.ec2.create_image(
                    InstanceId=instance,
                    Name=name,
                    Description=f"kiln image {image} of {self.app}: {base.image} with another env",
                    TagSpecifications=spec,
                )
            except botocore.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "InvalidAMIName.Duplicate":
                    raise
                return _same_name(aws, name)  # another runner derived it meanwhile
        return str(made["ImageId"])
