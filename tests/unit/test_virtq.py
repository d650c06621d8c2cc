"""Device side of the split virtqueue (csrc/device/vnb_virtq.c), driven by the driver side over real guest
memory: index wrap, EVENT_IDX, notification suppression, indirect tables, chains across regions,
unpop, and every fault the device must raise instead of trusting the ring."""
from __future__ import annotations

import errno
import functools
import struct
import time

import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from vnetbe.tools._native import ffi, lib
from vnetbe.memory import GuestMemory

from vnbtest.rings import F_INDIRECT, F_NEXT, F_WRITE, Ring, iov_inside, merge_iov, pack_desc, split_gpa

MB = 1 << 20


def need_event_ref(event: int, new: int, old: int) -> bool:
    """§2.7.10 in words: notify iff event_idx is one of the indices old, old+1, ..., new-1 (mod 2^16)."""
    return (event - old) % 65536 < (new - old) % 65536


# ---------------------------------------------------------------- EVENT_IDX arithmetic

@settings(max_examples=500, deadline=None)
@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
def test_need_event_matches_the_spec_over_all_16bit_wraps(event, new, old):
    assert bool(lib.vnb_drv_need_event(event, new, old)) == need_event_ref(event, new, old)


@settings(max_examples=150, deadline=None)
@given(old=st.integers(0, 0xFFFF), step=st.integers(0, 0xFFFF))
def test_need_event_fires_for_exactly_the_indices_that_were_crossed(old, step):
    new = (old + step) & 0xFFFF
    crossed = {(old + k) & 0xFFFF for k in range(step)}
    for ev in list(crossed)[:50] + [(old - 1) & 0xFFFF, new, (new + 1) & 0xFFFF]:
        assert bool(lib.vnb_drv_need_event(ev, new, old)) == (ev in crossed)


def test_need_event_near_the_wrap_exhaustively():
    # Every event index against windows straddling 0xffff -> 0.
    for old, new in ((0xFFF0, 0x0010), (0xFFFF, 0x0000), (0xFFFE, 0xFFFF), (0x0000, 0x0000), (0x7FFF, 0x8001)):
        fired = [e for e in range(65536) if lib.vnb_drv_need_event(e, new, old)]
        assert fired == sorted((old + k) & 0xFFFF for k in range((new - old) % 65536))


# ---------------------------------------------------------------- index wrap

@pytest.mark.parametrize("num", [1, 8, 256])
@pytest.mark.parametrize("base", [0xFFF0, 0xFFFF, 0x0000])
def test_avail_index_wraps_at_0xffff_without_losing_chains(mem, num, base):
    r = Ring(mem, num)
    r.set_base(base)
    buf = mem.alloc(64 * num, 64)
    expect_pos = base
    for rnd in range(40):
        batch = 1 + (rnd * 7) % num
        added = []
        for k in range(batch):
            segs = [(buf + 64 * ((rnd + k) % num), 1 + (rnd + k) % 63, (rnd + k) & 1)]
            head = r.add(segs, token=rnd * 1000 + k)
            assert head >= 0
            added.append((head, segs))
        r.publish()
        assert lib.vnb_vq_avail_pending(r.vq) == batch
        for head, segs in added:
            # The driver wrote the head where ring position (idx mod num) says, across the wrap.
            assert r.avail_entry(expect_pos) == head
            rc, c = r.pop()
            assert rc == 1 and c["head"] == head
            assert (c["out"], c["in_"]) == r.expected_iov(segs)
            expect_pos = (expect_pos + 1) & 0xFFFF
            r.push_used(head, 7)
        assert r.pop() == (0, None)
        assert r.used_idx == expect_pos and r.avail_idx == expect_pos
        got = []
        while (u := r.get_used()) is not None:
            got.append(u)
        assert got == [(7, rnd * 1000 + k) for k in range(batch)]
        assert r.drv.num_free == num
    assert r.vq.last_avail_idx == expect_pos and r.vq.used_idx == expect_pos
    assert (expect_pos - base) % 65536 > 0  # sanity: we went somewhere


def test_pending_count_is_right_across_the_wrap(mem):
    r = Ring(mem, 16)
    r.set_base(0xFFFA)
    buf = mem.alloc(4096)
    for k in range(12):
        r.add([(buf + 16 * k, 10, 0)], token=k)
    r.publish()
    assert r.avail_idx == (0xFFFA + 12) & 0xFFFF == 6
    assert lib.vnb_vq_avail_pending(r.vq) == 12


def test_used_index_wrap_returns_every_head_once(mem):
    r = Ring(mem, 4)
    r.set_base(0xFFFE)
    buf = mem.alloc(4096)
    for k in range(20):
        h = r.add([(buf, 1, 1)], token=k)
        r.publish()
        rc, c = r.pop()
        assert rc == 1
        r.push_used(c["head"], k)
        assert r.used_elem((0xFFFE + k) & 0xFFFF) == (h, k)
        assert r.get_used() == (k, k)
    assert r.used_idx == (0xFFFE + 20) & 0xFFFF


