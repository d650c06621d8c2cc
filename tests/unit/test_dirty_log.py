"""The dirty log a live migration reads (vnetbe/dirtylog.py, csrc/device/vnb_log.c), through the
library's door: every page the device writes (RX buffers, used rings or a packed ring's used
descriptors) has its bit, on both ring formats and every userspace datapath; a log too small for the
memory is refused and the device goes on; off, nothing is logged. tests/unit/test_hostile_fuzz.py
checks the same on random hostile rings, byte by byte against a shadow of guest memory."""
from __future__ import annotations

import os

import numpy as np
import pytest

from vnetbe.dirtylog import DirtyLog
from vnetbe.errors import ConfigError
from vnetbe.memory import GuestMemory
from vnbtest.device import DeviceRig

PAGE = 4096


def frame(i: int, size: int = 300) -> bytes:
    return bytes.fromhex("020000000002" "020000000001") + b"\x88\xb5" + bytes((i + k) & 0xFF for k in range(size - 14))


@pytest.fixture(params=["split", "packed"])
def rig(request):
    r = DeviceRig(GuestMemory(16 << 20), queue_size=64, packed=request.param == "packed")
    yield r
    r.close()


def _pages(gpa: int, size: int) -> set[int]:
    return set(range(gpa // PAGE, (gpa + size - 1) // PAGE + 1))


def test_rx_buffers_and_the_used_side_of_both_rings_are_logged(rig):
    with DirtyLog.for_memory(rig.mem) as log:
        rig.dev.start_dirty_log(log)
        g = rig.guest
        before = bytes(rig.mem.view(g.rx_buf_gpa, g.rx_buf_size * 64))
        for i in range(40):
            rig.link.inject(frame(i))
            assert g.receive(2.0) == frame(i)
            g.send(frame(i, 200))
            assert rig.link.sent(2.0) is not None
        rig.dev.stop()
        dirty = set(log.dirty_pages())
        after = bytes(rig.mem.view(g.rx_buf_gpa, g.rx_buf_size * 64))
        changed = np.flatnonzero(np.frombuffer(before, np.uint8) != np.frombuffer(after, np.uint8))
        rx_written = {(g.rx_buf_gpa + int(b)) // PAGE for b in changed}
        assert rx_written and rx_written <= dirty, sorted(rx_written - dirty)
        for q, (n, d, a, u) in g.rings.items():
            # split: the used ring; packed: used descriptors go back into the descriptor ring
            where = _pages(d, 16 * n) if g.packed else _pages(u, 4 + 8 * n)
            assert where & dirty, (q, sorted(where), sorted(dirty))


def test_a_log_too_small_for_the_memory_is_refused_and_the_device_goes_on(rig):
    fd = os.memfd_create("vnb-test-log")
    try:
        os.ftruncate(fd, 64)
        with DirtyLog.from_fd(fd, 64) as small:
            with pytest.raises(ConfigError, match="covers guest memory up to 0x200000"):
                rig.dev.start_dirty_log(small)
    finally:
        os.close(fd)
    assert rig.dev.dirty_log is None
    rig.guest.send(frame(1))
    assert rig.link.sent(2.0)[rig.dev.hdr_len:] == frame(1)


def test_a_log_past_the_end_of_its_file_is_refused():
    fd = os.memfd_create("vnb-test-log")
    try:
        os.ftruncate(fd, 4096)
        with pytest.raises(ConfigError, match="past the end of its file"):
            DirtyLog.from_fd(fd, 4096, offset=1)
    finally:
        os.close(fd)


def test_once_the_log_is_stopped_nothing_is_logged(rig):
    with DirtyLog.for_memory(rig.mem) as log:
        rig.dev.start_dirty_log(log)
        rig.link.inject(frame(1))
        assert rig.guest.receive(2.0) == frame(1)
        rig.dev.stop_dirty_log()
        assert log.dirty_pages()
        for i in range(5):
            rig.link.inject(frame(i))
            assert rig.guest.receive(2.0) == frame(i)
        assert log.dirty_pages() == []

