"""Deployments: plans, strategies, gates, rollback, lock, journal, history.

The engine talks to the world only through :class:`kiln.providers.protocol.Provider`,
a :class:`Clock` and the state database, so it runs unchanged on the local
agent, on AWS, and on :class:`kiln.providers.fake.FakeProvider` in tests.

Names are imported on first use (PEP 562), so ``kiln.deploy.journal`` or
``kiln.deploy.plan`` can be read without paying for the engine and its imports:
``kiln bake`` never needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kiln.deploy.clock import Clock, SystemClock
    from kiln.deploy.engine import Engine, Event, EventKind
    from kiln.deploy.history import Result, who_am_i
    from kiln.deploy.journal import DeploymentKind, JournalEvent, Outcome
    from kiln.deploy.plan import Knobs, Plan, Step, StepKind, make_plan, rollback_plan
    from kiln.deploy.settings import Settings
    from kiln.deploy.state import StateDb

_WHERE = {
    "Clock": "kiln.deploy.clock",
    "DeploymentKind": "kiln.deploy.journal",
    "Engine": "kiln.deploy.engine",
    "Event": "kiln.deploy.engine",
    "EventKind": "kiln.deploy.engine",
    "JournalEvent": "kiln.deploy.journal",
    "Knobs": "kiln.deploy.plan",
    "Outcome": "kiln.deploy.journal",
    "Plan": "kiln.deploy.plan",
    "Result": "kiln.deploy.history",
    "Settings": "kiln.deploy.settings",
    "StateDb": "kiln.deploy.state",
    "Step": "kiln.deploy.plan",
    "StepKind": "kiln.deploy.plan",
    "SystemClock": "kiln.deploy.clock",
    "make_plan": "kiln.deploy.plan",
    "rollback_plan": "kiln.deploy.plan",
    "who_am_i": "kiln.deploy.history",
}

__all__ = [
    "Clock",
    "DeploymentKind",
    "Engine",
    "Event",
    "EventKind",
    "JournalEvent",
    "Knobs",
    "Outcome",
    "Plan",
    "Result",
    "Settings",
    "StateDb",
    "Step",
    "StepKind",
    "SystemClock",
    "make_plan",
    "rollback_plan",
    "who_am_i",
]


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(where), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