# ---------------------------------------------------------------- notification suppression

def test_no_notify_flag_suppresses_kicks_without_event_idx(mem):
    r = Ring(mem, 8, event_idx=False)
    buf = mem.alloc(4096)
    r.add([(buf, 8, 0)])
    r.publish()
    assert r.kick_prepare()                      # flags start at 0: kick
    lib.vnb_vq_disable_notify(r.vq)
    assert r.used_flags == 1
    r.add([(buf, 8, 0)])
    r.publish()
    assert not r.kick_prepare()                  # device is polling: no kick
    assert r.pop()[0] == 1 and r.pop()[0] == 1
    assert lib.vnb_vq_enable_notify(r.vq) == 0   # nothing arrived meanwhile: may sleep
    assert r.used_flags == 0
    r.add([(buf, 8, 0)])
    r.publish()
    assert r.kick_prepare()


def test_enable_notify_reports_buffers_that_raced_in(mem):
    for ev in (False, True):
        r = Ring(mem, 8, event_idx=ev)
        buf = mem.alloc(64)
        lib.vnb_vq_disable_notify(r.vq)
        r.add([(buf, 8, 0)])
        r.publish()
        # The device must not sleep: a buffer is there that nobody will kick about.
        assert lib.vnb_vq_enable_notify(r.vq) == 1


def test_no_interrupt_flag_suppresses_interrupts_without_event_idx(mem):
    r = Ring(mem, 8, event_idx=False)
    buf = mem.alloc(4096)
    for _ in range(3):
        r.add([(buf, 8, 1)])
    r.publish()
    lib.vnb_drv_disable_cb(r.drv)
    assert r.avail_flags == 1
    rc, c = r.pop()
    r.push_used(c["head"])
    assert not r.should_notify()
    assert lib.vnb_drv_enable_cb(r.drv, 0) == 1   # a used entry is already there: don't sleep
    assert r.avail_flags == 0
    rc, c = r.pop()
    r.push_used(c["head"])
    assert r.should_notify()


def test_avail_event_decides_kicks_with_event_idx(mem):
    r = Ring(mem, 16, event_idx=True)
    buf = mem.alloc(4096)
    r.set_base(0xFFFC)   # across the wrap on purpose
    assert lib.vnb_vq_enable_notify(r.vq) == 0
    assert r.avail_event == 0xFFFC
    r.add([(buf, 8, 0)])
    r.publish()
    assert r.kick_prepare()                   # crossed avail_event
    lib.vnb_vq_disable_notify(r.vq)          # with EVENT_IDX this writes nothing...
    assert r.used_flags == 0
    for _ in range(6):
        r.add([(buf, 8, 0)])
    r.publish()
    assert not r.kick_prepare()               # ...the stale avail_event suppresses the kick
    while r.pop()[0] == 1:
        pass
    assert r.vq.last_avail_idx == (0xFFFC + 7) & 0xFFFF
    assert lib.vnb_vq_enable_notify(r.vq) == 0
    assert r.avail_event == (0xFFFC + 7) & 0xFFFF
    # A batch of 4 whose window contains avail_event kicks once.
    for _ in range(4):
        r.add([(buf, 8, 0)])
    r.publish()
    assert r.kick_prepare()
    assert not r.kick_prepare()               # nothing new since the last decision


def test_used_event_decides_interrupts_with_event_idx(mem):
    r = Ring(mem, 16, event_idx=True)
    buf = mem.alloc(4096)
    r.set_base(0xFFF8)
    for _ in range(16):
        r.add([(buf, 8, 1)])
    r.publish()
    heads = []
    while (p := r.pop())[0] == 1:
        heads.append(p[1]["head"])
    # After set_base the device cannot know what the driver last saw: first flush always notifies.
    r.push_used(heads[0])
    assert r.should_notify()
    assert r.get_used() is not None
    # The driver asks to hear when 4 more are used (enable_cb with delay: used_event = last_used + 3).
    assert lib.vnb_drv_enable_cb(r.drv, 3) == 0
    assert r.used_event == (0xFFF8 + 1 + 3) & 0xFFFF
    fired = []
    for h in heads[1:9]:
        r.push_used(h)
        fired.append(r.should_notify())
    assert fired == [False, False, False, True, False, False, False, False]
    # Used entries flushed in one batch that jumps over used_event still notify once.
    lib.vnb_drv_enable_cb(r.drv, 0)
    while r.get_used() is not None:
        pass
    lib.vnb_drv_enable_cb(r.drv, 2)
    for h in heads[9:14]:
        r.push_used(h, flush=False)
    lib.vnb_vq_flush_used(r.vq)
    assert r.should_notify()
    assert not r.should_notify()              # nothing new: no second interrupt


