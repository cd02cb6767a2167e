"""Systems Manager Run Command as a bake's way to its builder: no key, no inbound port.

Like Packer's ``ssh_interface = "session_manager"``, but with nothing to
install on the runner: every operation is ``SendCommand`` with the
``AWS-RunShellScript`` document, then ``GetCommandInvocation`` until it ends.
The builder's SSM agent reaches out to Systems Manager (HTTPS from the
builder's subnet: a NAT gateway or VPC endpoints), so its security group
admits nothing.

Run Command has no stdin: a file travels gzipped, base64 in the command's
text, ``CHUNK`` bytes per command, appended on the builder and unpacked when
complete; :func:`kiln.aws.transport.provision` then checks its sha256 there.
"""

from __future__ import annotations

import base64
import gzip
import shlex
import tempfile
import time
from collections.abc import Callable
from typing import Any

import botocore.exceptions

from kiln.aws.session import aws_errors
from kiln.aws.transport import Note, Ran, Upload, parent
from kiln.errors import AwsError

DOCUMENT = "AWS-RunShellScript"
CHUNK = 24 * 1024  # raw bytes per command: 32 KiB of base64, well inside Run Command's limits
RUN_TIMEOUT = 3600  # seconds a command may run on the builder (the installer, at most)
DONE = {"Success", "Failed", "Cancelled", "TimedOut", "Cancelling"}
# the agent has not registered yet: SendCommand refuses the instance until it has
NOT_YET = {"InvalidInstanceId"}


class SsmTransport:
    """:class:`~kiln.aws.transport.Transport` over Run Command; commands run as root."""

    name = "Systems Manager"
    sudo = False

    def __init__(
        self,
        client: Any,
        instance_id: str,
        *,
        root: str = "/",
        poll: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client, self.instance_id, self.root = client, instance_id, root
        self.where = f"{instance_id} (Run Command)"
        self.poll, self.sleep = poll, sleep

    def open(self, timeout: float, note: Note) -> None:
        """Until the builder's agent has registered and runs a command."""
        deadline = time.monotonic() + timeout
        delay, last = 1.0, "not registered"
        while True:
            try:
                ran = self.run("true")
                if ran.exit_status == 0:
                    return
                last = f"exit {ran.exit_status}: {ran.last_error}"
            except _NotYet as exc:
                last = str(exc)
            if time.monotonic() + delay > deadline:
                raise AwsError(
                    f"the builder {self.instance_id} did not answer Systems Manager within "
                    f"{timeout:g}s (last: {last})",
                    hint="the builder needs builder_instance_profile with the agent's "
                    "permissions ('kiln aws policy --builder') and HTTPS to SSM from its "
                    "subnet (a NAT gateway or VPC endpoints); raise ssh_timeout for slow bases",
                )
            note(f"waiting for {self.instance_id} to register with Systems Manager: {last}")
            self.sleep(delay)
            delay = min(delay * 2, 10.0)

    def put(self, item: Upload) -> None:
        """Gzip, then append ``CHUNK``-byte pieces in base64; unpack when all are there."""
        dest = shlex.quote(item.dest)
        part = shlex.quote(item.dest + ".gz.part")
        self._must(f"umask 077 && mkdir -p {parent(item.dest)} && : > {part}", item)
        with tempfile.TemporaryFile() as packed:
            with item.source.open("rb") as f, gzip.GzipFile(fileobj=packed, mode="wb") as z:
                while block := f.read(1 << 20):
                    z.write(block)
            packed.seek(0)
            while chunk := packed.read(CHUNK):
                text = base64.b64encode(chunk).decode("ascii")
                self._must(f"printf '%s' '{text}' | base64 -d >> {part}", item)
        self._must(f"umask 077 && gzip -dc {part} > {dest} && rm -f {part}", item)

    def run(self, command: str) -> Ran:
        with aws_errors(f"sending a command to {self.instance_id}"):
            try:
                sent = self.client.send_command(
                    InstanceIds=[self.instance_id],
                    DocumentName=DOCUMENT,
                    Parameters={"commands": [command], "executionTimeout": [str(RUN_TIMEOUT)]},
                    TimeoutSeconds=60,  # to be delivered: the agent is up by now
                    Comment="kiln bake",
                )
            except botocore.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in NOT_YET:
                    raise _NotYet(str(exc.response["Error"].get("Message", ""))) from None
                raise
        return self._wait(str(sent["Command"]["CommandId"]))

    def close(self) -> None:
        """Nothing is held open between commands."""

    def _wait(self, command_id: str) -> Ran:
        while True:
            with aws_errors(f"reading a command's result on {self.instance_id}"):
                try:
                    found = self.client.get_command_invocation(
                        CommandId=command_id, InstanceId=self.instance_id
                    )
                except botocore.exceptions.ClientError as exc:
                    if exc.response.get("Error", {}).get("Code") != "InvocationDoesNotExist":
                        raise
                    found = {"Status": "Pending"}  # sent a moment ago: not listed yet
            status = str(found.get("Status", "Pending"))
            if status in DONE:
                break
            self.sleep(self.poll)
        code = int(found.get("ResponseCode", -1))
        if status != "Success" and code == 0:
            code = -1  # cancelled or timed out: no exit status of its own
        stderr = str(found.get("StandardErrorContent") or "")
        if status in {"Cancelled", "TimedOut", "Cancelling"}:
            stderr += f"\nRun Command {status.lower()}"
        return Ran(code, str(found.get("StandardOutputContent") or ""), stderr)

    def _must(self, command: str, item: Upload) -> None:
        ran = self.run(command)
        if ran.exit_status != 0:
            raise AwsError(f"upload of {item.source.name} failed: {ran.last_error}")


class _NotYet(Exception):
    """The instance is not (yet) a managed instance of Systems Manager."""
