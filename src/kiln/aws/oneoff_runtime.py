#!/usr/bin/env python3
"""kiln oneoff: a command run once on an instance of an AMI, the way the app's unit runs.

Installed on AMIs as /usr/local/lib/kiln/oneoff, beside fetch-secrets (whose
code it loads: one SSM client, one secret resolver). An instance launched
for a one-off job holds the app's own unit back (``/run/kiln/oneoff``, the
unit's ``ConditionPathExists=!``), then:

- ``release``: cloud-init runs the image's release command (``/etc/kiln/APP/release``)
  once, with the unit's environment and secrets, as the unit's user, from the
  image directory; its exit status, duration and last lines go to the SSM
  parameter the deployer named, which it polls (then the instance powers off,
  and so terminates);
- ``exec``: ``kiln run`` over SSH: the command replaces this process, attached
  to the SSH session, and its exit status is the session's.

Standard library only, Python 3.8 or newer, like fetch-secrets.

    oneoff [--root ROOT] release APP PARAMETER [TIMEOUT]
    oneoff [--root ROOT] exec APP -- CMD [ARGS]...
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

USER = "kiln"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # systemd's default
OUTPUT_LINES = 40  # as a local release keeps
RESULT_MAX = 4000  # an SSM standard parameter holds 4 KB
USAGE = (
    "usage: oneoff [--root ROOT] release APP PARAMETER [TIMEOUT]\n"
    "       oneoff [--root ROOT] exec APP -- CMD [ARGS]..."
)


def _fetch_secrets() -> ModuleType:
    """fetch-secrets, installed beside this script, as a module."""
    path = Path(__file__).resolve().with_name("fetch-secrets")
    loader = importlib.machinery.SourceFileLoader("kiln_fetch_secrets", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def parse_env_file(text: str) -> dict[str, str]:
    """What install.py's env file and fetch-secrets write: NAME="escaped" lines."""
    env: dict[str, str] = {}
    for line in text.splitlines():
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, _, raw = line.partition("=")
        if len(raw) >= 2 and raw[0] == raw[-1] == '"':
            raw = raw[1:-1]
        value, i = [], 0
        while i < len(raw):
            if raw[i] == "\\" and i + 1 < len(raw):
                value.append({"n": "\n"}.get(raw[i + 1], raw[i + 1]))
                i += 2
            else:
                value.append(raw[i])
                i += 1
        env[name] = "".join(value)
    return env


class Instance:
    """Where the installed app lives under ``root`` ("/" on an instance)."""

    def __init__(self, root: str, app: str) -> None:
        self.root = Path(root)
        self.app = app
        self.conf = self.root / "etc/kiln" / app
        self.directory = self.root / "opt/kiln" / app / "current"

    def environment(self) -> dict[str, str]:
        """The unit's environment: systemd's basics, the baked env, the secrets.

        A secret that cannot be resolved exits (SystemExit) with one line.
        """
        env = {"PATH": PATH, "LANG": "C.UTF-8"}
        account = self.account()
        if account is not None:
            home = self.home(account)
            env.update(HOME=home, USER=USER, LOGNAME=USER, SHELL=account.pw_shell)
        env.update(parse_env_file((self.conf / "env").read_text(encoding="utf-8")))
        spec = json.loads((self.conf / "secrets.json").read_text(encoding="utf-8"))
        env.update(_fetch_secrets().resolve(spec))
        env["KILN_INSTANCE_ID"] = f"oneoff-{os.getpid()}"
        return env

    def home(self, account: Any) -> str:
        """The unit's HOME (its StateDirectory, which systemd makes when the unit
        starts; a one-off's boot holds the unit back, so it is made here)."""
        home = Path("/var/lib") / f"kiln-{self.app}"
        home.mkdir(mode=0o700, exist_ok=True)
        os.chown(home, account.pw_uid, account.pw_gid)
        return str(home)

    def release_command(self) -> str:
        path = self.conf / "release"
        return path.read_text(encoding="utf-8").strip() if path.exists() else ""

    def account(self) -> Any:
        """The unit's user, as root on an instance; None (run as ourselves) elsewhere."""
        return _account() if str(self.root) == "/" and os.geteuid() == 0 else None

    def drop_privileges(self) -> Callable[[], None] | None:
        account = self.account()
        if account is None:
            return None

        def drop() -> None:
            os.setgroups([])
            os.setgid(account.pw_gid)
            os.setuid(account.pw_uid)

        return drop


def _account() -> Any:
    import pwd

    try:
        return pwd.getpwnam(USER)
    except KeyError:
        raise SystemExit(
            f"oneoff: user {USER} does not exist: was the AMI baked by kiln?"
        ) from None


def run_release(instance: Instance, timeout: float, echo: Callable[[str], None]) -> dict[str, Any]:
    """The release command once; its command, exit status, seconds and last lines."""
    command = instance.release_command()
    started = time.monotonic()
    tail: deque[str] = deque(maxlen=OUTPUT_LINES)
    if not command:
        return _result(command, 127, ["oneoff: this image has no release command"], started)
    try:
        env = instance.environment()
    except SystemExit as exc:  # a secret that cannot be read fails the release, visibly
        return _result(command, 1, [str(exc.code)], started)
    proc = subprocess.Popen(
        ["/bin/sh", "-c", command],
        cwd=str(instance.directory),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=instance.drop_privileges(),
    )
    fired: list[bool] = []

    def kill() -> None:
        fired.append(True)
        _kill_group(proc.pid)

    timer = threading.Timer(timeout, kill)
    timer.daemon = True
    timer.start()
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            tail.append(line)
            echo(line)
        code = proc.wait()
    finally:
        timer.cancel()
        _kill_group(proc.pid)  # nothing it started outlives it
    if fired:
        tail.append(f"(kiln: stopped after {timeout:g}s)")
    return _result(command, code, list(tail), started)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)


def _result(command: str, code: int, lines: list[str], started: float) -> dict[str, Any]:
    doc = {
        "command": command,
        "exit_code": code,
        "seconds": round(time.monotonic() - started, 3),
        "output": "\n".join(lines),
    }
    while len(json.dumps(doc)) > RESULT_MAX and doc["output"]:  # keep the end: the error
        doc["output"] = str(doc["output"])[200:]
    return doc


def report(parameter: str, result: dict[str, Any]) -> None:
    """The result as an SSM parameter the deployer reads (and deletes)."""
    doc = {"Name": parameter, "Value": json.dumps(result), "Type": "String", "Overwrite": True}
    _fetch_secrets().ssm_call("PutParameter", doc)


def main(argv: list[str]) -> int:
    args = argv[1:]
    root = "/"
    if args[:1] == ["--root"] and len(args) > 1:
        root, args = args[1], args[2:]
    if len(args) >= 3 and args[0] == "release":
        instance = Instance(root, args[1])
        timeout = float(args[3]) if len(args) > 3 else 3600.0
        result = run_release(instance, timeout, lambda line: print(line, flush=True))
        print(f"oneoff: release exited with status {result['exit_code']}", flush=True)
        report(args[2], result)
        return 0
    if len(args) >= 4 and args[0] == "exec" and args[2] == "--":
        instance = Instance(root, args[1])
        env = instance.environment()
        os.chdir(str(instance.directory))
        drop = instance.drop_privileges()
        if drop is not None:
            drop()
        try:
            os.execvpe(args[3], args[3:], env)
        except OSError as exc:
            print(f"oneoff: cannot run {args[3]}: {exc.strerror}", file=sys.stderr)
            return 127
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