@pytest.mark.parametrize("event_idx", [False, True])
def test_no_interrupt_when_nothing_was_used_since_the_last_one(mem, event_idx):
    # The datapath asks after every pass, idle ones included: only new used entries may interrupt.
    r = Ring(mem, 8, event_idx=event_idx)
    buf = mem.alloc(64)
    lib.vnb_drv_enable_cb(r.drv, 0)
    r.add([(buf, 8, 1)])
    r.add([(buf, 8, 1)])
    r.publish()
    rc, c = r.pop()
    r.push_used(c["head"])
    assert r.should_notify()
    assert r.get_used() is not None
    lib.vnb_drv_enable_cb(r.drv, 0)      # the driver consumed it and waits for the next one
    assert not r.should_notify()
    lib.vnb_vq_flush_used(r.vq)
    assert not r.should_notify()
    rc, c = r.pop()
    r.push_used(c["head"])
    assert r.should_notify()


# ---------------------------------------------------------------- indirect tables

def test_indirect_chain_pops_as_its_table_with_one_ring_slot(mem2):
    r = Ring(mem2, 8, indirect=True, table_slots=8, table_entries=8)
    buf = mem2.alloc(8192, 64)
    segs = [(buf, 12, 0), (buf + 100, 300, 0), (buf + 1000, 50, 1), (buf + 2000, 1, 1), (MB - 8, 16, 1)]
    head = r.add(segs, indirect=True, token=3)
    assert head >= 0 and r.drv.num_free == 7
    r.publish()
    rc, c = r.pop()
    assert rc == 1 and c["head"] == head
    assert c["ndesc"] == 1 + len(segs)
    out, in_ = r.expected_iov(segs)
    assert (c["out"], c["in_"]) == (out, in_)
    assert len(c["in_"]) == 4                         # the last segment crosses into the next region
    assert (c["out_len"], c["in_len"]) == (312, 67)
    r.push_used(head, 67)
    assert r.get_used() == (67, 3)
    assert r.drv.num_free == 8


def test_indirect_table_must_not_span_two_mappings(mem2):
    r = Ring(mem2, 8, indirect=True)
    r.write_desc(0, MB - 16, 32, F_INDIRECT)
    mem2.write(MB - 16, pack_desc(0x100, 4))
    mem2.write(MB, pack_desc(0x200, 4))
    _publish_raw(r, [0])
    assert r.pop()[0] == -lib.VNB_FAULT_DESC_ADDR


def test_indirect_table_of_1024_one_byte_buffers_fits_and_1025_does_not():
    for n, want in ((1024, 1), (1025, -lib.VNB_FAULT_CHAIN_TOO_LONG)):
        m = GuestMemory(1 << 20)
        try:
            r = Ring(m, 4, indirect=True)
            table = m.alloc(16 * n, 16)
            buf = m.alloc(n)
            m.write(table, b"".join(pack_desc(buf + k, 1, F_NEXT if k + 1 < n else 0, k + 1) for k in range(n)))
            r.write_desc(0, table, 16 * n, F_INDIRECT)
            _publish_raw(r, [0])
            rc, c = r.pop()
            assert rc == want
            if rc == 1:
                assert len(c["out"]) == 1024 and c["out_len"] == 1024
        finally:
            m.close()


# ---------------------------------------------------------------- chains across adjacent regions

@pytest.mark.parametrize("writable", [0, 1])
def test_buffer_spanning_two_adjacent_regions_maps_to_two_iovecs(mem2, writable):
    r = Ring(mem2, 8)
    segs = [(MB - 100, 300, writable)]
    r.add(segs)
    r.publish()
    rc, c = r.pop()
    assert rc == 1
    iov = c["in_"] if writable else c["out"]
    assert len(iov) == 2 and [n for _, n in iov] == [100, 200]
    assert iov[0][0] == mem2.regions[0].hva + MB - 100
    assert iov[1][0] == mem2.regions[1].hva
    assert c["in_len" if writable else "out_len"] == 300


def test_chain_with_many_buffers_across_the_boundary_keeps_order(mem2):
    r = Ring(mem2, 16)
    segs = [(MB - 4096 + 512 * k, 700, k >= 5) for k in range(10)]
    r.add(segs)
    r.publish()
    rc, c = r.pop()
    assert rc == 1 and c["ndesc"] == 10
    assert (c["out"], c["in_"]) == r.expected_iov(segs)
    for base, n in c["out"] + c["in_"]:
        assert iov_inside(mem2, base, n)


def test_zero_length_descriptor_adds_no_iovec_but_must_still_point_into_memory(mem):
    r = Ring(mem, 8)
    buf = mem.alloc(64)
    r.add([(buf, 0, 0), (buf, 8, 0)])
    r.publish()
    rc, c = r.pop()
    assert rc == 1 and c["out"] == split_gpa(mem, buf, 8) and c["ndesc"] == 2
    r.write_desc(7, 1 << 40, 0)
    _publish_raw(r, [7])
    assert r.pop()[0] == -lib.VNB_FAULT_DESC_ADDR


