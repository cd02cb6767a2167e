"""Deployments: plans, strategies, gates, rollback, lock, journal, history.

The engine talks to the world only through :class:`kiln.providers.protocol.Provider`,
a :class:`Clock` and the state database, so it runs unchanged on the local
agent, on AWS, and on :class:`kiln.providers.fake.FakeProvider` in tests.
"""

from kiln.deploy.clock import Clock, SystemClock
from kiln.deploy.engine import Engine, Event
from kiln.deploy.history import Result, who_am_i
from kiln.deploy.plan import Knobs, Plan, Step, make_plan, rollback_plan
from kiln.deploy.settings import Settings
from kiln.deploy.state import StateDb

__all__ = [
    "Clock",
    "Engine",
    "Event",
    "Knobs",
    "Plan",
    "Result",
    "Settings",
    "StateDb",
    "Step",
    "SystemClock",
    "make_plan",
    "rollback_plan",
    "who_am_i",
]
