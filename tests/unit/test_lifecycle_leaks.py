"""A thousand device create/close cycles, each moving frames both ways, leave this process with the
fds, threads and memory mappings it started with (userspace datapath over a socketpair "tap"; the
e2e variant covers both datapaths on real links)."""
from __future__ import annotations

import os

from vnbtest.device import DeviceRig
from vnbtest.leaks import assert_nothing_left, footprint
from vnetbe.memory import GuestMemory

CYCLES = int(os.environ.get("VNETBE_CYCLES", 1000))   # as tests/e2e/test_link_faults.py
FRAME = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + bytes(range(50))


def _cycle() -> None:
    rig = DeviceRig(GuestMemory(4 << 20), queue_size=16, rx_buf_size=2048)
    try:
        rig.guest.send(FRAME)
        assert rig.link.sent(2.0)[12:] == FRAME
        rig.link.inject(FRAME)
        assert rig.guest.receive(timeout=2.0) == FRAME
    finally:
        rig.close()


def test_a_thousand_create_close_cycles_with_traffic_leave_no_fd_thread_or_mapping():
    _cycle()                      # first use loads what stays loaded (modules, allocator arenas)
    before = footprint()
    for _ in range(CYCLES):
        _cycle()
    after = footprint()
    print(f"{CYCLES} cycles: {tuple(before)} -> {tuple(after)} (fds, threads, shared, private mappings)")
    assert_nothing_left(before, after)
