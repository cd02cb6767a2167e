"""Release runners played for real: moto launches no machine, so a thread is the instance.

For every release runner kiln launches for the app (``kiln-release-<app>-*``),
the thread reads the instance's user data as cloud-init would, checks it holds
the app's unit back, and runs its ``runcmd`` line: the real ``oneoff`` script,
installed in a scratch root for the runner's AMI, resolving secrets from and
reporting to the moto server's SSM with the admin's keys (moto has no instance
roles; test_aws_oneoff proves the instance policy). What a real boot adds is in
docs/aws.md.
"""

from __future__ import annotations

import base64
import os
import subprocess
import threading
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from aws_deploy.awsworld import World
from kiln.aws.install import ONEOFF_MARK
from kiln.aws.session import Aws, tag_map


def install_root(root: Path, app: str, release: str, files: dict[str, str]) -> Path:
    """What install.sh leaves for ``oneoff``: env, secrets.json, release, the image, scripts."""
    conf = root / "etc/kiln" / app
    conf.mkdir(parents=True)
    (conf / "env").write_text('# baked\nGREETING="hello"\nKILN_IMAGE="img"\n')
    (conf / "secrets.json").write_text(f'{{"DB_PASSWORD": "ssm:/{app}/DB_PASSWORD"}}\n')
    (conf / "release").write_text(release + "\n")
    image = root / "opt/kiln" / app / "0123abcd"
    image.mkdir(parents=True)
    for name, text in files.items():
        (image / name).write_text(text)
    (root / "opt/kiln" / app / "current").symlink_to("0123abcd")
    lib = root / "usr/local/lib/kiln"
    lib.mkdir(parents=True)
    package = resources.files("kiln.aws")
    (lib / "oneoff").write_bytes(package.joinpath("oneoff_runtime.py").read_bytes())
    (lib / "fetch-secrets").write_bytes(package.joinpath("fetch_secrets.py").read_bytes())
    return root


@dataclass
class Runners:
    """Plays every release runner of ``admin``'s moto; ``roots`` maps an AMI to its install."""

    admin: Aws
    app: str
    endpoint: str
    keys: tuple[str, str]
    roots: dict[str, Path] = field(default_factory=dict)
    ran: list[dict[str, Any]] = field(default_factory=list)  # what each runner saw and did
    silent: bool = False  # play a runner that powers off without reporting
    _seen: set[str] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Runners:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            for instance in self._new_runners():
                self._play(instance)

    def _new_runners(self) -> list[dict[str, Any]]:
        found = self.admin.ec2.describe_instances(
            Filters=[
                {"Name": "tag:Name", "Values": [f"kiln-release-{self.app}-*"]},
                {"Name": "instance-state-name", "Values": ["pending", "running"]},
            ]
        )["Reservations"]
        fresh = [i for r in found for i in r["Instances"] if i["InstanceId"] not in self._seen]
        self._seen.update(i["InstanceId"] for i in fresh)
        return fresh

    def _play(self, instance: dict[str, Any]) -> None:
        raw = self.admin.ec2.describe_instance_attribute(
            InstanceId=instance["InstanceId"], Attribute="userData"
        )["UserData"]["Value"]
        doc = yaml.safe_load(base64.b64decode(raw))
        assert ONEOFF_MARK in doc["bootcmd"][0][-1]  # the app's unit is held back
        (argv,) = doc["runcmd"]
        groups = self.admin.client("autoscaling").describe_auto_scaling_groups()
        seen = {
            "instance": instance["InstanceId"],
            "ami": instance["ImageId"],
            "tags": tag_map(instance.get("Tags")),
            "shutdown": self.admin.ec2.describe_instance_attribute(
                InstanceId=instance["InstanceId"], Attribute="instanceInitiatedShutdownBehavior"
            )["InstanceInitiatedShutdownBehavior"]["Value"],
            "groups_then": sorted(
                g["AutoScalingGroupName"]
                for g in groups["AutoScalingGroups"]
                if g["AutoScalingGroupName"].startswith(f"kiln-{self.app}-v")
            ),
        }
        self.ran.append(seen)
        if self.silent:
            self.admin.ec2.terminate_instances(InstanceIds=[instance["InstanceId"]])
            return
        root = self.roots[instance["ImageId"]]
        python, script, *rest = argv
        command = [python, str(root / script.lstrip("/")), "--root", str(root), *rest]
        env = {
            "PATH": os.environ["PATH"],
            "AWS_ACCESS_KEY_ID": self.keys[0],
            "AWS_SECRET_ACCESS_KEY": self.keys[1],
            "AWS_REGION": self.admin.region,
            "KILN_SSM_ENDPOINT": self.endpoint + "/",
        }
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        seen["console"] = done.stdout + done.stderr
        seen["returncode"] = done.returncode


def released_ami(world: World, runners: Runners, tmp: Path, image: str, script: str) -> str:
    """An AMI whose image has ``python3 migrate.py`` as its release, and its install."""
    ami = world.ami(image, release="python3 migrate.py")
    runners.roots[ami] = install_root(
        tmp / image, world.app, "python3 migrate.py", {"migrate.py": script}
    )
    return ami
