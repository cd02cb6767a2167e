"""What goes onto a builder: the image, its service unit, env, and the installer.

Rendered locally into a staging directory, uploaded over SSH, then the
installer (``install.sh``, a plain shell script taking an install root) puts
everything in place. Only secret *names* are shipped; ``fetch-secrets``
resolves the values on each instance at boot.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from kiln.config import AwsSettings, Config
from kiln.image.store import ImageRecord, Store, file_sha256
from kiln.runline import exec_form

# 2: run line exec'd (kiln.runline); 3: no start limit, 3.8 fetch; 4: oneoff, release
INSTALLER_VERSION = "4"
FILES = ("install.sh", "fetch-secrets", "oneoff", "env", "run", "release", "secrets.json")
ONEOFF_MARK = "/run/kiln/oneoff"  # while it exists the app's unit does not start (one-offs)
PACKAGES_BEGIN = "kiln-packages-begin"  # install.sh prints the package list between these
PACKAGES_END = "kiln-packages-end"


@dataclass(frozen=True)
class Bundle:
    """A staging directory ready for upload, and how to install it."""

    directory: Path
    app: str
    digest_hex: str
    tar_sha256: str

    @property
    def unit_name(self) -> str:
        return f"kiln-{self.app}.service"

    def files(self) -> list[Path]:
        return [self.directory / name for name in (*FILES, self.unit_name, "image.tar")]

    upgrade: bool = False  # run the distribution's security upgrade first

    def command(self, remote_staging: str, root: str, sudo: bool) -> str:
        args = [root, self.app, self.digest_hex, remote_staging, self.tar_sha256]
        if self.upgrade:
            args.append("upgrade")
        script = f"{remote_staging}/install.sh"
        prefix = "sudo -n " if sudo else ""
        return f"{prefix}/bin/sh {shlex.quote(script)} " + " ".join(shlex.quote(a) for a in args)


def secret_spec(config: Config, settings: AwsSettings) -> dict[str, str]:
    """Secret references as the instance resolves them: 'env:X' reads SSM <prefix>X."""
    prefix = settings.ssm_prefix or f"/{config.app.name}/"
    if not prefix.endswith("/"):
        prefix += "/"
    spec: dict[str, str] = {}
    for name, ref in sorted(config.secrets.items()):
        kind, _, where = ref.partition(":")
        spec[name] = f"ssm:{prefix}{where}" if kind == "env" else ref
    return spec


def recipe(config: Config, settings: AwsSettings) -> str:
    """Hash of everything besides the image that shapes an AMI (port, secrets, installer)."""
    doc: dict[str, object] = {
        "installer": INSTALLER_VERSION,
        "port": settings.port,
        "secrets": secret_spec(config, settings),
    }
    if settings.security_upgrades:  # only when on: AMIs baked before keep their recipe
        doc["upgrade"] = True
    disk = disk_spec(settings)
    if disk:  # only when set: an AMI baked before these settings existed is still reused
        doc["disk"] = disk
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def disk_spec(settings: AwsSettings) -> dict[str, Any]:
    """What the AMI's root volume is: encryption, key, size, type, deletion."""
    spec: dict[str, Any] = {}
    if settings.encrypts:
        spec["encrypted"] = True
        spec["kms_key_id"] = settings.kms_key_id
    if settings.root_volume_size is not None:
        spec["size"] = settings.root_volume_size
    if settings.root_volume_type is not None:
        spec["type"] = settings.root_volume_type
    if not settings.delete_on_termination:
        spec["delete_on_termination"] = False
    return spec


def env_file(record: ImageRecord, settings: AwsSettings) -> str:
    """systemd EnvironmentFile: the baked env plus where to listen."""
    return env_text(record.manifest.env, settings.port, record.id)