# ---------------------------------------------------------------- unpop

def test_unpop_gives_back_exactly_the_last_chains_in_order(mem):
    r = Ring(mem, 8)
    r.set_base(0xFFFE)
    buf = mem.alloc(4096)
    heads = [r.add([(buf + 64 * k, 10 + k, 1)], token=k) for k in range(5)]
    r.publish()
    popped = [r.pop()[1] for _ in range(4)]
    assert [c["head"] for c in popped] == heads[:4]
    lib.vnb_vq_unpop(r.vq, 2)
    assert lib.vnb_vq_avail_pending(r.vq) == 3
    again = [r.pop()[1] for _ in range(3)]
    assert [c["head"] for c in again] == heads[2:5]
    assert [c["in_"] for c in again] == [split_gpa(mem, buf + 64 * k, 10 + k) for k in (2, 3, 4)]
    assert r.pop() == (0, None)


# ---------------------------------------------------------------- setup validation

@pytest.mark.parametrize("num", [0, 3, 65535, 65536, 1 << 16 | 1])
def test_vq_init_refuses_bad_queue_sizes(mem, num):
    vq = ffi.new("struct vnb_vq *")
    assert lib.vnb_vq_init(vq, mem.table, num, 0, 0x10000, 0x20000, 0) == -errno.EINVAL


@pytest.mark.parametrize("desc,avail,used", [(8, 0x10000, 0x20000), (0, 0x10001, 0x20000), (0, 0x10000, 0x20002)])
def test_vq_init_refuses_misaligned_rings(mem, desc, avail, used):
    vq = ffi.new("struct vnb_vq *")
    assert lib.vnb_vq_init(vq, mem.table, 8, desc, avail, used, 0) == -errno.EINVAL


def test_vq_init_checks_the_event_fields_only_when_event_idx_is_negotiated(mem):
    end = mem.regions[0].size
    num = 8
    vq = ffi.new("struct vnb_vq *")
    # avail ends exactly at the end of memory without its trailing used_event
    avail = end - (4 + 2 * num)
    assert lib.vnb_vq_init(vq, mem.table, num, 0, avail, 0x1000, 0) == 0
    assert lib.vnb_vq_init(vq, mem.table, num, 0, avail, 0x1000, lib.VNB_F_EVENT_IDX) == -errno.EFAULT
    used = end - (4 + 8 * num)
    assert lib.vnb_vq_init(vq, mem.table, num, 0, 0x1000, used, 0) == 0
    assert lib.vnb_vq_init(vq, mem.table, num, 0, 0x1000, used, lib.VNB_F_EVENT_IDX) == -errno.EFAULT
    assert lib.vnb_vq_init(vq, mem.table, num, end - 64, 0x1000, 0x2000, 0) == -errno.EFAULT


# ---------------------------------------------------------------- faults at the ring level

def _publish_raw(r: Ring, heads, idx_delta=None):
    """Put heads in the avail ring as a (possibly hostile) driver would, bypassing vnb_drv_add."""
    pos = r.avail_idx
    for k, h in enumerate(heads):
        r.mem.write(r.avail + 4 + 2 * ((pos + k) % r.num), struct.pack("<H", h & 0xFFFF))
    r.avail_idx = pos + (len(heads) if idx_delta is None else idx_delta)


def _fault_cases(buf):
    """name -> ([(desc index, addr, len, flags, next)], avail heads, avail idx delta, expected fault)"""
    n = lib
    return {
        "outside_memory": ([(0, 1 << 40, 8, 0, 0)], [0], None, n.VNB_FAULT_DESC_ADDR),
        "runs_past_the_end": ([(0, MB - 4, 8, 0, 0)], [0], None, n.VNB_FAULT_DESC_ADDR),
        "len_wraps_address": ([(0, buf, 0xFFFFFFFF, 0, 0), (1, 2**64 - 8, 16, 0, 0)], [1], None,
                              n.VNB_FAULT_DESC_ADDR),
        "loop_to_self": ([(0, buf, 8, F_NEXT, 0)], [0], None, n.VNB_FAULT_LOOP),
        "loop_of_three": ([(0, buf, 8, F_NEXT, 1), (1, buf, 8, F_NEXT, 2), (2, buf, 8, F_NEXT, 0)], [0], None,
                          n.VNB_FAULT_LOOP),
        "head_out_of_range": ([], [8], None, n.VNB_FAULT_HEAD_RANGE),
        "head_0xffff": ([], [0xFFFF], None, n.VNB_FAULT_HEAD_RANGE),
        "next_out_of_range": ([(0, buf, 8, F_NEXT, 8)], [0], None, n.VNB_FAULT_NEXT_RANGE),
        "avail_jump": ([(0, buf, 8, 0, 0)], [0], 9, n.VNB_FAULT_AVAIL_IDX),
        "avail_backwards": ([(0, buf, 8, 0, 0)], [0], 0xFFFF, n.VNB_FAULT_AVAIL_IDX),
        "readable_after_writable": ([(0, buf, 8, F_WRITE | F_NEXT, 1), (1, buf, 8, 0, 0)], [0], None,
                                    n.VNB_FAULT_ORDER),
    }


