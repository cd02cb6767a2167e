"""Fixtures for the deploy engine tests; the helpers live in deploykit.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from deploykit import OLD, World

from kiln.deploy import StateDb
from kiln.home import Home


@pytest.fixture
def world(home: Home) -> Iterator[World]:
    db = StateDb(home.state_db)
    yield World(db)
    db.close()


@pytest.fixture
def deployed(world: World) -> World:
    """A fleet of two healthy OLD instances, deployed by the engine."""
    result = world.engine().deploy(OLD)
    assert result.outcome == "succeeded", result
    world.events.clear()
    return world
