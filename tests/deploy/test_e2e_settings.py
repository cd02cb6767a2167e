"""kiln deploy with the image unchanged still applies what changed (issues 14.4 and 16).

Before: a changed secret, a missing secret, a changed listen address all gave
"nothing to do" and exit 0, the instances still running as before.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2ekit import APP, Load, free_port, http_get, kill_everything, write_app_config

from kiln.config import load_config
from kiln.home import Home
from kiln.local.provider import LocalProvider
from kilntest import Kiln

pytestmark = pytest.mark.slow
SECRETS = '\n[secrets]\nAPI_TOKEN = "env:KILN_TEST_TOKEN"\n'


@pytest.fixture
def site(home: Home, tmp_path: Path) -> Iterator[tuple[Kiln, Path]]:
    config = write_app_config(tmp_path / "app", free_port())
    config.write_text(config.read_text() + SECRETS)
    (config.parent / "app.py").write_text(APP)
    try:
        yield Kiln(config.parent), config
    finally:
        kill_everything(home)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _live_ids(kiln: Kiln) -> set[str]:
    status = json.loads(kiln("status", "--json").stdout)
    return {i["id"] for i in status["instances"] if i["state"] == "healthy"}


def _port(config: Path) -> int:
    line = next(x for x in config.read_text().splitlines() if x.startswith("listen"))
    return int(line.rsplit(":", 1)[1].rstrip('"'))


def test_a_changed_secret_rolls_out_under_load_and_a_missing_one_changes_nothing(
    site: tuple[Kiln, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    kiln, config = site
    port = _port(config)
    monkeypatch.setenv("KILN_TEST_TOKEN", "first-" + os.urandom(6).hex())
    assert json.loads(kiln("deploy", "--json").stdout)["outcome"] == "succeeded"
    before = _live_ids(kiln)

    second = "second-" + os.urandom(6).hex()
    monkeypatch.setenv("KILN_TEST_TOKEN", second)
    with Load(port) as load:
        result = kiln("deploy")
    assert "secrets changed: replacing 2 instances" in result.stderr
    assert "nothing to do" not in result.stdout + result.stderr
    assert load.sent > 100 and load.failed == 0, load.errors[:5]
    after = _live_ids(kiln)
    assert len(after) == 2 and not before & after
    for _ in range(6):  # every instance has the new value
        assert http_get(port, "/secret")[1]["sha256"] == _sha(second)
    assert json.loads(kiln("deploy", "--json").stdout)["outcome"] == "unchanged"

    monkeypatch.delenv("KILN_TEST_TOKEN")
    missing = kiln("deploy", ok=False)
    assert missing.exit_code != 0
    assert "secret API_TOKEN: environment variable KILN_TEST_TOKEN is not set" in missing.stderr
    assert "Traceback" not in missing.stderr
    assert _live_ids(kiln) == after
    assert http_get(port, "/secret")[1]["sha256"] == _sha(second)


def test_a_changed_listen_address_moves_the_listener_without_dropping_a_request(
    site: tuple[Kiln, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    kiln, config = site
    monkeypatch.setenv("KILN_TEST_TOKEN", "token")
    old, new = _port(config), free_port()
    assert json.loads(kiln("deploy", "--json").stdout)["outcome"] == "succeeded"
    ids = _live_ids(kiln)

    answers: list[int] = []
    slow = threading.Thread(target=lambda: answers.append(http_get(old, "/slow?s=1.5")[0]))
    slow.start()  # in flight on the old listener while it moves
    config.write_text(config.read_text().replace(f":{old}", f":{new}"))
    result = kiln("deploy")
    slow.join(10)
    assert f"now listens on http://127.0.0.1:{new} (was http://127.0.0.1:{old})" in result.stderr
    assert answers == [200]
    assert http_get(new)[0] == 200
    with pytest.raises(ConnectionRefusedError):
        http_get(old)
    assert _live_ids(kiln) == ids  # no instance had to be replaced for that

    # an address in use: said, and nothing changed
    with socket_on(old):
        config.write_text(config.read_text().replace(f":{new}", f":{old}"))
        refused = kiln("deploy", ok=False)
    assert refused.exit_code != 0
    assert f"127.0.0.1:{old} is already in use" in refused.stderr
    assert f"still listens on http://127.0.0.1:{new}" in refused.stderr
    assert http_get(new)[0] == 200


class socket_on:
    """Something else listening on ``port`` for the duration."""

    def __init__(self, port: int) -> None:
        import socket

        self.sock = socket.socket()
        # as servers do: the balancer closed the old listener's last connection itself
        # (Connection: close as it retired), so that side of it sits in TIME_WAIT
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="isolation needs the agent to run as root")
def test_turning_isolation_on_replaces_the_instances(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = Path(tempfile.mkdtemp(prefix="kiln-iso-", dir="/tmp"))
    base.chmod(0o711)  # instance users must pass through to their directories
    home = Home(base / "kiln").ensure()
    monkeypatch.setenv("KILN_HOME", str(home.root))
    monkeypatch.setenv("KILN_TEST_TOKEN", "token")
    config = write_app_config(tmp_path / "app", free_port())
    config.write_text(config.read_text() + SECRETS)
    (config.parent / "app.py").write_text(APP)
    kiln = Kiln(config.parent)
    try:
        assert json.loads(kiln("deploy", "--json").stdout)["outcome"] == "succeeded"
        assert {_uid(p) for p in _pids(home, config)} == {0}

        config.write_text(config.read_text().replace("[provider.local]", _ISOLATE))
        result = kiln("deploy")
        assert "isolate changed: replacing 2 instances" in result.stderr
        uids = {_uid(p) for p in _pids(home, config)}
        assert len(uids) == 2 and all(u >= 2_000_000_000 for u in uids)
        assert json.loads(kiln("deploy", "--json").stdout)["outcome"] == "unchanged"
    finally:
        kill_everything(home)
        shutil.rmtree(base, ignore_errors=True)


_ISOLATE = "[provider.local]\nisolate = true"


def _pids(home: Home, config: Path) -> list[int]:
    provider = LocalProvider(home, load_config(config))
    return [int(i.details["pid"]) for i in provider.describe("web").live()]


def _uid(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(x for x in status.splitlines() if x.startswith("Uid:")).split()[1])