@pytest.mark.parametrize("case", sorted(_fault_cases(0)))
def test_malformed_ring_stops_the_queue_with_its_fault(mem, case):
    r = Ring(mem, 8)
    buf = mem.alloc(4096)
    descs, heads, delta, fault = _fault_cases(buf)[case]
    for d in descs:
        r.write_desc(*d)
    _publish_raw(r, heads, delta)
    assert r.pop() == (-fault, None)
    assert r.vq.broken and r.vq.fault == fault
    # Broken stays broken: even a good chain afterwards is not popped.
    r.write_desc(3, buf, 8)
    _publish_raw(r, [3])
    assert r.pop() == (-fault, None)


def test_chain_of_exactly_num_descriptors_is_not_a_loop(mem):
    r = Ring(mem, 8)
    buf = mem.alloc(4096)
    r.add([(buf + 8 * k, 8, k >= 4) for k in range(8)])
    r.publish()
    rc, c = r.pop()
    assert rc == 1 and c["ndesc"] == 8


@pytest.mark.parametrize("case,fault", [
    ("nested", "VNB_FAULT_NESTED_INDIRECT"),
    ("len_zero", "VNB_FAULT_INDIRECT_LEN"),
    ("len_17", "VNB_FAULT_INDIRECT_LEN"),
    ("loop_inside", "VNB_FAULT_LOOP"),
    ("next_past_table", "VNB_FAULT_NEXT_RANGE"),
    ("not_negotiated", "VNB_FAULT_INDIRECT_NOT_NEGOTIATED"),
    ("table_outside", "VNB_FAULT_DESC_ADDR"),
    ("order_inside", "VNB_FAULT_ORDER"),
    ("too_many_entries", "VNB_FAULT_INDIRECT_LEN"),
    ("indirect_with_next", "VNB_FAULT_INDIRECT_NEXT"),
])
def test_malformed_indirect_table_stops_the_queue(mem, case, fault):
    r = Ring(mem, 8, indirect=case != "not_negotiated")
    buf = mem.alloc(4096)
    t = mem.alloc(256, 16)
    table, tlen = {
        "nested": ([pack_desc(buf, 8, F_NEXT, 1), pack_desc(t, 16, F_INDIRECT)], 32),
        "len_zero": ([pack_desc(buf, 8)], 0),
        "len_17": ([pack_desc(buf, 8)], 17),
        "loop_inside": ([pack_desc(buf, 8, F_NEXT, 1), pack_desc(buf, 8, F_NEXT, 0)], 32),
        "next_past_table": ([pack_desc(buf, 8, F_NEXT, 2), pack_desc(buf, 8), pack_desc(buf, 8)], 32),
        "not_negotiated": ([pack_desc(buf, 8)], 16),
        "table_outside": ([], 32),
        "order_inside": ([pack_desc(buf, 8, F_WRITE | F_NEXT, 1), pack_desc(buf, 8)], 32),
        # One entry past vhost's limit: refused by its length, before a byte of it is read.
        "too_many_entries": ([pack_desc(buf, 8)], 16 * (lib.VNB_MAX_INDIRECT + 1)),
        "indirect_with_next": ([pack_desc(buf, 8)], 16),
    }[case]
    mem.write(t, b"".join(table) or b"\0")
    flags = F_INDIRECT | (F_NEXT if case == "indirect_with_next" else 0)
    r.write_desc(0, t if case != "table_outside" else MB - 16, tlen, flags)
    _publish_raw(r, [0])
    assert r.pop() == (-getattr(lib, fault), None)
    assert r.vq.fault == getattr(lib, fault)


def test_one_pop_walks_at_most_the_queue_size_plus_one_indirect_table():
    # The longest chain a guest can build: num ring descriptors, the last one an indirect table of
    # the most entries allowed, every buffer zero bytes long (they map to no iovec, so the 1024-iovec
    # limit never counts them). It is still one bounded walk, and a legal (empty) chain.
    num, entries = 32768, lib.VNB_MAX_INDIRECT
    with GuestMemory(8 * MB) as m:
        r = Ring(m, num)
        buf = m.alloc(4096)
        t = m.alloc(16 * entries, 16)
        m.write(t, b"".join(pack_desc(buf, 0, F_NEXT, k + 1) for k in range(entries - 1)) + pack_desc(buf, 0))
        m.write(r.desc, b"".join(pack_desc(buf, 0, F_NEXT, k + 1) for k in range(num - 1))
                + pack_desc(t, 16 * entries, F_INDIRECT))
        _publish_raw(r, [0])
        rc, c = r.pop()
        assert rc == 1 and c["ndesc"] == num + entries == lib.VNB_MAX_CHAIN_DESC
        assert c["out"] == [] and c["in_"] == []


