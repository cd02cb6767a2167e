"""The AWS side of the docs' commands: a moto server, a baked AMI, a deployed fleet.

The CLI runs for real against a moto server, in a VPC whose subnets are
carved from 127.0.0.0/16 (moto accepts it): every instance's private address
is a loopback one, and a responder binds a tiny HTTP app on each instance's
address and port as it appears, so kiln's own health probes reach "the
instance" without any traffic leaving this machine. Instances there get no
public address, so nothing can SSH off the machine either.

The one thing the CLI cannot do here is an AMI's first bake (SSH to the
builder): that goes through the library with the builder pointed at a loopback
SSH server, as tests/aws does, and the documented ``kiln bake --provider aws``
then reuses that AMI. A guard refuses any documented bake that would not.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from aws.awsservers import SshServer, free_port, reset_moto
from aws_deploy.awsworld import World
from docs.doccommands import REPO
from docs.sandbox import Sandbox, Step
from kiln.aws.ami import bake_ami
from kiln.aws.builder import Builder
from kiln.aws.images import list_amis
from kiln.aws.session import Aws, connect
from kiln.aws.ssh import SshTarget
from kiln.config import AwsSettings, LoadedConfig, load_config
from kiln.home import Home

REGION = "eu-west-1"
BASE_AMI = "ami-03cf127a"  # one of the public AMIs moto ships in every region


def is_aws(text: str) -> bool:
    """Commands that need AWS (here: moto) rather than the local agent."""
    return (
        "--provider aws" in text
        or text.startswith(("kiln aws ", "kiln ci init"))
        or "build-ami.sh" in text
        or "$RUNNER_TEMP" in text  # a step of the CI deploy job
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
        "RUNNER_TEMP": str(root / "runner-temp"),  # as GitHub Actions sets it
    }
    (root / "runner-temp").mkdir()
    admin = connect(
        AwsSettings(region=REGION, endpoint_url=moto_url),
        access_key_id=env["AWS_ACCESS_KEY_ID"],
        secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )
    world = loopback_world(admin)
    app = root / "app"
    port = free_port()
    world.config(
        app,
        extra_aws=f'base_image = "{BASE_AMI}"\nssh_cidr = "127.0.0.1/32"\n'
        f'ssh_timeout = "20s"\nimage_timeout = "20s"\nsubnet_id = "{world.subnets[0]}"\n'
        f"port = {port}",
    )
    (app / "app.py").write_text("print('hello')\n")
    (app / ".git").mkdir()  # the app's checkout, for `kiln ci init`
    ssh = SshServer()
    ssh.start()
    box = Sandbox(app, env=env)
    box.aws = AwsWorld(world, ssh, root / "builder-root", home)
    try:
        with Responder(admin, world.vpc, port):
            yield box
    finally:
        ssh.stop()


def loopback_world(admin: Aws) -> World:
    """A VPC in 127.0.0.0/16 with two subnets, an ALB, a listener and a target group."""
    vpc = admin.ec2.create_vpc(CidrBlock="127.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        admin.ec2.create_subnet(VpcId=vpc, CidrBlock=f"127.0.{n}.0/24", AvailabilityZone=zone)[
            "Subnet"
        ]["SubnetId"]
        for n, zone in ((1, f"{REGION}a"), (2, f"{REGION}b"))
    ]
    elb = admin.client("elbv2")
    balancer = elb.create_load_balancer(Name="shop-alb", Subnets=subnets)["LoadBalancers"][0]
    group = elb.create_target_group(
        Name="shop-tg", Protocol="HTTP", Port=3000, VpcId=vpc, HealthCheckPath="/health"
    )["TargetGroups"][0]["TargetGroupArn"]
    elb.create_listener(
        LoadBalancerArn=balancer["LoadBalancerArn"],
        Protocol="HTTP",
        Port=80,
        DefaultActions=[{"Type": "forward", "TargetGroupArn": group}],
    )
    elb.modify_target_group_attributes(
        TargetGroupArn=group,
        Attributes=[{"Key": "deregistration_delay.timeout_seconds", "Value": "0"}],
    )
    return World(
        admin=admin,
        deploy=admin,
        app="shop",
        vpc=vpc,
        subnets=subnets,
        target_group=group,
        dns=balancer["DNSName"],
        base_ami=BASE_AMI,
    )


class _Healthy(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, format: str, *args: object) -> None:
        pass


class Responder:
    """The app on every running instance: an HTTP server on its loopback address."""

    def __init__(self, admin: Aws, vpc: str, port: int) -> None:
        self.admin, self.vpc, self.port = admin, vpc, port
        self.servers: dict[str, ThreadingHTTPServer] = {}
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> Responder:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(timeout=10)
        for server in self.servers.values():
            server.shutdown()
            server.server_close()

    def _watch(self) -> None:
        filters = [
            {"Name": "vpc-id", "Values": [self.vpc]},
            {"Name": "instance-state-name", "Values": ["pending", "running"]},
        ]
        while not self.stopped.wait(0.05):
            found = self.admin.ec2.describe_instances(Filters=filters)["Reservations"]
            for ip in {i["PrivateIpAddress"] for r in found for i in r["Instances"]}:
                if ip not in self.servers and ip.startswith("127."):
                    server = ThreadingHTTPServer((ip, self.port), _Healthy)
                    threading.Thread(target=server.serve_forever, daemon=True).start()
                    self.servers[ip] = server


class AwsWorld:
    """What the library does before a documented command can run through the CLI."""

    def __init__(self, world: World, ssh: SshServer, scratch: Path, home: Home) -> None:
        self.world, self.ssh, self.scratch, self.home = world, ssh, scratch, home

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
        result = bake_ami(
            self.loaded(box),
            self.home,
            aws=self.world.admin,
            ssh_target=self.target,
            boot_test=True,  # for real: the responder answers on the test instance's address
        )
        assert result.verified
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
        """What part 2 starts from: the fleet deployed, through the CLI."""
        self.bake(box)
        box.sh("kiln deploy --provider aws")


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
        attached = iam.iam.list_attached_user_policies(UserName="deploy-user-web")
        for policy in attached["AttachedPolicies"]:
            iam.iam.detach_user_policy(UserName="deploy-user-web", PolicyArn=policy["PolicyArn"])
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


def stranger(box: Sandbox) -> None:
    """Something kiln did not launch, registered in the fleet's target group by hand."""
    world = _aws(box).world
    found = world.admin.ec2.run_instances(
        ImageId=BASE_AMI, MinCount=1, MaxCount=1, SubnetId=world.subnets[0]
    )
    instance = found["Instances"][0]["InstanceId"]
    world.admin.client("elbv2").register_targets(
        TargetGroupArn=world.target_group, Targets=[{"Id": instance}]
    )
    box.values["STRANGER"] = instance


