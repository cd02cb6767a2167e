"""The AWS side of the docs' commands: a moto server, a baked AMI, a deployed fleet.

The CLI runs for real against a moto server. Two things it cannot do here are
done through the library first, as tests/aws and tests/aws_deploy do: the
AMI's first bake needs SSH to a builder (pointed at a loopback SSH server), so
``kiln bake --provider aws`` then reuses that AMI; and a deployment probes
instances at their private addresses, so the fleet is deployed once with
instances resolved to a local app process before ``kiln aws history|drift``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aws.awsservers import SshServer, reset_moto
from aws_deploy.awsworld import World, app_process, build_world
from docs.doccommands import REPO
from docs.sandbox import Sandbox, Step
from kiln.aws.ami import bake_ami
from kiln.aws.builder import Builder
from kiln.aws.deployments import open_deployments
from kiln.aws.images import list_amis
from kiln.aws.session import Aws, connect
from kiln.aws.ssh import SshTarget
from kiln.config import AwsProvider, LoadedConfig, load_config
from kiln.home import Home

REGION = "eu-west-1"
BASE_AMI = "ami-03cf127a"  # one of the public AMIs moto ships in every region
NO_AWS_PROBE = (
    "probes each instance at its private address, which on moto is in 172.31.0.0/16 where "
    "tests must send nothing; tests/aws_deploy runs it with addresses resolved to local apps"
)
NO_AWS_DEPLOY = f"a deployment {NO_AWS_PROBE}"


def is_aws(text: str) -> bool:
    """Commands that need AWS (here: moto) rather than the local agent."""
    return (
        "--provider aws" in text
        or text.startswith(("kiln aws ", "kiln ci init"))
        or "build-ami.sh" in text
    )


@contextmanager
def aws_sandbox(root: Path, moto_url: str, home: Home) -> Iterator[Sandbox]:
    """An app with a [provider.aws] section, its ALB and target group, admin keys."""
    reset_moto(moto_url)
    env = {
        "AWS_ACCESS_KEY_ID": "AKIAADMINTESTING0000",
        "AWS_SECRET_ACCESS_KEY": "admin-secret",
        "AWS_REGION": REGION,
        "AWS_ENDPOINT_URL": moto_url,
    }
    admin = connect(
        AwsProvider(region=REGION, endpoint_url=moto_url),
        access_key_id=env["AWS_ACCESS_KEY_ID"],
        secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )
    world = build_world(admin, admin, BASE_AMI, delay=0)
    app = root / "app"
    world.config(
        app,
        extra_aws=f'base_image = "{BASE_AMI}"\nssh_cidr = "127.0.0.1/32"\n'
        'ssh_timeout = "20s"\nimage_timeout = "20s"',
    )
    (app / "app.py").write_text("print('hello')\n")
    (app / ".git").mkdir()  # the app's checkout, for `kiln ci init`
    ssh = SshServer()
    ssh.start()
    box = Sandbox(app, env=env)
    box.aws = AwsWorld(world, ssh, root / "builder-root", home)
    try:
        yield box
    finally:
        ssh.stop()
        box.aws.close()


class AwsWorld:
    """What the library does before a documented command can run through the CLI."""

    def __init__(self, world: World, ssh: SshServer, scratch: Path, home: Home) -> None:
        self.world, self.ssh, self.scratch, self.home = world, ssh, scratch, home
        self.stack = contextlib.ExitStack()

    def close(self) -> None:
        self.stack.close()

    def loaded(self, box: Sandbox) -> LoadedConfig:
        return load_config(box.cwd / "kiln.toml")

    def target(self, builder: Builder) -> SshTarget:
        self.ssh.authorize(builder.key)
        self.scratch.mkdir(exist_ok=True)
        return SshTarget(
            host="127.0.0.1",
            port=self.ssh.port,
            username="admin",
            key=builder.key,
            sudo=False,
            root=str(self.scratch),
        )

    def bake(self, box: Sandbox) -> str:
        """The first bake of this code, its builder reached over loopback SSH; the image."""
        result = bake_ami(self.loaded(box), self.home, aws=self.world.admin, ssh_target=self.target)
        return result.image

    def guard(self, box: Sandbox, text: str) -> None:
        """Refuse to run an AMI bake that would launch a builder and SSH off this machine."""
        if "bake --provider aws" not in text and "build-ami.sh" not in text:
            return
        image = json.loads(box.sh("kiln bake --json").stdout)["image"]
        amis = list_amis(self.world.admin, self.world.app)
        assert any(a.image == image for a in amis), (
            f"{text}: no AMI of {image} yet, so it would SSH to a moto builder's public "
            "address; bake it through the library first (AwsWorld.bake)"
        )

    def deploy(self, box: Sandbox) -> None:
        """One release on the fleet, its instances resolved to a local app process."""
        image = self.bake(box)
        address = self.stack.enter_context(app_process(200))
        self.world.addresses[image] = address
        fleet = open_deployments(
            self.home, self.loaded(box), aws=self.world.admin, resolve=self.world.resolve
        )
        assert fleet.deploy(image, reason="first release").ok


def _aws(box: Sandbox) -> AwsWorld:
    world: AwsWorld = box.aws
    return world


def forget_user(box: Sandbox) -> None:
    """A fresh account, as the doc's output shows: the user is created, not found."""
    iam: Aws = _aws(box).world.admin
    with contextlib.suppress(iam.iam.exceptions.NoSuchEntityException):
        for key in iam.iam.list_access_keys(UserName="deploy-user-web")["AccessKeyMetadata"]:
            iam.iam.delete_access_key(UserName="deploy-user-web", AccessKeyId=key["AccessKeyId"])
        for name in iam.iam.list_user_policies(UserName="deploy-user-web")["PolicyNames"]:
            iam.iam.delete_user_policy(UserName="deploy-user-web", PolicyName=name)
        iam.iam.delete_user(UserName="deploy-user-web")