def test_indirect_with_next_cannot_revisit_a_table(mem):
    # vhost follows NEXT after an indirect descriptor, so a chain of them visits one table num times;
    # the spec forbids the pair, and vnetbe refuses it before reading the table.
    r = Ring(mem, 8)
    buf = mem.alloc(4096)
    t = mem.alloc(256, 16)
    mem.write(t, pack_desc(buf, 0))
    for i in range(8):
        r.write_desc(i, t, 16, F_INDIRECT | F_NEXT, (i + 1) % 8)
    _publish_raw(r, [0])
    assert r.pop() == (-lib.VNB_FAULT_INDIRECT_NEXT, None)


# ---------------------------------------------------------------- random descriptor tables

REGIONS = [(0, 64 << 10), (64 << 10, 64 << 10), (1 << 20, 64 << 10)]   # adjacent pair, a hole, one more
NUMS = [1, 2, 4, 8, 16]
DESC_GPA, AVAIL_GPA, USED_GPA, IND_GPA = 0x0, 0x400, 0x600, 0x1000   # IND_GPA: 4 KiB of random tables


def weighted(*pairs):
    """Pick a strategy with the given weights (one_of drops repeated strategies, so it cannot weight)."""
    picks = [s for w, s in pairs for _ in range(w)]
    return st.integers(0, len(picks) - 1).flatmap(lambda k: picks[k])


@functools.lru_cache(maxsize=None)
def _addr():
    edges = [0, (64 << 10) - 64, 64 << 10, (128 << 10) - 64, 128 << 10, (1 << 20) - 8, 1 << 20,
             (1 << 20) + (64 << 10) - 64, (1 << 20) + (64 << 10), 2**64 - 64]
    near_edge = st.sampled_from(edges).flatmap(lambda e: st.integers(e, min(e + 128, 2**64 - 1)))
    inside = st.integers(0x2000, (128 << 10) - 1)
    # Mostly plausible addresses, so most chains get far enough to be worth walking.
    return weighted((4, inside), (2, near_edge), (1, st.integers(IND_GPA, IND_GPA + 4096)),
                    (1, st.integers(0, 2**64 - 1)))


@functools.lru_cache(maxsize=None)
def _len():
    return weighted((4, st.integers(0, 256)), (1, st.sampled_from([16, 32, 48, 4096, 65536, 0xFFFFFFFF])),
                    (1, st.integers(0, 0xFFFFFFFF)))


@functools.lru_cache(maxsize=None)
def _desc(num_limit):
    flags = weighted((6, st.sampled_from([0, F_NEXT, F_WRITE, F_NEXT | F_WRITE])), (1, st.integers(0, 7)),
                     (1, st.integers(0, 0xFFFF)))
    nxt = weighted((6, st.integers(0, max(num_limit - 1, 0))), (1, st.integers(0, num_limit + 1)),
                   (1, st.integers(0, 0xFFFF)))
    direct = st.tuples(_addr(), _len(), flags, nxt)
    # An indirect descriptor that points at the random tables with a plausible length.
    indirect = st.tuples(st.integers(0, 255).map(lambda k: IND_GPA + 16 * k),
                         st.one_of(st.integers(1, 16).map(lambda k: 16 * k), _len()),
                         st.sampled_from([F_INDIRECT, F_INDIRECT | F_NEXT, F_INDIRECT | F_WRITE]), nxt)
    return weighted((3, direct), (1, indirect))


