"""A small VM lab: Debian machines booted under QEMU from the cached base disk.

Each machine is a copy-on-write qcow2 overlay on a disk (the base, or another
machine's disk: an "AMI") plus a NoCloud seed ISO carrying its metadata and
user data, exactly the pieces EC2 hands an instance. Networking is QEMU
user-mode with ``restrict=on``: the guest reaches nothing outside QEMU; the
host reaches guest ports through ``hostfwd`` on 127.0.0.1; the guest reaches
a host service only through an explicit ``guestfwd`` address.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Captured at import: the suite's autouse fixture points HOME at a temporary directory.
CACHE = Path(
    os.environ.get("KILN_VM_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kiln-vm"
)
GUEST_HOST = "10.0.2.100"  # where a guest finds the host service given to guestfwd
MEMORY_MB = 768
# Two vCPUs: QEMU runs each on its own host thread (multi-threaded TCG), so a
# lone builder boots on both cores; two clones booting together share them.
CPUS = int(os.environ.get("KILN_VM_CPUS") or 2)


def base_dir() -> Path:
    """The cache directory of the current base disk (it may not be built yet)."""
    out = subprocess.run(
        [str(REPO / "scripts/vm-base.sh"), "--path"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "KILN_VM_CACHE": str(CACHE)},
    )
    return Path(out.stdout.strip())


def build_base() -> Path:
    """Build the base disk if missing (minutes: Debian from the mirror)."""
    subprocess.run(
        [str(REPO / "scripts/vm-base.sh")],
        check=True,
        env={**os.environ, "KILN_VM_CACHE": str(CACHE)},
    )
    return base_dir()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_accel: str | None = None


def accelerator(base: Path) -> str:
    """KVM when it really boots a kernel here, else TCG (``KILN_VM_ACCEL`` overrides).

    ``/dev/kvm`` can exist and still hang before the first kernel line (nested
    virtualisation), so the probe boots the kernel without a root disk and
    waits for its banner on the serial console.
    """
    global _accel
    if _accel is None:
        _accel = os.environ.get("KILN_VM_ACCEL") or _probe_kvm(base)
    return _accel


def _probe_kvm(base: Path) -> str:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    command = [
        "qemu-system-x86_64",
        "-accel",
        "kvm",
        "-m",
        "256",
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
        "-serial",
        "stdio",
        "-kernel",
        str(base / "vmlinuz"),
        "-append",
        "console=ttyS0 panic=-1",
    ]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    seen = b""
    deadline = time.monotonic() + 15
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            seen += proc.stdout.read() or b""
            if b"Linux version" in seen:
                return "kvm"
            time.sleep(0.2)
        return "kvm" if b"Linux version" in seen else "tcg"
    finally:
        proc.kill()
        proc.wait()


@dataclass(frozen=True)
class Seed:
    """What EC2's metadata service would tell an instance, as a NoCloud seed."""

    instance_id: str
    user_data: str
    public_keys: tuple[str, ...] = ()
    hostname: str = "kiln-lab"

    def write(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        meta = {
            "instance-id": self.instance_id,
            "local-hostname": self.hostname,
            "public-keys": list(self.public_keys),
        }
        (directory / "meta-data").write_text(json.dumps(meta, indent=1) + "\n")
        (directory / "user-data").write_text(self.user_data)
        (directory / "network-config").write_text(
            "version: 2\nethernets:\n  eth0:\n    dhcp4: true\n"
        )
        iso = directory.with_suffix(".iso")
        subprocess.run(
            [
                *("genisoimage", "-quiet", "-output", str(iso), "-volid", "cidata"),
                *("-joliet", "-rock"),
                *(str(directory / name) for name in ("user-data", "meta-data", "network-config")),
            ],
            check=True,
        )
        return iso


@dataclass
class Vm:
    """One machine: its own overlay disk, seed, ports and serial console log."""

    name: str
    base: Path  # the base disk's cache directory (kernel, initrd)
    backing: Path  # the disk this machine's overlay starts from
    workdir: Path
    seed: Seed
    guest_ports: tuple[int, ...] = (22,)
    guestfwd: dict[int, int] = field(default_factory=dict)  # guest port on GUEST_HOST -> host
    ports: dict[int, int] = field(default_factory=dict)  # guest port -> 127.0.0.1 port
    proc: subprocess.Popen[bytes] | None = None

    @property
    def disk(self) -> Path:
        return self.workdir / f"{self.name}.qcow2"

    @property
    def console_log(self) -> Path:
        return self.workdir / f"{self.name}.console.log"

    @property
    def qmp_path(self) -> Path:
        return self.workdir / f"{self.name}.qmp"

    def console(self) -> str:
        try:
            return self.console_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def create_disk(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                *("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2"),
                *("-b", str(self.backing), str(self.disk)),
            ],
            check=True,
        )

    def start(self) -> None:
        """Boot (creating the overlay on first start; a later start reuses it)."""
        if not self.disk.exists():
            self.create_disk()
        iso = self.seed.write(self.workdir / f"{self.name}-seed")
        if not self.ports:
            self.ports = {port: free_port() for port in self.guest_ports}
        netdev = ["user", "id=net0", "restrict=on"]
        netdev += [f"hostfwd=tcp:127.0.0.1:{h}-:{g}" for g, h in self.ports.items()]
        netdev += [
            f"guestfwd=tcp:{GUEST_HOST}:{g}-cmd:socat - TCP:127.0.0.1:{h}"
            for g, h in self.guestfwd.items()
        ]
        command = [
            "qemu-system-x86_64",
            "-name",
            self.name,
            "-accel",
            accelerator(self.base),
            "-m",
            str(MEMORY_MB),
            "-smp",
            str(CPUS),
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-kernel",
            str(self.base / "vmlinuz"),
            "-initrd",
            str(self.base / "initrd.img"),
            "-append",
            "root=/dev/vda rw console=ttyS0 net.ifnames=0 tsc=reliable",
            "-drive",
            f"file={self.disk},if=virtio,format=qcow2",
            "-drive",
            f"file={iso},if=virtio,format=raw,media=cdrom,readonly=on",
            "-netdev",
            ",".join(netdev),
            "-device",
            "virtio-net-pci,netdev=net0",
            "-device",
            "virtio-rng-pci",
            "-serial",
            f"file:{self.console_log}",
            "-qmp",
            f"unix:{self.qmp_path},server=on,wait=off",
        ]
        with (self.workdir / f"{self.name}.qemu.log").open("ab") as log:
            self.proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def _qmp(self, command: str) -> None:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(self.qmp_path))
            f = s.makefile("rwb")
            f.readline()  # greeting
            for execute in ("qmp_capabilities", command):
                f.write(json.dumps({"execute": execute}).encode() + b"\n")
                f.flush()
                while b'"return"' not in (line := f.readline()):
                    if not line or b'"error"' in line:
                        raise RuntimeError(f"QMP {execute}: {line!r}")

    def power_button(self) -> None:
        """ACPI power button: what EC2's StopInstances does to a running instance."""
        self._qmp("system_powerdown")

    def wait_exit(self, timeout: float) -> None:
        assert self.proc is not None
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} still running after {timeout:g}s\n{self.console()[-3000:]}"
            ) from None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def wait_for(
    what: str, check: Callable[[], bool], *, timeout: float, vm: Vm | None = None
) -> float:
    """Poll ``check`` until true; the seconds it took. On timeout, the console tail."""
    started = time.monotonic()
    while not check():
        if vm is not None and not vm.running():
            raise AssertionError(
                f"{vm.name} exited while waiting for {what}\n{vm.console()[-3000:]}"
            )
        if time.monotonic() - started > timeout:
            tail = vm.console()[-3000:] if vm else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}\n{tail}")
        time.sleep(1)
    return time.monotonic() - started


def have_tools() -> str | None:
    """Why the lab cannot run here, or None."""
    for tool in ("qemu-system-x86_64", "qemu-img", "genisoimage", "socat"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (scripts/vm-deps.sh installs the lab's tools)"
    return None
