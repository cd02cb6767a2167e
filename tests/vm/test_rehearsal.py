"""The AMI bake rehearsed on real booted machines.

kiln's own bake code (``build_ami``: key pair, security group, builder, the
SSH session, upload, ``sudo`` install.sh, stop, CreateImage) runs with the
EC2 side on moto and the builder a real Debian VM booted from the lab's
AMI-shaped base disk, given the user data and key kiln passed to
RunInstances. StopInstances presses the VM's ACPI power button, as EC2 does,
and the bake waits for it to power off. Then two "instances" boot from the
builder's disk (the AMI), each with its own overlay and NoCloud seed, the
way an Auto Scaling group launches them, and a third as a release runner
(kiln's user data for one), and the test checks what only a booted machine
can show.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import asyncssh
import pytest
import yaml
from vmlab import GUEST_HOST, Seed, Vm, wait_for

from kiln.aws.ami import build_ami
from kiln.aws.boottest import boot_test_user_data
from kiln.aws.builder import Builder
from kiln.aws.oneoff import release_user_data, result_parameter
from kiln.aws.session import Aws, connect
from kiln.aws.ssh import SshTarget
from kiln.config import AwsSettings, load_config
from kiln.home import Home
from kiln.image.bake import bake
from kiln.image.store import Store

pytestmark = [pytest.mark.slow, pytest.mark.vm, pytest.mark.aws, pytest.mark.timeout(3600)]

# moto's instance metadata (served by the same moto server) says us-east-1.
REGION = "us-east-1"
SOURCE_AMI = "ami-03cf127a"
PORT = 8080
# what the release runner shows: the app's unit held back, its user, a secret
RELEASE = (
    "echo unit $(systemctl is-active kiln-acme); echo user $(id -un); echo secret $DB_PASSWORD;"
    " touch $HOME/.release && echo home $HOME"
)
BOOT_TIMEOUT = 900  # TCG on a shared 2-core machine: minutes per boot

APP = """\
import json, os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SHOWN = ("DB_PASSWORD", "API_TOKEN", "GREETING", "KILN_IMAGE", "HOME", "XDG_RUNTIME_DIR")


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            body = b"ok\\n"
        elif self.path == "/env":
            shown = {k: os.environ.get(k) for k in SHOWN}
            shown["home_writable"] = os.access(os.environ.get("HOME", "/"), os.W_OK)
            body = json.dumps(shown).encode()
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


