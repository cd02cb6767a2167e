"""Run Command, as a test double that really runs each command, here, in /bin/sh.

moto records ``SendCommand`` and answers ``GetCommandInvocation`` with a
success, but runs nothing. :class:`LocalSsm` is a boto3-shaped SSM client
whose commands run on this machine (the bake installs into a scratch root,
as the SSH tests' loopback server does). With ``forward`` (a real boto3 client
on moto) every call is made there first, so its shape, its IAM action and
its ids are AWS's; only the running is ours.

What it imitates of the real agent: the script runs with ``/bin/sh``, as
root would (here: as this user), its output is cut as AWS cuts it
(``StandardOutputContent`` to 24,000 characters), a command is ``InProgress``
for ``pending_polls`` reads before its result, and an agent that has not
registered yet makes ``SendCommand`` fail with ``InvalidInstanceId``.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import botocore.exceptions

OUTPUT_LIMIT = 24_000


@dataclass
class LocalSsm:
    forward: Any = None  # a boto3 SSM client (moto): every call goes there too
    unregistered: int = 0  # SendCommand calls refused before the agent "registers"
    pending_polls: int = 1
    tamper: Callable[[str], str | None] | None = None  # rewrite (or None: skip) a script
    scripts: list[str] = field(default_factory=list)  # what ran, in order
    _results: dict[str, dict[str, Any]] = field(default_factory=dict)
    _polls: dict[str, int] = field(default_factory=dict)

    def send_command(self, **request: Any) -> dict[str, Any]:
        if self.unregistered > 0:
            self.unregistered -= 1
            error = {"Code": "InvalidInstanceId", "Message": "Instances not in a valid state"}
            raise botocore.exceptions.ClientError({"Error": error}, "SendCommand")
        assert request["DocumentName"] == "AWS-RunShellScript", request
        (script,) = request["Parameters"]["commands"]
        if self.forward is not None:
            sent: dict[str, Any] = self.forward.send_command(**request)
        else:
            sent = {"Command": {"CommandId": str(uuid.uuid4())}}
        command_id = sent["Command"]["CommandId"]
        self._results[command_id] = self._run(script)
        self._polls[command_id] = self.pending_polls
        return sent

    def get_command_invocation(self, *, CommandId: str, InstanceId: str) -> dict[str, Any]:
        if self.forward is not None:
            self.forward.get_command_invocation(CommandId=CommandId, InstanceId=InstanceId)
        if self._polls[CommandId] > 0:
            self._polls[CommandId] -= 1
            return {"Status": "InProgress", "ResponseCode": -1}
        return self._results[CommandId]

    def _run(self, script: str) -> dict[str, Any]:
        if self.tamper is not None:
            changed = self.tamper(script)
            if changed is None:  # lost on the way: "succeeds", does nothing
                return {"Status": "Success", "ResponseCode": 0}
            script = changed
        self.scripts.append(script)
        done = subprocess.run(["/bin/sh", "-c", script], capture_output=True, timeout=300)
        return {
            "Status": "Success" if done.returncode == 0 else "Failed",
            "ResponseCode": done.returncode,
            "StandardOutputContent": done.stdout.decode("utf-8", "replace")[:OUTPUT_LIMIT],
            "StandardErrorContent": done.stderr.decode("utf-8", "replace")[:8_000],
        }
