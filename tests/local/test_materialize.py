"""Materializing is a phase of its own, done once per image, and it eats no grace.

Issue 15: an instance spent 57 s materializing 4,335 files and was killed 2 s
after its process started, because the health grace period had started
with the record, not with the process.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from localtest import APP, make_image, many_files, serving, wait_for, write_config

from kiln.config import load_config
from kiln.home import Home
from kiln.image.drift import fleet_drift
from kiln.image.store import Store
from kiln.local.provider import LocalProvider
from kiln.providers.protocol import InstanceState

pytestmark = pytest.mark.slow

SLOW_START = "import time\ntime.sleep(0.3)\n" + APP  # listens 0.3 s after it starts
GRACE = 1.0
ALLOWANCE = GRACE + 3 * 0.1  # grace, then unhealthy_threshold failed checks 100 ms apart


def test_grace_counts_from_process_start_and_status_shows_materializing(
    local_home: Home, tmp_path: Path, lb_port: int
) -> None:
    config = write_config(
        tmp_path / "app",
        lb_port,
        name="web",
    )
    text = config.read_text().replace('grace = "10s"', f'grace = "{GRACE:g}s"')
    config.write_text(text.replace("unhealthy_threshold = 2", "unhealthy_threshold = 3"))
    provider = LocalProvider(local_home, load_config(config))
    files = many_files(4000, size=4096, app=SLOW_START) | {"data.bin": "x" * (120 << 20)}
    image = make_image(local_home, files=files, packed=True)
    # the agent is up before the launch: two threads starting it at once made
    # the first describe wait until the instance was already healthy
    agent_pid = int(provider.agent.get("/v1/status")["pid"])
    seen: set[str] = set()
    launched: list[str] = []
    launcher = threading.Thread(target=lambda: launched.extend(provider.launch("web", image, 1)))
    launcher.start()
    stopped = False
    while launcher.is_alive():
        states = {i.state.value for i in provider.describe("web").instances}
        seen |= states
        if "materializing" in states and not stopped:
            # Materializing is made to outlast the grace, whatever this disk's
            # speed: the agent (not the balancer, a process of its own) is held
            # still mid-materialize. Grace counted from the record would now be
            # spent; counted from the process's start, none of it is.
            os.kill(agent_pid, signal.SIGSTOP)
            time.sleep(ALLOWANCE + 1.0)
            os.kill(agent_pid, signal.SIGCONT)
            stopped = True
        time.sleep(0.01)
    launcher.join()
    assert "materializing" in seen, seen  # what `kiln status` shows meanwhile

    (first,) = launched
    serving(provider, 1)
    inst = next(i for i in provider.describe("web").instances if i.id == first)
    times = inst.details["times"]
    took = times["running"] - times["materializing"]
    assert took > ALLOWANCE + 1.0, f"materializing took {took:.2f}s: too fast to prove anything"
    assert inst.state is InstanceState.HEALTHY  # the same instance: never killed, never replaced
    assert [i.id for i in provider.describe("web").instances] == [first]


def test_instances_as_root_get_private_copies_of_the_verified_tree(
    provider: LocalProvider, local_home: Home
) -> None:
    # an instance running as root (not isolated) ignores file modes: a shared
    # inode would let it change every instance, so it gets a copy of the tree
    # (tests/local/test_isolation.py shows the shared, read-only links)
    image = make_image(local_home, files=many_files(300), packed=True)
    a, b = provider.launch("web", image, 2)
    serving(provider, 2)
    dirs = {i.id: Path(i.details["dir"]) for i in provider.describe("web").instances}
    tree = local_home.agent_dir / "trees" / image
    assert (tree / "lib/pkg1/mod1.py").stat().st_mode & 0o222 == 0  # verified once, read-only
    own = dirs[a] / "lib/pkg1/mod1.py"
    if os.geteuid() == 0:
        assert own.stat().st_ino != (dirs[b] / "lib/pkg1/mod1.py").stat().st_ino
    report = fleet_drift(Store(local_home), provider.describe("web"))
    assert [d.drifted for d in report] == [False, False]

    own.chmod(0o644)
    own.write_text("hotfix\n")  # in place: only this instance drifts
    report = {d.instance: d for d in fleet_drift(Store(local_home), provider.describe("web"))}
    assert [c.path for c in report[a].changes] == ["lib/pkg1/mod1.py"]
    assert not report[b].drifted
    assert (dirs[b] / "lib/pkg1/mod1.py").read_text().startswith("##")
    assert (tree / "lib/pkg1/mod1.py").read_text().startswith("##")


def test_a_changed_tree_is_materialized_again(provider: LocalProvider, local_home: Home) -> None:
    image = make_image(local_home, files=many_files(20), packed=True)
    (first,) = provider.launch("web", image, 1)
    serving(provider, 1)
    tree = local_home.agent_dir / "trees" / image / "lib/pkg1/mod1.py"
    tree.chmod(0o644)  # what an instance running as the agent's user could do
    tree.write_text("tampered\n")
    provider.launch("web", image, 1)
    wait_for(lambda: len(provider.describe("web").serving()) == 2, 15, "a second instance")
    fresh = next(i for i in provider.describe("web").instances if i.id != first)
    text = (Path(fresh.details["dir"]) / "lib/pkg1/mod1.py").read_text()
    assert text.startswith("##"), text  # from a tree verified again, not the tampered one