ThreadingHTTPServer((os.environ["HOST"], int(os.environ["PORT"])), Handler).serve_forever()
"""


def _lab_user_data(app: str) -> str:
    """What the lab's launch adds: where IMDS and SSM are (moto, through guestfwd).

    On EC2 fetch-secrets finds both at their well-known addresses; in the lab
    they are moto on the host, so a drop-in points the unit at them. bootcmd
    runs in cloud-init's network stage, before sysinit.target, so the unit
    is loaded with it on the very first boot.
    """
    dropin = f"/etc/systemd/system/kiln-{app}.service.d"
    conf = (
        "[Service]\\n"
        f"Environment=KILN_IMDS_ENDPOINT=http://{GUEST_HOST}\\n"
        f"Environment=KILN_SSM_ENDPOINT=http://{GUEST_HOST}/\\n"
    )
    script = f"mkdir -p {dropin} && printf '{conf}' > {dropin}/lab.conf && systemctl daemon-reload"
    return "#cloud-config\nbootcmd:\n  - " + json.dumps(["sh", "-c", script]) + "\n"


def _with_boot_test(lab: str, app: str) -> str:
    """The lab's user data and what kiln gives a boot test's instance, in one document."""
    docs = [yaml.safe_load(lab), yaml.safe_load(boot_test_user_data(app))]
    return "#cloud-config\n" + yaml.safe_dump({"bootcmd": [c for d in docs for c in d["bootcmd"]]})


def _lab_runner_user_data(app: str, parameter: str) -> str:
    """The release runner's own user data, its command pointed at the lab's IMDS and SSM."""
    doc = yaml.safe_load(release_user_data(app, parameter, 300))
    endpoints = [
        f"KILN_IMDS_ENDPOINT=http://{GUEST_HOST}",
        f"KILN_SSM_ENDPOINT=http://{GUEST_HOST}/",
    ]
    doc["runcmd"] = [["env", *endpoints, *argv] for argv in doc["runcmd"]]
    return "#cloud-config\n" + yaml.safe_dump(doc)


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read()
    except OSError:
        return 0, b""


async def _run(port: int, key: asyncssh.SSHKey, commands: list[str]) -> list[str]:
    """Run commands over one SSH connection (a handshake costs seconds under TCG)."""
    async with asyncssh.connect(
        "127.0.0.1",
        port=port,
        username="admin",
        client_keys=[key],
        known_hosts=None,
        agent_path=None,
        config=[],
        connect_timeout=30,
    ) as conn:
        return [str((await conn.run(command, check=True)).stdout) for command in commands]


def ssh(vm: Vm, key: asyncssh.SSHKey, command: str) -> str:
    return asyncio.run(_run(vm.ports[22], key, [command]))[0]


FACTS = {
    "machine_id": "cat /etc/machine-id",
    "authorized_keys": "sudo -n sh -c 'cat /root/.ssh/authorized_keys /home/*/.ssh/authorized_keys'"
    " 2>/dev/null || true",
    "unit": "echo $(systemctl is-enabled kiln-acme) $(systemctl is-active kiln-acme)"
    " $(systemctl show -p NRestarts --value kiln-acme)",
    "journal": "sudo -n journalctl -b -u kiln-acme --no-pager -o cat",
    "boot_id": "cat /proc/sys/kernel/random/boot_id",
    "host_keys": "sudo -n sh -c 'cat /etc/ssh/ssh_host_*_key.pub'",
    "cloud_instances": "ls /var/lib/cloud/instances",
}


def _facts(vm: Vm, key: asyncssh.SSHKey) -> dict[str, str]:
    outputs = asyncio.run(_run(vm.ports[22], key, list(FACTS.values())))
    return {name: out.strip() for name, out in zip(FACTS, outputs, strict=True)}


def _ssh_ready(vm: Vm, key: asyncssh.SSHKey) -> bool:
    try:
        ssh(vm, key, "true")
    except (OSError, asyncssh.Error, TimeoutError):
        return False
    return True


def _host_fingerprints(console: str) -> set[str]:
    """Host key fingerprints on the serial console: ssh-keygen's as cloud-init makes the keys."""
    found = set(re.findall(r"SHA256:[A-Za-z0-9+/]{43}", console))
    assert found, "no host key fingerprints on the console"
    return found


@pytest.fixture
def lab_aws(lab_moto: str, monkeypatch: pytest.MonkeyPatch) -> Aws:
    import requests

    requests.post(f"{lab_moto}/moto-api/reset", timeout=10).raise_for_status()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAADMINTESTING0000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "admin-secret")
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_ENDPOINT_URL", lab_moto)
    return connect(AwsSettings())


