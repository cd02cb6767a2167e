"""Self-healing an image whose stored object is corrupt backs off and says why.

Before: every backoff period added another failed instance, forever. Now the
object is quarantined when the launch finds it, the agent stops launching
(no more records) and logs what to do, and a bake that stores the object
again brings the fleet back without anyone touching the agent.
"""

from __future__ import annotations

import os
import signal
import time

from localtest import APP, serving, wait_for

from bake.apps import corrupt
from kiln.home import Home
from kiln.image.store import Store
from kiln.local.provider import LocalProvider
from kiln.providers.protocol import InstanceState


def _could_not_start(provider: LocalProvider) -> list[str]:
    return [
        i.id
        for i in provider.describe("web").instances
        if i.state is InstanceState.FAILED and "could not start" in str(i.details.get("reason", ""))
    ]


def test_corrupt_serving_image_backs_off_reports_and_recovers(
    provider: LocalProvider, image: str, local_home: Home
) -> None:
    provider.launch("web", image, 1)
    (first,) = serving(provider, 1)
    store = Store(local_home)
    sha = next(f.sha256 for f in store.get(image).manifest.files if f.path == "app.py")
    corrupt(store, sha)
    # the agent verified the image once into its own tree and links instances from it;
    # without that tree's stamp it must materialize from the store again, and finds the damage
    (local_home.agent_dir / "trees" / f"{image}.stamp.json").unlink()
    pid = provider.describe("web").instances[0].details["pid"]
    os.killpg(pid, signal.SIGKILL)

    wait_for(lambda: _could_not_start(provider), 20, "the replacement to fail")
    time.sleep(10)  # the old backoff (1 s, 2 s, 4 s, ...) would have retried 3 times
    assert len(_could_not_start(provider)) == 1
    log = (local_home.agent_dir / "agent.log").read_text()
    assert f"not replacing instances of {image}: 1 file(s) corrupted in the store (app.py)" in log

    source = local_home.tmp / "restore-app.py"  # what a bake of the app does
    source.write_text(APP)
    store.put_file(source)
    # the agent looks again within 5 s; the new instance must then pass its checks
    healed = wait_for(
        lambda: [i.id for i in provider.describe("web").serving()], 45, "the fleet to heal"
    )
    assert healed != [first] and len(_could_not_start(provider)) == 1
