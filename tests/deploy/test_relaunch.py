"""Changed secrets and launch settings roll out even when the image does not change.

Before, ``kiln deploy`` of the image the fleet already served said "nothing to
do" whatever had changed (issue 14.4, issue 16).
"""

from __future__ import annotations

import pytest
from deploykit import FLEET, NEW, OLD, World

from kiln.errors import ProviderError

OLD_PRINT = {"isolate": "false", "secrets": "11111111111111111111111111111111"}
NEW_PRINT = {"isolate": "false", "secrets": "22222222222222222222222222222222"}


@pytest.fixture
def printed(world: World) -> World:
    world.provider.launch_settings = dict(OLD_PRINT)
    assert world.engine().deploy(OLD).outcome == "succeeded"
    world.events.clear()
    return world


def test_a_secrets_only_change_replaces_every_instance_without_losing_capacity(
    printed: World,
) -> None:
    w, t0 = printed, printed.clock.now()
    before = {i.id for i in w.provider.describe(FLEET).live()}
    w.provider.launch_settings = dict(NEW_PRINT)
    result = w.engine().deploy(OLD)
    assert result.outcome == "succeeded" and result.from_image == OLD == result.to_image
    notes = [e.message for e in w.events if e.kind == "info"]
    assert "secrets changed: replacing 2 instances" in notes
    live = w.provider.describe(FLEET).live()
    assert not before & {i.id for i in live}
    assert all(dict(i.launch) == NEW_PRINT for i in live)
    assert w.min_capacity_after(t0) >= 2  # launched first, then terminated, one at a time
    w.assert_settled(OLD, 2)
    rec = w.db.fleet(FLEET)
    assert rec is not None and (rec.current_image, rec.previous_image) == (OLD, None)
    assert w.journal().history(FLEET)[0].outcome == "succeeded"


def test_the_same_settings_are_still_nothing_to_do(printed: World) -> None:
    assert printed.engine().deploy(OLD).outcome == "unchanged"


def test_dry_run_says_what_changed(printed: World) -> None:
    printed.provider.launch_settings = {**OLD_PRINT, "isolate": "true"}
    text = "\n".join(printed.engine().plan(OLD).describe())
    assert "isolate changed: replacing 2 instances" in text
    assert "(isolate changed)" in text
    assert "nothing to do" not in text
    assert all(c[0] == "describe" for c in printed.provider.calls[-3:])


def test_a_new_image_with_new_secrets_is_an_ordinary_deployment(printed: World) -> None:
    printed.provider.launch_settings = dict(NEW_PRINT)
    result = printed.engine().deploy(NEW)
    assert result.outcome == "succeeded"
    assert all(dict(i.launch) == NEW_PRINT for i in printed.provider.describe(FLEET).live())
    printed.assert_settled(NEW, 2)


def test_a_secret_that_cannot_be_resolved_changes_nothing(printed: World) -> None:
    calls = len(printed.provider.calls)
    printed.provider.fail_next(
        "launch_print", ProviderError("secret API_TOKEN: environment variable TOKEN is not set")
    )
    with pytest.raises(ProviderError, match="TOKEN is not set"):
        printed.engine().deploy(NEW)
    assert printed.provider.calls[calls:] == []
    assert printed.journal().history(FLEET)[0].to_image == OLD
    printed.assert_settled(OLD, 2)
