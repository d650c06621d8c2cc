"""Random hostile rings through the whole device: whatever the guest writes into its descriptor
tables, indirect tables and avail rings, the userspace datapath must not crash, must not hang, must
write the canary region of guest memory only where a writable descriptor pointed, and must end each queue either working
or stopped with exactly one fault (DEVICE_NEEDS_RESET set).

Hypothesis drives the shapes; the fixed cases in test_guest_faults.py name each fault one by one."""
from __future__ import annotations

import os
import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vnetbe import spec
from vnetbe.dirtylog import DirtyLog
from vnetbe.errors import GuestFault

from test_guest_faults import CANARY, LOW_END, MB, QSIZE, RX, TX, Rig
from vnbtest.rings import pack_desc
from vnbtest.wait import thread_sleeping, wait_for

# The lab (software-emulated, ~10x slower) runs a quarter of the examples: tests/run.sh sets 0.25.
SCALE = float(os.environ.get("VNETBE_EXAMPLES_SCALE", 1))
TABLES = CANARY + 0x8000          # where hostile indirect tables live (8 of 16 entries each)
TABLE_ENTRIES = 16

# Addresses a hostile descriptor may carry: inside the canary region, at its edges, in the hole,
# past the end, near 2^64, and inside the rig's own rings and buffers (region 0).
addr = st.one_of(
    st.integers(CANARY, CANARY + MB - 1),
    st.sampled_from([CANARY - 8, CANARY + MB - 8, LOW_END - 8, LOW_END, 1 << 40, 2**64 - 16, 0]),
    st.integers(0, LOW_END - 1),
    st.builds(lambda k: TABLES + 16 * TABLE_ENTRIES * k, st.integers(0, 7)),
)
length = st.one_of(st.integers(0, 4096), st.sampled_from([2**31, 2**32 - 1, 16 * TABLE_ENTRIES, 24]))
# Mostly plausible flags, so that many chains are valid and the device really reads and writes
# through them; any mix of NEXT, WRITE and INDIRECT besides.
flags = st.one_of(st.sampled_from([2, 3, 0, 1, 4]), st.integers(0, 7))
# Indices and heads mostly among the first 8 descriptors, so heads meet the descriptors written.
index = st.one_of(st.integers(0, 7), st.integers(0, QSIZE + 4))
desc = st.tuples(addr, length, flags, index)
queue_shape = st.fixed_dictionaries({
    "descs": st.lists(st.tuples(st.integers(0, 7), desc), max_size=12),
    "heads": st.lists(index, min_size=1, max_size=8),
    "aim": st.booleans(),          # make the first head one of the descriptors just written
    "idx_delta": st.one_of(st.integers(0, 8), st.sampled_from([QSIZE + 1, 0x8000, 0xFFFF])),
})
table = st.lists(desc, min_size=1, max_size=TABLE_ENTRIES)


def _writable_ranges(shapes, tables):
    """Canary bytes a writable descriptor (in a ring or a table) names: the device may write there."""
    out = []
    for d in [d for s in shapes.values() for _, d in s["descs"]] + [d for t in tables for d in t]:
        a, n, f, _ = d
        if f & spec.VRING_DESC_F_WRITE:
            out.append((a, a + n))
    return out