class RefPop:
    """Reference walk of one chain (same acceptance rules as vhost's vhost_get_vq_desc and the
    order of checks vnb_vq_pop documents), computed from the region list, not the C table."""

    def __init__(self, mem, num, indirect):
        self.mem, self.num, self.indirect = mem, num, indirect

    def desc(self, gpa):
        return struct.unpack("<QIHH", self.mem.read(gpa, 16))

    def add(self, d, chain):
        addr, ln, flags, _ = d
        w = flags & F_WRITE
        if not w and chain["in_"]:
            raise Fault(lib.VNB_FAULT_ORDER)
        if addr + ln > 2**64:
            raise Fault(lib.VNB_FAULT_DESC_ADDR)
        if ln == 0:
            if split_gpa(self.mem, addr, 1) is None:
                raise Fault(lib.VNB_FAULT_DESC_ADDR)
            return
        pieces = split_gpa(self.mem, addr, ln)
        if pieces is None:
            raise Fault(lib.VNB_FAULT_DESC_ADDR)
        if len(chain["out"]) + len(chain["in_"]) + len(pieces) > 1024:
            raise Fault(lib.VNB_FAULT_CHAIN_TOO_LONG)
        chain["in_" if w else "out"].extend(pieces)

    def walk(self, last_avail):
        avail_idx = struct.unpack("<H", self.mem.read(AVAIL_GPA + 2, 2))[0]
        pending = (avail_idx - last_avail) & 0xFFFF
        if pending == 0:
            return 0, None
        if pending > self.num:
            raise Fault(lib.VNB_FAULT_AVAIL_IDX)
        head = struct.unpack("<H", self.mem.read(AVAIL_GPA + 4 + 2 * (last_avail % self.num), 2))[0]
        if head >= self.num:
            raise Fault(lib.VNB_FAULT_HEAD_RANGE)
        chain = {"head": head, "out": [], "in_": []}
        i, seen = head, 0
        while True:
            d = self.desc(DESC_GPA + 16 * i)
            seen += 1
            if seen > self.num:
                raise Fault(lib.VNB_FAULT_LOOP)
            if d[2] & F_INDIRECT and d[2] & F_NEXT:
                raise Fault(lib.VNB_FAULT_INDIRECT_NEXT)
            if d[2] & F_INDIRECT:
                self.walk_indirect(d, chain)
            else:
                self.add(d, chain)
            if not d[2] & F_NEXT:
                return 1, chain
            if d[3] >= self.num:
                raise Fault(lib.VNB_FAULT_NEXT_RANGE)
            i = d[3]

    def walk_indirect(self, ind, chain):
        addr, ln = ind[0], ind[1]
        if not self.indirect:
            raise Fault(lib.VNB_FAULT_INDIRECT_NOT_NEGOTIATED)
        if ln == 0 or ln % 16 or ln // 16 > 65536:
            raise Fault(lib.VNB_FAULT_INDIRECT_LEN)
        if addr + ln > 2**64 or not any(r.gpa <= addr and addr + ln <= r.gpa + r.size for r in self.mem.regions):
            raise Fault(lib.VNB_FAULT_DESC_ADDR)
        count, j, seen = ln // 16, 0, 0
        while True:
            d = self.desc(addr + 16 * j)
            seen += 1
            if seen > count:
                raise Fault(lib.VNB_FAULT_LOOP)
            if d[2] & F_INDIRECT:
                raise Fault(lib.VNB_FAULT_NESTED_INDIRECT)
            self.add(d, chain)
            if not d[2] & F_NEXT:
                return
            if d[3] >= count:
                raise Fault(lib.VNB_FAULT_NEXT_RANGE)
            j = d[3]


class Fault(Exception):
    def __init__(self, code):
        self.code = code


@pytest.fixture(scope="module")
def holey():
    m = GuestMemory(regions=REGIONS)
    yield m
    m.close()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), num=st.sampled_from(NUMS), indirect=st.booleans(), base=st.integers(0, 0xFFFF))
def test_random_descriptor_tables_never_escape_guest_memory_or_hang(holey, data, num, indirect, base):
    mem = holey
    descs = data.draw(st.lists(_desc(num), min_size=num, max_size=num))
    for i, d in enumerate(descs):
        mem.write(DESC_GPA + 16 * i, pack_desc(*d))
    # Random indirect tables: descriptors biased to link within a small table.
    tbl = data.draw(st.lists(_desc(8), min_size=0, max_size=16))
    mem.write(IND_GPA, b"".join(pack_desc(*d) for d in tbl) + bytes(4096 - 16 * len(tbl)))
    good_head = st.integers(0, num - 1)
    heads = data.draw(st.lists(weighted((7, good_head), (1, st.integers(0, 0xFFFF))),
                               min_size=num, max_size=num))
    mem.write(AVAIL_GPA + 4, b"".join(struct.pack("<H", h) for h in heads))
    good_delta = st.integers(1, num)
    delta = data.draw(weighted((6, good_delta), (1, st.integers(0, num + 1)), (1, st.integers(0, 0xFFFF))))
    mem.write(AVAIL_GPA, struct.pack("<HH", 0, (base + delta) & 0xFFFF))

    vq = ffi.new("struct vnb_vq *")
    assert lib.vnb_vq_init(vq, mem.table, num, DESC_GPA, AVAIL_GPA, USED_GPA,
                           lib.VNB_F_INDIRECT if indirect else 0) == 0
    lib.vnb_vq_set_base(vq, base, base)
    c = ffi.new("struct vnb_chain *")
    ref = RefPop(mem, num, indirect)
    last = base
    for _ in range(num + 2):
        try:
            want = ref.walk(last)
        except Fault as f:
            want = (-f.code, None)
        t0 = time.monotonic()
        rc = lib.vnb_vq_pop(vq, c)
        assert time.monotonic() - t0 < 0.5
        assert rc == want[0]
        event(f"pop -> {rc}")
        if rc <= 0:
            break
        iov = [(int(ffi.cast("uintptr_t", c.iov[i].iov_base)), c.iov[i].iov_len) for i in range(c.nout + c.nin)]
        for b, n in iov:
            assert n > 0 and iov_inside(mem, b, n)
        assert c.head == want[1]["head"]
        assert merge_iov(iov[:c.nout]) == merge_iov(want[1]["out"])
        assert merge_iov(iov[c.nout:]) == merge_iov(want[1]["in_"])
        assert c.out_len == sum(n for _, n in iov[:c.nout]) and c.in_len == sum(n for _, n in iov[c.nout:])
        last = (last + 1) & 0xFFFF
    if vq.broken:
        assert lib.vnb_vq_pop(vq, c) == -vq.fault


