"""One deployment per fleet: fail fast, wait, take over the dead, unlock."""

from __future__ import annotations

import pytest
from deploykit import FLEET, NEW, OLD, World, dead_pid

from kiln.deploy.lock import DeployLock, read_holder, unlock
from kiln.errors import LockHeld
from kiln.providers.fake import FakeClock


def _holder(world: World, *, pid: int | None = None, host: str = "ci-runner-1") -> DeployLock:
    return DeployLock(world.db, FLEET, world.clock, user="bob", host=host, pid=pid)


def test_a_second_deploy_fails_fast_with_the_holders_details(deployed: World) -> None:
    other = _holder(deployed, pid=1)  # pid 1 is alive on every Linux
    other.acquire()
    other.beat("dep-12345678")
    calls = len(deployed.provider.calls)
    with pytest.raises(LockHeld) as info:
        deployed.engine().deploy(NEW)
    message = str(info.value)
    assert "bob@ci-runner-1 (pid 1, deployment dep-12345678)" in message
    assert "started" in message and "last heartbeat" in message
    assert "--wait" in (info.value.hint or "") and "kiln unlock" in (info.value.hint or "")
    # any command meeting the lock: `kiln scale` was told to use `kiln deploy --wait`
    assert "kiln deploy --wait" not in (info.value.hint or "")
    assert deployed.provider.calls[calls:] == []
    assert deployed.serving() == {OLD: 2}


class _ReleasingClock(FakeClock):
    """Shared simulated time in which the other deployer finishes after ``after`` seconds."""

    def __init__(self, world: World, other: DeployLock, after: float) -> None:
        super().__init__()
        self.world, self.other, self.after = world, other, after

    def now(self) -> float:
        return self.world.clock.now()

    def sleep(self, seconds: float) -> None:
        self.world.clock.sleep(seconds)
        self.after -= seconds
        if self.after <= 0:
            self.other.release()


def test_wait_gives_up_after_its_timeout(deployed: World) -> None:
    _holder(deployed, pid=1).acquire()
    t0 = deployed.clock.now()
    with pytest.raises(LockHeld):
        deployed.engine().deploy(NEW, wait=5.0)
    assert 5.0 <= deployed.clock.now() - t0 < 7.0


def test_wait_gets_the_lock_when_the_holder_finishes(deployed: World) -> None:
    other = _holder(deployed, pid=1)
    other.acquire()
    engine = deployed.engine()
    engine.lock.clock = _ReleasingClock(deployed, other, after=3.0)
    assert engine.deploy(NEW, wait=30.0).outcome == "succeeded"
    # said once, not silent (a new operator's --wait printed nothing for its whole wait)
    waiting = [e.message for e in deployed.events if e.message.startswith("waiting up to")]
    assert len(waiting) == 1, waiting
    assert waiting[0].startswith(f"waiting up to 30s for fleet {FLEET}'s lock, held by bob@")


def test_a_dead_holder_is_taken_over_with_a_warning(deployed: World) -> None:
    _holder(deployed, pid=dead_pid(), host="ci-runner-1").acquire()
    assert deployed.engine().deploy(NEW).ok
    warnings = [e.message for e in deployed.events if e.kind == "warning"]
    assert any("taking over the lock" in w and "is gone" in w for w in warnings)


def test_an_expired_heartbeat_is_taken_over(deployed: World) -> None:
    _holder(deployed, pid=1, host="another-host").acquire()
    with pytest.raises(LockHeld):
        deployed.engine().deploy(NEW)
    deployed.clock.sleep(61)
    assert deployed.engine().deploy(NEW).ok
    assert any("no heartbeat for 1m1s" in e.message for e in deployed.events)


def test_the_lock_is_released_after_success_and_failure(deployed: World) -> None:
    deployed.engine().deploy(NEW)
    assert read_holder(deployed.db, FLEET) is None
    with pytest.raises(Exception, match="does not exist"):
        deployed.engine().deploy("img-nope")
    assert read_holder(deployed.db, FLEET) is None


def test_unlock(deployed: World) -> None:
    now = deployed.clock.now()
    assert unlock(deployed.db, FLEET, now, "ci-runner-1", force=False) is None
    _holder(deployed, pid=1).acquire()
    with pytest.raises(LockHeld, match="looks alive"):
        unlock(deployed.db, FLEET, now, "ci-runner-1", force=False)
    holder = unlock(deployed.db, FLEET, now, "ci-runner-1", force=True)
    assert holder is not None and holder.pid == 1
    _holder(deployed, pid=dead_pid()).acquire()
    assert unlock(deployed.db, FLEET, now, "ci-runner-1", force=False) is not None
    assert read_holder(deployed.db, FLEET) is None
