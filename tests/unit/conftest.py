"""Fixtures of the unit tests (no root). The helpers themselves are in tests/vnbtest."""
from __future__ import annotations

import faulthandler

import pytest

from vnbtest.rings import Ring
from vnetbe.memory import GuestMemory


@pytest.fixture(autouse=True)
def _no_hang():
    """A C loop that never ends would hang the run silently: dump the stacks and exit instead."""
    faulthandler.dump_traceback_later(120, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="session")
def ring_cls():
    return Ring


@pytest.fixture
def mem():
    m = GuestMemory(1 << 20)
    yield m
    m.close()


@pytest.fixture
def mem2():
    """Two adjacent regions: a buffer that crosses 1 MiB maps to two host iovecs."""
    m = GuestMemory(regions=[(0, 1 << 20), (1 << 20, 1 << 20)])
    yield m
    m.close()

