"""Fixtures for the front door tests: a store, fast health checks, backends that are stopped after."""

from __future__ import annotations

import pytest

from tasks.local import frontdoor as F
from tasks.local.server import free_port
from tests.local.helpers import FakeBackend

# Real checks, only quicker than production's (a DOWN backend is seen within ~0.3 s).
FAST = F.FrontDoorSettings(check_interval_ms=150, check_fast_interval_ms=50, check_down_interval_ms=100,
                           check_rise=1, check_fall=2, check_timeout_ms=500)


@pytest.fixture
def store(tmp_path):
    s = str(tmp_path / "store")
    yield s
    for name in F.list_frontdoors(s):  # never leave an HAProxy behind, whatever the test did
        rec = F.load_frontdoor(s, name)
        F.stop_frontdoor(s, name)
        assert rec is None or not F._alive(rec.pid)


@pytest.fixture
def port():
    return free_port()


@pytest.fixture
def backends():
    made: list[FakeBackend] = []

    def make(model: str, **kw) -> FakeBackend:
        b = FakeBackend(model, **kw)
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop()
