"""Fixtures of the unit tests (no root). The helpers themselves are in tests/vnbtest."""
from __future__ import annotations

import faulthandler

import pytest

from vnbtest import device
from vnbtest.rings import Ring
from vnetbe.datapath.user import UringDatapath
from vnetbe.memory import GuestMemory


# The modules whose devices run once per userspace datapath (vnbtest.device.USERSPACE_DATAPATHS).
ON_EVERY_USERSPACE_DATAPATH = {"test_guest_faults", "test_multiqueue", "test_hostile_fuzz", "test_datapath_pair", "test_datapath_bounds",
                               "test_datapath_watchdog", "test_lifecycle_leaks", "test_vmm_door", "test_dirty_log", "test_snapshot"}


def pytest_generate_tests(metafunc):
    if metafunc.module.__name__.rsplit(".", 1)[-1] in ON_EVERY_USERSPACE_DATAPATH:
        metafunc.parametrize("userspace_datapath", [pytest.param(d, marks=pytest.mark.uring if d.startswith("uring")
                                                                 else pytest.mark.user)
                                                    for d in device.USERSPACE_DATAPATHS], indirect=True)


@pytest.fixture(autouse=True)
def userspace_datapath(request, monkeypatch):
    """The datapath DeviceRig (and the tests' own VirtioNet) use: "user" unless parametrized."""
    name = getattr(request, "param", "user")
    if name == "uring-posted":
        monkeypatch.setattr(UringDatapath, "uring_nowait", False)
        name = "uring"
    device.datapath = name
    yield name
    device.datapath = "user"


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