def _run_hostile(shapes, tables, frames, settle, log: bool = False) -> list[int]:
    """Write the hostile rings, kick, inject ``frames``, wait for ``settle(rig)``, stop the device and
    check what every hostile run must satisfy. Returns the canary addresses (64-byte blocks) written.
    With ``log`` the device keeps a dirty log meanwhile, and every page it changed must be in it."""
    rig = Rig()
    dirty = DirtyLog.for_memory(rig.mem) if log else None
    try:
        mem = rig.mem
        if dirty is not None:
            rig.dev.start_dirty_log(dirty)
        for k, t in enumerate(tables):
            mem.write(TABLES + 16 * TABLE_ENTRIES * k, b"".join(pack_desc(a, n, f, x) for a, n, f, x in t))
        canary0 = bytes(mem.view(CANARY, MB))
        for q, s in shapes.items():
            num, d, a, _ = rig.ring(q)
            for i, (ad, n, f, x) in s["descs"]:
                mem.write(d + 16 * i, pack_desc(ad, n, f, x))
            pos = rig.device_pos(q)
            heads = list(s["heads"])
            if s["aim"] and s["descs"]:
                heads[0] = s["descs"][0][0]
            for k, h in enumerate(heads):
                mem.write(a + 4 + 2 * ((pos + k) % num), struct.pack("<H", h & 0xFFFF))
            mem.write(a + 2, struct.pack("<H", (pos + s["idx_delta"]) & 0xFFFF))
        # Everything the test writes is written: from here on only the device changes guest memory.
        before = rig.snapshot() if dirty is not None else None
        if dirty is not None:
            dirty.dirty_pages()
        for q in shapes:
            rig.kick(q)
        for n in frames:
            rig.link.inject(bytes(n))
        harvested = settle(rig) or set()      # pages a settle took from the log itself

        t0 = time.monotonic()
        states = rig.dev.stop()                       # the thread must come back: no hang
        assert time.monotonic() - t0 < 2.0
        st_ = rig.dev.stats()
        broken = {q for q, s in states.items() if s.broken}
        assert sum(st_["faults"].values()) == len(broken), (st_["faults"], states)
        assert bool(rig.dev.status & spec.DEVICE_NEEDS_RESET) == bool(broken)
        if broken:
            with pytest.raises(GuestFault):
                rig.dev.check()

        after = mem.view(CANARY, MB)
        allowed = _writable_ranges(shapes, tables)
        written = [CANARY + i for i in range(0, MB, 64) if canary0[i:i + 64] != bytes(after[i:i + 64])]
        for lo in written:
            assert any(a < lo + 64 and lo < b for a, b in allowed), f"device wrote canary at {lo:#x}"
        if dirty is not None:
            pages = set(dirty.dirty_pages()) | harvested
            changed = {b // 4096 for b in rig.changed_bytes(before, rig.snapshot())}
            assert changed <= pages, f"written, not logged: pages {sorted(changed - pages)}"
        return written
    finally:
        rig.close()
        if dirty is not None:
            dirty.close()


@settings(max_examples=max(1, round(60 * SCALE)), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shapes=st.fixed_dictionaries({RX: queue_shape, TX: queue_shape}), tables=st.lists(table, max_size=8),
       frames=st.lists(st.integers(14, 9000), max_size=4))
def test_no_hostile_ring_crashes_hangs_or_writes_where_it_was_not_pointed(shapes, tables, frames):
    _run_hostile(shapes, tables, frames, _settled)


@settings(max_examples=max(1, round(40 * SCALE)), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shapes=st.fixed_dictionaries({RX: queue_shape, TX: queue_shape}), tables=st.lists(table, max_size=8),
       frames=st.lists(st.integers(14, 9000), max_size=4))
def test_every_page_the_device_writes_on_hostile_rings_is_in_the_dirty_log(shapes, tables, frames):
    _run_hostile(shapes, tables, frames, _settled, log=True)


def test_the_log_check_sees_rx_buffers_and_the_used_ring_and_an_unlogged_write():
    """The property above is not blind: a frame placed in the canary region and the used ring entry
    for it are in the log; a byte changed behind the device's back is not."""
    shapes = {RX: {"descs": [(0, (CANARY + 0x100, 2048, spec.VRING_DESC_F_WRITE, 0))], "heads": [0],
                   "idx_delta": 1, "aim": True},
              TX: {"descs": [], "heads": [0], "idx_delta": 0, "aim": False}}
    seen = {}

    def settle(rig):
        assert wait_for(lambda: rig.dev.stats()["rx_frames"] == 1)
        pages = set(rig.dev.dirty_log.dirty_pages())
        seen.update(pages=pages, used=rig.ring(RX)[3] // 4096)
        rig.mem.write(CANARY + 0x10000, b"x")        # the test's own write: not the device's, not logged
        seen["unlogged"] = set(rig.dev.dirty_log.dirty_pages())
        rig.mem.write(CANARY + 0x10000, bytes([0xC5]))   # put it back, so the final check holds
        return seen["pages"] | seen["unlogged"]
    _run_hostile(shapes, [], [100], settle, log=True)
    assert {CANARY // 4096, seen["used"]} <= seen["pages"], seen
    assert (CANARY + 0x10000) // 4096 not in seen["unlogged"]


def _settled(rig) -> None:
    """Until the device has read both kicks and gone back to sleep: then it has walked every chain
    the rings offered and placed (or dropped) every frame it could, whatever the shapes were."""
    def done() -> bool:
        s = rig.dev.stats()
        return s["tx_kicks"] >= 1 and s["rx_kicks"] >= 1 and thread_sleeping(rig.dev.threads()[0])
    assert wait_for(done), rig.dev.stats()


def test_the_write_check_sees_a_device_write_into_the_canary_region():
    # A plain writable RX chain into the canary region: the device writes there, and the check above
    # counts it (allowed, since a writable descriptor named it). Without this the check could be blind.
    shapes = {RX: {"descs": [(0, (CANARY + 0x100, 2048, spec.VRING_DESC_F_WRITE, 0))], "heads": [0],
                   "idx_delta": 1, "aim": True},
              TX: {"descs": [], "heads": [0], "idx_delta": 0, "aim": False}}
    written = _run_hostile(shapes, [], [100], lambda rig: wait_for(lambda: rig.dev.stats()["rx_frames"] == 1))
    assert written == [CANARY + 0x100, CANARY + 0x140]      # 12-byte header + 100-byte frame
