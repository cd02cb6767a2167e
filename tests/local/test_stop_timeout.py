"""An instance killed after stop_timeout is said to have been killed.

A new operator's 60 MB download at 1 MB/s ended at 42 MB when its instance,
drained, was SIGKILLed after stop_timeout; nothing anywhere said so.
"""

from __future__ import annotations

from localtest import APP, make_image, serving, wait_for

from kiln.home import Home
from kiln.local.provider import LocalProvider

STUBBORN = "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + APP


def test_a_kill_after_stop_timeout_is_logged(local_home: Home, provider: LocalProvider) -> None:
    image = make_image(local_home, files={"app.py": STUBBORN})
    (instance,) = provider.launch("web", image, 1)
    serving(provider, 1)
    provider.terminate("web", [instance])
    log = local_home.agent_dir / "agent.log"
    said = f"instance {instance} did not exit within 2s of SIGTERM: killed"
    wait_for(lambda: said in log.read_text(), 60, "the agent to say it killed the instance")
