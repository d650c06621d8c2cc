"""Faults of the host: the link deleted under a running device. The device stops moving frames with a
LinkGone (a LinkError) instead of spinning its thread, its counters stay readable, and close()
cleans up, on both datapaths."""
from __future__ import annotations

import time

import pytest
from pyroute2 import IPRoute

from vnetbe import errors, spec
from vnetbe.cputime import thread_cpu_ns
from vnetbe.device import VirtioNet
from vnetbe.link import Tap
from vnetbe.memory import GuestMemory
from vnetbe.tools.guest import GuestDriver

pytestmark = pytest.mark.root

FRAME = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x88\xb6" + bytes(50)
IDLE_S = 0.3
# CPU a datapath may burn in IDLE_S while idle: a spinning thread burns ~IDLE_S (3e8 ns).
IDLE_CPU_NS = 30_000_000


def _cpu(dev) -> int:
    return sum(thread_cpu_ns(t, t) for t in dev.threads())


def test_a_deleted_tap_stops_the_device_with_link_gone_and_no_thread_spins(tag, datapath):
    name = f"vnb{tag}t"
    with GuestMemory(32 << 20) as mem, Tap.create(name) as link, VirtioNet(mem, link, datapath=datapath) as dev:
        guest = GuestDriver(dev)
        guest.send(FRAME)
        assert dev.wait_fault(0.2) is None
        with IPRoute() as ipr:
            ipr.link("del", ifname=name)
        err = dev.wait_fault(2.0)
        assert isinstance(err, errors.LinkGone) and isinstance(err, errors.LinkError), err
        assert name in str(err)
        assert dev.status & spec.DEVICE_NEEDS_RESET
        assert dev.config_space()[6:8] == b"\0\0"          # link status: down
        with pytest.raises(errors.LinkGone):
            dev.check()
        c0 = _cpu(dev)
        for _ in range(20):                                 # the guest keeps posting; nothing spins
            guest.send(FRAME)
        time.sleep(IDLE_S)
        assert _cpu(dev) - c0 < IDLE_CPU_NS
        st = dev.stats()                                    # counters stay readable with the link gone
        assert st["link_down"] and st["tx_frames"] >= 0
    assert not dev.threads()