def env_text(baked: dict[str, str], port: int, image: str) -> str:
    """The env layer as the AMI holds it (a promotion's derived AMI writes it anew)."""
    env = {**baked, "HOST": "0.0.0.0", "PORT": str(port), "KILN_IMAGE": image}
    lines = ["# baked by kiln: part of the image, no secrets here\n"]
    for name, value in sorted(env.items()):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        lines.append(f'{name}="{escaped}"\n')
    return "".join(lines)


def run_script(record: ImageRecord, digest_hex: str) -> str:
    """The app's command, run through /bin/sh from its image directory."""
    where = f"/opt/kiln/{record.app}/{digest_hex}"
    return (
        "#!/bin/sh\n"
        f"# kiln: start {record.app} ({record.id})\n"
        f"cd {shlex.quote(where)} || exit 1\n"
        f"exec /bin/sh -c {shlex.quote(exec_form(record.manifest.run))}\n"
    )


def unit_file(record: ImageRecord, digest_hex: str) -> str:
    app = record.app
    return f"""[Unit]
Description=kiln app {app} ({record.id})
# An instance launched for a one-off job (a release, 'kiln run') creates this
# early in boot (cloud-init bootcmd): the app itself does not start there.
ConditionPathExists=!{ONEOFF_MARK}
Wants=network-online.target
After=network-online.target
# Restart=always forever: systemd's default start limit (5 starts in 10 s) would
# leave an instance whose secrets are not readable yet stopped for good.
StartLimitIntervalSec=0

[Service]
Type=simple
User=kiln
Group=kiln
WorkingDirectory=/opt/kiln/{app}/{digest_hex}
RuntimeDirectory=kiln-{app}
RuntimeDirectoryMode=0700
# The kiln user has no home (/nonexistent); an app may write to its HOME (pm2
# keeps ~/.pm2, npm its logs, caches): this one is the instance's own disk.
StateDirectory=kiln-{app}
StateDirectoryMode=0700
Environment=HOME=/var/lib/kiln-{app} XDG_RUNTIME_DIR=/run/kiln-{app}
EnvironmentFile=/etc/kiln/{app}/env
ExecStartPre=+/usr/bin/python3 /usr/local/lib/kiln/fetch-secrets \
/etc/kiln/{app}/secrets.json /run/kiln-{app}/secrets.env
EnvironmentFile=-/run/kiln-{app}/secrets.env
ExecStart=/etc/kiln/{app}/run
Restart=always
RestartSec=5
NoNewPrivileges=yes

[Install]
WantedBy=multi-user.target
"""


def render_bundle(
    store: Store, record: ImageRecord, config: Config, settings: AwsSettings, directory: Path
) -> Bundle:
    """Write everything the builder needs into ``directory`` (created, must not exist)."""
    directory.mkdir(parents=True)
    digest_hex = record.digest.removeprefix("sha256:")
    package = resources.files("kiln.aws")
    (directory / "install.sh").write_bytes(package.joinpath("install.sh").read_bytes())
    (directory / "fetch-secrets").write_bytes(package.joinpath("fetch_secrets.py").read_bytes())
    (directory / "oneoff").write_bytes(package.joinpath("oneoff_runtime.py").read_bytes())
    release = record.manifest.release
    (directory / "release").write_text(release + "\n" if release else "", encoding="utf-8")
    (directory / "env").write_text(env_file(record, settings), encoding="utf-8")
    (directory / "run").write_text(run_script(record, digest_hex), encoding="utf-8")
    spec = json.dumps(secret_spec(config, settings), indent=2, sort_keys=True) + "\n"
    (directory / "secrets.json").write_text(spec, encoding="utf-8")
    (directory / f"kiln-{record.app}.service").write_text(
        unit_file(record, digest_hex), encoding="utf-8"
    )
    tar = directory / "image.tar"
    with tar.open("wb") as f:
        store.export_tar(record.digest, f)
    return Bundle(
        directory=directory,
        app=record.app,
        digest_hex=digest_hex,
        tar_sha256=file_sha256(tar),
        upgrade=settings.security_upgrades,
    )