# ---------------------------------------------------------------- counting another side's used ring

def _tally_ring(mem, num: int, mrg: bool):
    """A ring whose used side we write by hand, as vhost's worker would, and a vnb_vq over it."""
    r = Ring(mem, num)
    vq = ffi.new("struct vnb_vq *")
    assert lib.vnb_vq_init(vq, mem.table, num, r.desc, r.avail, r.used, lib.VNB_F_MRG_RXBUF if mrg else 0) == 0
    bufs = mem.alloc(64 * num, 16)
    for i in range(num):
        r.write_desc(i, bufs + 64 * i, 64, F_WRITE)
    return r, vq, bufs


def _put_frame(mem, r, bufs, idx: int, nbufs: int, lens: list[int]) -> int:
    """Frame of ``nbufs`` used entries from ring position idx, num_buffers in its first buffer's header."""
    for k in range(nbufs):
        i = (idx + k) % r.num
        if k == 0:
            mem.write(bufs + 64 * i + 10, struct.pack("<H", nbufs))
        mem.write(r.used + 4 + 8 * ((idx + k) % r.num), struct.pack("<II", i, lens[k]))
    return idx + nbufs


@pytest.mark.parametrize("mrg", [False, True])
def test_used_tally_counts_frames_across_calls_and_the_16bit_wrap(mem, mrg):
    r, vq, bufs = _tally_ring(mem, 64, mrg)
    t = ffi.new("struct vnb_used_tally *")
    start = 0xFFF0                       # the index wraps during the run
    t.seen_idx = start
    idx, frames, nbytes, entries = start, 0, 0, 0
    for k in range(400):
        n = 1 + (k % 3) if mrg else 1
        lens = [12 + 40] + [30] * (n - 1)
        idx = _put_frame(mem, r, bufs, idx, n, lens)
        frames, nbytes, entries = frames + 1, nbytes + sum(lens) - 12, entries + n
        # Publish part way through a merged frame now and then: the rest comes in a later call.
        r.used_idx = idx - (1 if n > 1 and k % 5 == 0 else 0)
        lib.vnb_vq_tally_used(vq, 12, t)
        r.used_idx = idx
        if k % 7 == 0:
            lib.vnb_vq_tally_used(vq, 12, t)
    lib.vnb_vq_tally_used(vq, 12, t)
    assert (t.entries, t.frames, t.bytes, t.seen_idx) == (entries, frames, nbytes, idx & 0xFFFF)


def test_used_tally_survives_a_lying_descriptor(mem):
    # The guest owns the descriptors: an id out of range or a header outside memory counts one frame,
    # never a read outside guest memory.
    r, vq, bufs = _tally_ring(mem, 8, True)
    mem.write(r.used + 4, struct.pack("<II", 999, 100))           # id beyond the ring
    r.write_desc(1, 1 << 40, 64, F_WRITE)                          # buffer outside guest memory
    mem.write(r.used + 12, struct.pack("<II", 1, 100))
    r.used_idx = 2
    t = ffi.new("struct vnb_used_tally *")
    lib.vnb_vq_tally_used(vq, 12, t)
    assert (t.entries, t.frames, t.skip) == (2, 2, 0)


def test_used_tally_counts_a_lapped_ring_one_frame_an_entry_without_reading_stale_slots(mem):
    # 20 entries pass an 8-entry ring between two calls: the 12 oldest slots now hold newer entries,
    # so they count one frame each, unread; the last 8 are read (here 4 frames of 2 buffers each).
    r, vq, bufs = _tally_ring(mem, 8, True)
    idx = 0
    for _ in range(4):
        idx = _put_frame(mem, r, bufs, idx, 2, [52, 30])
    r.used_idx = 20
    t = ffi.new("struct vnb_used_tally *")
    t.seen_idx = 0
    lib.vnb_vq_tally_used(vq, 12, t)
    assert (t.entries, t.frames, t.unread, t.seen_idx) == (20, 12 + 4, 12, 20)


def test_used_tally_caps_what_a_header_can_make_it_skip(mem):
    r, vq, bufs = _tally_ring(mem, 8, True)
    _put_frame(mem, r, bufs, 0, 1, [52])
    mem.write(bufs + 10, struct.pack("<H", 0xFFFF))     # the guest claims 65535 buffers
    r.used_idx = 1
    t = ffi.new("struct vnb_used_tally *")
    lib.vnb_vq_tally_used(vq, 12, t)
    assert t.skip == 7                                   # at most a ring's worth, not 65534
