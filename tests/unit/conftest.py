"""Fixtures the hub's unit tests share: an in-memory broker and a consortium's keys."""

from __future__ import annotations

import pytest
from hub_world import Keys

from workbench.transport.memory import InMemoryBroker


@pytest.fixture
def server() -> InMemoryBroker:
    """One in-memory broker; each party connects to it."""
    return InMemoryBroker()


@pytest.fixture
def keys() -> Keys:
    """The hub's signing key and the spokes' keys."""
    return Keys.make()
