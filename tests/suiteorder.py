"""Longest test files first when the suite runs on several workers (``make test``).

``make test`` runs pytest-xdist with ``--dist worksteal``: the workers take
the collection in order, and a worker left idle takes the far end of the
longest queue. A long test handed out last keeps one worker busy after the
others are done, so the order here is longest first (the classic LPT rule):
files by what their tests cost on this machine's last runs (kept in pytest's
cache, ``.pytest_cache``), each file's tests together and in their order.
A test with no record yet counts by its marks: the VM rehearsal goes first (a
quarter of an hour under TCG), other process-starting tests count more than
unit tests. Nothing here lists test files: new ones are placed by their marks
until they have run once.

A worker never gives away the test after the one it runs (pytest needs it to
know which fixtures to tear down), so whatever follows the longest test waits
for it: that place goes to the cheapest test.

A serial run (no xdist) keeps pytest's own order.
"""

from __future__ import annotations

from collections import defaultdict

import pytest

KEY = "kiln/test-seconds"
# Seconds assumed for a test that has not run on this machine yet.
GUESS = {"vm": 900.0, "slow": 20.0, "aws": 5.0}
GUESS_OTHER = 0.5


def _guess(item: pytest.Item) -> float:
    for mark, seconds in GUESS.items():
        if item.get_closest_marker(mark) is not None:
            return seconds
    return GUESS_OTHER


def _file(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


@pytest.hookimpl(trylast=True)  # after the root conftest marks the process suites slow
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    cache = getattr(config, "cache", None)  # absent with -p no:cacheprovider
    if not hasattr(config, "workerinput"):
        return  # not an xdist worker: keep the collection order
    known: dict[str, float] = cache.get(KEY, {}) if cache is not None else {}
    seconds = {item.nodeid: known.get(item.nodeid, _guess(item)) for item in items}
    cost: dict[str, float] = defaultdict(float)
    first: dict[str, int] = {}
    for index, item in enumerate(items):
        name = _file(item.nodeid)
        cost[name] += seconds[item.nodeid]
        first.setdefault(name, index)
    # Every worker sorts the same collection with the same cache: the same order.
    items.sort(key=lambda item: (-cost[_file(item.nodeid)], first[_file(item.nodeid)]))
    if len(items) > 2:
        cheapest = min(items[1:], key=lambda item: seconds[item.nodeid])
        items.remove(cheapest)
        items.insert(1, cheapest)


class _Recorder:
    """Sums each test's setup, call and teardown; the controller records them at the end.

    It also prints, after the run, the ``figures`` a test recorded with
    ``record_property("figures", ...)`` (the VM rehearsal's phase timings), which
    the captured output of an xdist worker would otherwise hide.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.figures: list[tuple[str, object]] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.seconds[report.nodeid] += report.duration
        if report.when == "teardown":  # every phase's report carries the item's properties
            self.figures += [
                (report.nodeid, v) for k, v in report.user_properties if k == "figures"
            ]

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        for nodeid, figures in self.figures:
            terminalreporter.write_line(f"figures: {nodeid}: {figures}")

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        cache = getattr(session.config, "cache", None)
        if cache is None or not self.seconds:
            return
        known: dict[str, float] = cache.get(KEY, {})
        known.update({nodeid: round(s, 2) for nodeid, s in self.seconds.items()})
        cache.set(KEY, known)


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # the controller, or a serial run
        config.pluginmanager.register(_Recorder(), "kiln-suite-recorder")