def baked(box: Sandbox) -> None:
    _aws(box).bake(box)


def deployed(box: Sandbox) -> None:
    _aws(box).deploy(box)


def build_ami_script(box: Sandbox) -> None:
    """The script in the app's checkout; the CI secrets are the environment's keys."""
    (box.cwd / "scripts").mkdir(exist_ok=True)
    shutil.copy2(REPO / "examples/acebook/scripts/build-ami.sh", box.cwd / "scripts")
    baked(box)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        box.values[f"${{{{ secrets.{name} }}}}"] = f"${name}"


CREATE_USER = Step(
    prepare=forget_user,
    shows=(
        "created deploy-user-web (arn:aws:iam::123456789012:user/kiln/deploy-user-web), "
        "policy kiln-deploy",
        "store these as CI secrets now; the secret is not shown again:",
        "AWS_ACCESS_KEY_ID=AKIA",
        "AWS_SECRET_ACCESS_KEY=",
    ),
)

AWS: dict[str, dict[str, Step]] = {
    "docs/aws.md": {
        "kiln aws create-deploy-user --team web": CREATE_USER,
        "kiln aws policy": Step(shows=("KilnBakeCreateImage",)),
        "kiln bake --provider aws": Step(prepare=baked, shows=("ami-",)),
        "kiln images --provider aws": Step(shows=("ami-",)),
        "kiln prune --provider aws --keep 5": Step(),
        "kiln aws reap [--dry-run]": Step(
            prepare=lambda box: box.values.update({"[--dry-run]": "--dry-run"}),
            shows=("nothing to reap",),
        ),
        "AWS_ACCESS_KEY_ID=${{ secrets.AWS_ACCESS_KEY_ID }} AWS_SECRET_ACCESS_KEY=${{ "
        "secrets.AWS_SECRET_ACCESS_KEY }} AWS_REGION=eu-west-1 scripts/build-ami.sh > ami.json": (
            Step(prepare=build_ami_script)
        ),
        "kiln aws history": Step(prepare=deployed, shows=("succeeded",)),
        "kiln aws drift": Step(),
    },
    "docs/ci.md": {
        "kiln bake --provider aws --json > bake.json": Step(prepare=baked),
    },
    "README.md": {
        "kiln aws create-deploy-user --team web": CREATE_USER,
        "kiln bake --provider aws": Step(prepare=baked, shows=("ami-",)),
        "kiln ci init github": Step(shows=(".github/workflows/deploy.yml",)),
    },
}