def test_baked_ami_boots_as_a_fleet(
    vm_base: Path,
    lab_aws: Aws,
    lab_moto: str,
    home: Home,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    aws = lab_aws
    moto_port = int(lab_moto.rsplit(":", 1)[1])
    timings: dict[str, float] = {}  # printed at the end: the figures docs/aws.md quotes
    marks: dict[str, float] = {}
    started = time.monotonic()

    # The account: a base AMI (stands for Debian's), and the app's secrets in SSM.
    source = aws.ec2.run_instances(ImageId=SOURCE_AMI, MinCount=1, MaxCount=1)
    instance = source["Instances"][0]["InstanceId"]
    base_ami = aws.ec2.create_image(InstanceId=instance, Name="debian-12-amd64-lab")["ImageId"]
    aws.ec2.terminate_instances(InstanceIds=[instance])
    ssm = aws.client("ssm")
    ssm.put_parameter(Name="/acme/DB_PASSWORD", Value="s3cr3t 'pw'", Type="SecureString")
    ssm.put_parameter(Name="/shared/api-token", Value="tok-123", Type="String")

    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "app.py").write_text(APP)
    (app_dir / "kiln.toml").write_text(
        f"""
[app]
name = "acme"
run = "python3 app.py"
release = "{RELEASE}"

[env]
GREETING = 'say "hi"'

[secrets]
DB_PASSWORD = "env:DB_PASSWORD"
API_TOKEN = "ssm:/shared/api-token"

[provider.aws]
base_image = "{base_ami}"
ssh_cidr = "127.0.0.1/32"
ssh_timeout = "{BOOT_TIMEOUT}s"
image_timeout = "60s"
port = {PORT}
"""
    )
    loaded = load_config(app_dir / "kiln.toml")
    store = Store(home)
    record = store.get(bake(loaded, home).image)

    # The builder: a VM given what kiln gave RunInstances (user data, key pair).
    vms: list[Vm] = []
    builder_keys: list[str] = []
    work = tmp_path / "vms"

    def builder_target(builder: Builder) -> SshTarget:
        described = aws.ec2.describe_instances(InstanceIds=[builder.instance_id])
        key_name = described["Reservations"][0]["Instances"][0]["KeyName"]
        pair = aws.ec2.describe_key_pairs(KeyNames=[key_name], IncludePublicKey=True)
        user_data = aws.ec2.describe_instance_attribute(
            InstanceId=builder.instance_id, Attribute="userData"
        )["UserData"]["Value"]
        builder_keys.append(pair["KeyPairs"][0]["PublicKey"])
        seed = Seed(
            instance_id=builder.instance_id,
            user_data=base64.b64decode(user_data).decode(),
            public_keys=(builder_keys[0],),
            hostname="kiln-builder",
        )
        vm = Vm("builder", vm_base, vm_base / "disk.qcow2", work, seed)
        vms.append(vm)
        vm.start()
        marks["builder started"] = time.monotonic()
        return SshTarget(host="127.0.0.1", port=vm.ports[22], username="admin", key=builder.key)

    def power_off(**_kwargs: Any) -> None:
        """EC2's StopInstances: the ACPI power button, then wait for power-off."""
        vm = vms[0]
        marks["installed"] = time.monotonic()
        vm.power_button()
        vm.wait_exit(600)
        timings["builder power-off"] = time.monotonic() - marks["installed"]

    aws.ec2.meta.events.register("before-call.ec2.StopInstances", power_off)
    steps: list[str] = []

    def progress(message: str) -> None:
        steps.append(message)
        if message.startswith("SSH up"):
            marks["ssh up"] = time.monotonic()

    try:
        result = build_ami(
            store, record, loaded.config, aws=aws, progress=progress, ssh_target=builder_target
        )
    finally:
        for vm in vms:
            vm.kill()
    assert steps and any("SSH up" in s for s in steps), steps
    builder_vm = vms[0]
    ami = aws.ec2.describe_images(ImageIds=[result.ami])["Images"][0]
    assert ami["State"] == "available"
    builder = aws.ec2.describe_instances(InstanceIds=[builder_vm.seed.instance_id])
    assert builder["Reservations"][0]["Instances"][0]["State"]["Name"] == "terminated"
    builder_key_blob = builder_keys[0].split()[1]
    timings["builder boot to SSH"] = marks["ssh up"] - marks["builder started"]
    timings["upload and install"] = marks["installed"] - marks["ssh up"]
    timings["bake"] = time.monotonic() - started

    # Two instances from the AMI (the builder's disk), as an ASG launches them.
    lab_key = asyncssh.generate_private_key("ssh-ed25519")
    lab_pub = lab_key.export_public_key().decode().strip()
    clones = [
        Vm(
            name,
            vm_base,
            builder_vm.disk,
            work,
            Seed(
                instance_id=f"i-{name}",
                # clone-b boots as a boot test's instance would: the app's output on
                # the serial console too
                user_data=(
                    _with_boot_test(_lab_user_data("acme"), "acme")
                    if name == "clone-b"
                    else _lab_user_data("acme")
                ),
                public_keys=(lab_pub,),
                hostname=name,
            ),
            guest_ports=(22, PORT),
            guestfwd={80: moto_port},
        )
        for name in ("clone-a", "clone-b")
    ]
    # And a release runner from the AMI, with the user data kiln gives one.
    parameter = result_parameter("acme", "kr-rehearsal01")
    runner = Vm(
        "runner",
        vm_base,
        builder_vm.disk,
        work,
        Seed(instance_id="i-runner", user_data=_lab_runner_user_data("acme", parameter)),
        guestfwd={80: moto_port},
    )
    try:
        marks["clones started"] = time.monotonic()
        for vm in [*clones, runner]:
            vm.start()

        # The app answers its health check on the configured port before anyone logs in.
        def healthy(vm: Vm) -> float:
            return wait_for(
                f"{vm.name} /health",
                lambda: _get(vm.ports[PORT], "/health")[0] == 200,
                timeout=BOOT_TIMEOUT,
                vm=vm,
            )

        with ThreadPoolExecutor(2) as pool:
            boots = list(pool.map(healthy, clones))
        timings["clones boot to healthy"] = max(boots)

        # The runner ran the release once, as the unit's user with its secrets, the app's
        # own unit held back, reported to SSM and powered itself off (EC2: terminated).
        runner.wait_exit(BOOT_TIMEOUT)
        timings["release runner boot to power-off"] = time.monotonic() - marks["clones started"]
        report = json.loads(ssm.get_parameter(Name=parameter)["Parameter"]["Value"])
        assert report["exit_code"] == 0, report
        assert report["output"].splitlines() == [
            "unit inactive",
            "user kiln",
            "secret s3cr3t 'pw'",
            "home /var/lib/kiln-acme",  # the unit's HOME, which it can write
        ], report

        for vm in clones:
            status, body = _get(vm.ports[PORT], "/env")
            assert status == 200
            env = json.loads(body)
            # secrets from moto's SSM through fetch-secrets, baked env, the image id
            assert env == {
                "DB_PASSWORD": "s3cr3t 'pw'",
                "API_TOKEN": "tok-123",
                "GREETING": 'say "hi"',
                "KILN_IMAGE": record.id,
                # a HOME it can write (pm2, npm, caches): the kiln user's is /nonexistent
                "HOME": "/var/lib/kiln-acme",
                "home_writable": True,
                "XDG_RUNTIME_DIR": "/run/kiln-acme",
            }, env

        # A boot test's instance shows the app's own output on its console (EC2 shows the
        # console, never the journal): here the app's request log, "GET /health" 200. A
        # fleet instance's console stays the system's.
        wait_for(
            "the app's output on clone-b's console",
            lambda: '"GET /health HTTP/1.1" 200' in clones[1].console(),
            timeout=60,
            vm=clones[1],
        )
        assert '"GET /health HTTP/1.1"' not in clones[0].console()

        # Now log in (the lab's own key, from each clone's metadata) and look.
        for clone in clones:
            wait_for(
                f"{clone.name} SSH", partial(_ssh_ready, clone, lab_key), timeout=300, vm=clone
            )
        facts = {vm.name: _facts(vm, lab_key) for vm in clones}
        for name, fact in facts.items():
            assert re.fullmatch(r"[0-9a-f]{32}", fact["machine_id"]), (name, fact)
            assert lab_pub.split()[1] in fact["authorized_keys"], name
            assert builder_key_blob not in fact["authorized_keys"], name
            assert fact["unit"] == "enabled active 0", (name, fact)
            assert "fetch-secrets: 2 secrets resolved" in fact["journal"], (name, fact)
            # cloud-init saw a new instance and nothing of the builder's run survived
            assert fact["cloud_instances"] == f"i-{name}", (name, fact)
        for what in ("machine_id", "host_keys"):
            assert facts["clone-a"][what] != facts["clone-b"][what], what
        prints = [_host_fingerprints(vm.console()) for vm in (builder_vm, *clones)]
        assert not (prints[0] & prints[1]) and not (prints[0] & prints[2])
        assert not (prints[1] & prints[2])

        # A reboot brings the app back, secrets and all, with no one logging in.
        vm = clones[0]
        old_boot = facts[vm.name]["boot_id"]
        reboot_started = time.monotonic()
        with contextlib.suppress(OSError, asyncssh.Error):  # the session may die with it
            ssh(vm, lab_key, "sudo -n systemctl reboot")
        timings["reboot: app down"] = wait_for(
            f"{vm.name} to go down",
            lambda: _get(vm.ports[PORT], "/health")[0] != 200,
            timeout=300,
            vm=vm,
        )
        healthy(vm)
        timings["reboot to healthy"] = time.monotonic() - reboot_started
        status, body = _get(vm.ports[PORT], "/env")
        assert status == 200 and json.loads(body)["DB_PASSWORD"] == "s3cr3t 'pw'"
        wait_for(f"{vm.name} SSH", lambda: _ssh_ready(vm, lab_key), timeout=300, vm=vm)
        new_boot = ssh(vm, lab_key, "cat /proc/sys/kernel/random/boot_id").strip()
        assert new_boot != old_boot
    finally:
        for vm in [*clones, runner]:
            vm.kill()
    timings["total"] = time.monotonic() - started
    figures = {k: round(v, 1) for k, v in timings.items()}
    print("rehearsal seconds:", figures)
    record_property("figures", f"rehearsal seconds {figures}, load {os.getloadavg()[0]:.1f}")