def ami_in_result(box: Sandbox) -> None:
    """stdout is one JSON object, the AMI id under .ami."""
    result = json.loads((Path(box.env["RUNNER_TEMP"]) / "ami.json").read_text())
    assert result["ami"].startswith("ami-") and result["reused"] is True


CREATE_USER = Step(
    prepare=forget_user,
    shows=(
        "created deploy-user-web (arn:aws:iam::123456789012:user/kiln/deploy-user-web), "
        "policies kiln-web-bake, kiln-web-deploy",
        "store these as CI secrets now; the secret is not shown again:",
        "AWS_ACCESS_KEY_ID=AKIA",
        "AWS_SECRET_ACCESS_KEY=",
    ),
)

AWS: dict[str, dict[str, Step]] = {
    "docs/aws.md": {
        "kiln aws create-deploy-user --team web": CREATE_USER,
        "kiln aws policy": Step(shows=("KilnBakeCreateImage",)),
        "kiln aws policy --builder --json": Step(shows=("ssmmessages:CreateControlChannel",)),
        "kiln bake --provider aws": Step(prepare=baked, shows=("ami-",)),
        "kiln images --provider aws": Step(shows=("ami-",)),
        "kiln prune --provider aws --keep 5": Step(),
        "kiln aws reap [--dry-run]": Step(
            prepare=lambda box: box.values.update({"[--dry-run]": "--dry-run"}),
            shows=("nothing to reap",),
        ),
        "AWS_ACCESS_KEY_ID=${{ secrets.AWS_ACCESS_KEY_ID }} AWS_SECRET_ACCESS_KEY=${{ "
        "secrets.AWS_SECRET_ACCESS_KEY }} AWS_REGION=eu-west-1 scripts/build-ami.sh "
        '> "$RUNNER_TEMP/ami.json"': Step(prepare=build_ami_script, then=ami_in_result),
        "kiln aws status": Step(prepare=deployed, shows=("attached", "127.0.1.")),
        "kiln aws history": Step(shows=("succeeded",)),
        # the doc's comment: "exit 6 when something is not what kiln launched"
        "kiln aws drift": Step(prepare=stranger, exit=6, shows=("STRANGER",)),
        "kiln aws recycle --max-age 7d": Step(),
    },
    "docs/ci.md": {
        'kiln bake --provider aws --boot-test --json > "$RUNNER_TEMP/bake.json"': Step(
            prepare=baked
        ),
        'kiln deploy --provider aws --json > "$RUNNER_TEMP/deploy.json"': Step(),
        'kiln ci summary "$RUNNER_TEMP/bake.json" "$RUNNER_TEMP/deploy.json"': Step(
            shows=("succeeded", "ami-")
        ),
    },
    "README.md": {
        "kiln aws create-deploy-user --team web": CREATE_USER,
        "kiln bake --provider aws": Step(prepare=baked, shows=("ami-",)),
        "kiln deploy --provider aws": Step(shows=("serves img-",)),
        "kiln ci init github": Step(shows=(".github/workflows/deploy.yml",)),
    },
}
