"""A thousand device create/close cycles, each moving frames both ways, leave this process with the
fds, threads and memory mappings it started with (userspace datapath over a socketpair "tap"; the
e2e variant covers both datapaths on real links)."""
from __future__ import annotations

import os

from vnbtest.device import DeviceRig
from vnetbe.memory import GuestMemory

CYCLES = 1000
MAPS_NOISE = 8
FRAME = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + bytes(range(50))


def _counts() -> tuple[int, int, int]:
    fds = len(os.listdir("/proc/self/fd"))
    threads = len(os.listdir("/proc/self/task"))
    with open("/proc/self/maps") as f:
        maps = sum(1 for _ in f)
    return fds, threads, maps


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
    before = _counts()
    for _ in range(CYCLES):
        _cycle()
    after = _counts()
    print(f"{CYCLES} cycles: fds {before[0]} -> {after[0]}, threads {before[1]} -> {after[1]}, "
          f"mappings {before[2]} -> {after[2]}")
    assert after[:2] == before[:2], f"fds, threads: {before[:2]} -> {after[:2]}"
    if os.environ.get("VNB_SANITIZED"):
        return   # tests/asan.sh: ASan's allocator maps its own shadow and quarantine as it goes
    # malloc's own mmap'd arenas come and go by one or two; a leak per cycle would add a thousand.
    assert abs(after[2] - before[2]) <= MAPS_NOISE, f"mappings: {before[2]} -> {after[2]}"
