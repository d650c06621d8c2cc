"""What a process holds, to show that a device, a connection or a thousand of them left nothing behind.

Guest memory, rings and every region a front end hands over are mapped shared; malloc, Python's
allocator and ASan map only private memory. So shared mappings must come back exactly, while the
private ones may move by the few arenas an allocator keeps for a thread that has come and gone.
"""
from __future__ import annotations

import os
from typing import NamedTuple

PRIVATE_MAPS_NOISE = 16   # glibc keeps a thread's arena (2 mappings) and obmalloc 1 MiB arenas; a leak per cycle adds CYCLES


class Footprint(NamedTuple):
    fds: int
    threads: int
    shared_maps: int
    private_maps: int


def footprint() -> Footprint:
    shared = private = 0
    with open("/proc/self/maps") as f:
        for line in f:
            if line.split(None, 2)[1][3] == "s":
                shared += 1
            else:
                private += 1
    return Footprint(len(os.listdir("/proc/self/fd")), len(os.listdir("/proc/self/task")), shared, private)


def assert_nothing_left(before: Footprint, after: Footprint, *, private_noise: int = PRIVATE_MAPS_NOISE) -> None:
    assert after[:3] == before[:3], f"fds, threads, shared mappings: {tuple(before[:3])} -> {tuple(after[:3])}"
    if os.environ.get("VNB_SANITIZED"):
        return   # tests/asan.sh: ASan's allocator maps its own shadow and quarantine as it goes
    assert abs(after.private_maps - before.private_maps) <= private_noise, \
        f"private mappings: {before.private_maps} -> {after.private_maps}"
