"""Device side of the packed virtqueue (csrc/device/vnb_vq_packed.c) behind the one ring API, driven by
vnetbe's packed driver side over real guest memory: wrap counters over many laps, buffer ids, chains and
indirect tables, unpop, event suppression both ways, the vhost-user base encoding, and every fault the
device raises instead of trusting the ring (wrong wrap bits, ids out of range or reused, loops, nested
indirect tables, lengths past memory)."""
from __future__ import annotations

import errno
import random

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from vnetbe.memory import GuestMemory
from vnetbe.tools._native import ffi, lib

from vnbtest.rings import F_INDIRECT, F_NEXT, F_WRITE, P_AVAIL, P_USED, Ring, merge_iov, pack_packed_desc, split_gpa

MB = 1 << 20
WRAP = 1 << 15


def fault(r: Ring) -> int:
    return r.vq.fault if r.vq.broken else 0


def roundtrip(r: Ring, segs, token: int, *, indirect: bool = False, length: int = 0) -> None:
    """Add one chain, publish, pop it on the device side, check it byte for byte, use it, reclaim it."""
    buf_id = r.add(segs, indirect=indirect, token=token)
    assert buf_id >= 0, buf_id
    r.publish()
    rc, chain = r.pop()
    assert rc == 1, (rc, fault(r))
    out, in_ = r.expected_iov(segs)
    assert merge_iov(chain["out"]) == merge_iov(out) and merge_iov(chain["in_"]) == merge_iov(in_)
    assert chain["head"] == buf_id
    r.push_used(chain["head"], length)
    assert r.get_used() == (length, token)


# ---------------------------------------------------------------- wrap counters, ids, chains

@pytest.mark.parametrize("num", [1, 3, 8, 256])
def test_buffers_round_trip_over_many_laps_of_the_ring(mem, num):
    # Sizes that are not powers of two are legal for packed rings (2.8.10.1); the counters flip each lap.
    r = Ring(mem, num, packed=True, table_slots=4)
    bufs = mem.alloc(4096 * 4, 64)
    rng = random.Random(num)
    slots = 0
    for token in range(12 * num + 5):
        n = rng.randint(1, min(num, 4))
        segs = [(bufs + 1024 * k, rng.randint(1, 1024), k >= n // 2) for k in range(n)]
        ind = n > 1 and rng.random() < 0.3
        roundtrip(r, segs, token, indirect=ind, length=rng.randint(0, 2000))
        slots += 1 if ind else n
    avail, used = r.base()
    assert avail == used, "every slot popped was used"
    assert avail & ~WRAP == slots % num and bool(avail & WRAP) == ((slots // num) % 2 == 0)
    assert r.drv.num_free == num


def test_a_batch_becomes_visible_only_at_publish_and_whole(mem):
    r = Ring(mem, 16, packed=True)
    buf = mem.alloc(4096)
    for t in range(5):
        assert r.add([(buf, 100, 0)], token=t) >= 0
    assert r.pop() == (0, None), "the head's flags wait for publish: the device sees nothing yet"
    r.publish()
    got = [r.pop()[1]["head"] for _ in range(5)]
    assert len(set(got)) == 5 and r.pop() == (0, None)


def test_used_buffers_of_a_batch_reach_the_driver_only_at_the_flush(mem):
    r = Ring(mem, 16, packed=True)
    buf = mem.alloc(4096)
    for t in range(4):
        r.add([(buf, 100, 1)], token=t)
    r.publish()
    heads = [r.pop()[1]["head"] for _ in range(4)]
    for h in heads:
        r.push_used(h, 7, flush=False)
    assert r.get_used() is None, "the first used descriptor's flags go out last"
    lib.vnb_vq_flush_used(r.vq)
    assert [r.get_used() for _ in range(4)] == [(7, t) for t in range(4)]


def test_a_used_descriptor_skips_the_slots_of_its_chain(mem):
    # 2.8.6: one used descriptor per buffer, written over its first slot; the next goes after the chain.
    r = Ring(mem, 8, packed=True)
    buf = mem.alloc(4096)
    ids = [r.add([(buf, 10, 0)] * 3, token=1), r.add([(buf, 10, 0)], token=2)]
    r.publish()
    for _ in ids:
        rc, c = r.pop()
        r.push_used(c["head"], 0)
    assert r.packed_desc(0)[2] == ids[0] and r.packed_desc(3)[2] == ids[1]
    assert r.packed_desc(0)[3] & (P_AVAIL | P_USED) == P_AVAIL | P_USED
    assert r.base() == (4 | WRAP, 4 | WRAP)


def test_a_written_used_descriptor_says_so_with_its_write_flag(mem):
    r = Ring(mem, 4, packed=True)
    buf = mem.alloc(4096)
    for length in (0, 60):
        r.add([(buf, 100, 1)], token=length)
        r.publish()
        rc, c = r.pop()
        r.push_used(c["head"], length)
        assert r.get_used() == (length, length)
    assert not r.packed_desc(0)[3] & F_WRITE and r.packed_desc(1)[3] & F_WRITE


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(num=st.integers(1, 40), ops=st.lists(st.tuples(st.integers(1, 5), st.booleans(), st.integers(0, 3)),
                                             min_size=1, max_size=120))
def test_any_sequence_of_adds_and_uses_returns_every_token_once_in_order(num, ops):
    with GuestMemory(1 * MB) as mem:
        r = Ring(mem, num, packed=True, table_slots=num)
        buf = mem.alloc(4096)
        outstanding, popped, token = [], [], 0
        for nsegs, indirect, use in ops:
            nsegs = min(nsegs, num)
            if r.add([(buf, 64, False)] * nsegs, indirect=indirect, token=token, slot=token % num) >= 0:
                outstanding.append(token)
                token += 1
            r.publish()
            while True:
                rc, c = r.pop()
                assert rc in (0, 1), fault(r)
                if rc == 0:
                    break
                popped.append(c["head"])
            for _ in range(min(use, len(popped))):
                r.push_used(popped.pop(0), 1)
            while (got := r.get_used()) is not None:
                assert got == (1, outstanding.pop(0))
        for h in popped:
            r.push_used(h, 1)
        while (got := r.get_used()) is not None:
            assert got == (1, outstanding.pop(0))
        assert not outstanding and r.drv.num_free == num
        assert fault(r) == 0


def test_unpop_gives_back_the_last_buffers_and_they_pop_again(mem):
    r = Ring(mem, 8, packed=True)
    buf = mem.alloc(4096)
    for t in range(5):
        r.add([(buf, 10, 1)] * (1 + t % 2), token=t)
    r.publish()
    first = [r.pop()[1]["head"] for _ in range(5)]
    base = r.base()
    lib.vnb_vq_unpop(r.vq, 3)
    again = [r.pop()[1]["head"] for _ in range(3)]
    assert again == first[2:] and r.base() == base
    lib.vnb_vq_unpop(r.vq, 5)
    assert r.base() == (WRAP, WRAP) and [r.pop()[1]["head"] for _ in range(5)] == first


def test_set_base_takes_the_vhost_user_encoding_and_refuses_positions_past_the_ring(mem):
    r = Ring(mem, 8, packed=True)
    assert lib.vnb_vq_set_base(r.vq, 5, 5 | WRAP) == 0 and r.base() == (5, 5 | WRAP)
    assert lib.vnb_vq_set_base(r.vq, 8 | WRAP, 0) == -errno.EINVAL
    assert lib.vnb_vq_set_base(r.vq, 0, 0x7FFF) == -errno.EINVAL


def test_init_takes_any_size_up_to_32768_and_4_byte_event_structures(mem):
    vq = ffi.new("struct vnb_vq *")
    desc = mem.alloc(16 * 5, 16)
    assert lib.vnb_vq_init(vq, mem.table, 5, desc, 0x1000, 0x1004, lib.VNB_F_PACKED) == 0
    assert lib.vnb_vq_init(vq, mem.table, 5, desc, 0x1002, 0x1004, lib.VNB_F_PACKED) == -errno.EINVAL
    assert lib.vnb_vq_init(vq, mem.table, 0, desc, 0x1000, 0x1004, lib.VNB_F_PACKED) == -errno.EINVAL
    assert lib.vnb_vq_init(vq, mem.table, 32769, desc, 0x1000, 0x1004, lib.VNB_F_PACKED) == -errno.EINVAL
    assert lib.vnb_vq_init(vq, mem.table, 5, desc, 1 << 20, 0x1004, lib.VNB_F_PACKED) == -errno.EFAULT


# ---------------------------------------------------------------- event suppression

def posted_and_popped(mem, n: int, **kw) -> tuple[Ring, list[int]]:
    """A packed ring of 16 with n one-buffer writable chains added, published and popped: (ring, ids)."""
    r = Ring(mem, 16, packed=True, **kw)
    buf = mem.alloc(4096)
    for t in range(n):
        r.add([(buf, 10, 1)], token=t)
    r.publish()
    return r, [r.pop()[1]["head"] for _ in range(n)]


@pytest.mark.parametrize("event_idx", [False, True])
def test_kicks_follow_the_device_event_structure(mem, event_idx):
    r = Ring(mem, 16, packed=True, event_idx=event_idx)
    buf = mem.alloc(4096)
    lib.vnb_vq_disable_notify(r.vq)
    r.add([(buf, 10, 0)], token=0)
    r.publish()
    assert not r.kick_prepare(), "the device is polling: no kick"
    r.pop()
    assert lib.vnb_vq_enable_notify(r.vq) == 0, "nothing arrived since: the device may sleep"
    r.add([(buf, 10, 0)], token=1)
    r.publish()
    assert r.kick_prepare(), "the device asked for the next buffer"
    assert lib.vnb_vq_enable_notify(r.vq) == 1, "and sees that it is there"


def test_a_buffer_that_raced_in_is_seen_by_enable_notify(mem):
    r = Ring(mem, 4, packed=True)
    buf = mem.alloc(4096)
    lib.vnb_vq_disable_notify(r.vq)
    r.add([(buf, 10, 0)], token=0)
    r.publish()
    assert lib.vnb_vq_enable_notify(r.vq) == 1


@pytest.mark.parametrize("event_idx", [False, True])
def test_interrupts_follow_the_driver_event_structure(mem, event_idx):
    r, heads = posted_and_popped(mem, 8, event_idx=event_idx)
    lib.vnb_drv_disable_cb(r.drv)
    r.push_used(heads[0], 1)
    assert not r.should_notify(), "interrupts disabled"
    assert r.get_used() == (1, 0)
    assert lib.vnb_drv_enable_cb(r.drv, 2 if event_idx else 0) == 0
    r.push_used(heads[1], 1)
    assert r.should_notify() is (not event_idx), "with EVENT_IDX the driver asked for the third buffer on"
    r.push_used(heads[2], 1)
    r.push_used(heads[3], 1)
    assert r.should_notify()
    assert not r.should_notify(), "nothing used since the last decision"


def test_event_idx_interrupt_across_the_wrap(mem):
    r = Ring(mem, 4, packed=True, event_idx=True)
    buf = mem.alloc(4096)
    fired = []
    for t in range(14):
        r.add([(buf, 10, 1)], token=t)
        r.publish()
        rc, c = r.pop()
        if t % 3 == 0:
            assert lib.vnb_drv_enable_cb(r.drv, 0) == 0   # ask for the next one only
        r.push_used(c["head"], 1)
        fired.append(r.should_notify())
        assert r.get_used() == (1, t)
        lib.vnb_drv_disable_cb(r.drv)
    # The first decision after start is always an interrupt (nothing known yet); then only asked-for ones.
    assert fired == [True] + [t % 3 == 0 for t in range(1, 14)]


# ---------------------------------------------------------------- a hostile driver

def hostile(mem: GuestMemory, num: int = 8, **kw) -> tuple[Ring, int]:
    return Ring(mem, num, packed=True, **kw), mem.alloc(4096)


def avail(wrap: int = 1) -> int:
    return P_AVAIL if wrap else P_USED


def test_a_chain_running_into_a_slot_not_made_available_is_a_fault(mem):
    r, buf = hostile(mem)
    r.write_packed_desc(1, buf, 10, 0, 0)                            # never made available
    r.write_packed_desc(0, buf, 10, 0, avail() | F_NEXT)
    assert r.pop()[0] == -lib.VNB_FAULT_CHAIN_FLAGS


def test_a_slot_with_the_bits_of_the_other_lap_is_not_available(mem):
    r, buf = hostile(mem)
    r.write_packed_desc(0, buf, 10, 0, avail(0))                     # the next lap's bits: not yet
    assert r.pop() == (0, None) and fault(r) == 0
    r.write_packed_desc(0, buf, 10, 0, P_AVAIL | P_USED)             # a used descriptor
    assert r.pop() == (0, None) and fault(r) == 0


def test_avail_count_counts_whole_buffers_up_to_its_limit(mem):
    r = Ring(mem, 8, packed=True, table_slots=4)
    buf = mem.alloc(4096)
    assert lib.vnb_vq_avail_count(r.vq, 32) == 0
    for t, n in enumerate([1, 3, 2]):                                # 6 slots, 3 buffers
        r.add([(buf + 64 * k, 10, 1) for k in range(n)], token=t)
    assert lib.vnb_vq_avail_count(r.vq, 32) == 0, "nothing published yet"
    r.publish()
    assert lib.vnb_vq_avail_count(r.vq, 32) == 3
    assert lib.vnb_vq_avail_count(r.vq, 2) == 2
    assert r.pop()[0] == 1 and lib.vnb_vq_avail_count(r.vq, 32) == 2


def test_avail_count_on_a_ring_whose_every_slot_says_available_stays_bounded(mem):
    # A hostile ring: every slot available, none ends a chain. The count looks at no more than the
    # ring's free slots and counts the open chain as one buffer, as avail_pending does: pop refuses it.
    r, buf = hostile(mem, 4)
    for i in range(4):
        r.write_packed_desc(i, buf, 10, i, avail() | F_NEXT)
    assert lib.vnb_vq_avail_count(r.vq, 0xFFFF) == 1 == lib.vnb_vq_avail_pending(r.vq)
    assert fault(r) == 0, "counting is a hint: faults are pop's to raise"
    assert r.pop()[0] < 0
    r, buf = hostile(mem, 4)
    for i in range(4):
        r.write_packed_desc(i, buf, 10, i, avail())
    assert lib.vnb_vq_avail_count(r.vq, 0xFFFF) == 4, "one lap, not more"


def test_avail_count_is_above_zero_whenever_a_buffer_is_pending(mem):
    # A chain that runs into a slot not made available: pending says 1, so the count must too (a
    # datapath that loops while the ring says "buffers came" would otherwise spin: found by fuzz_datapath).
    r, buf = hostile(mem)
    r.write_packed_desc(0, buf, 10, 0, avail() | F_NEXT)
    assert lib.vnb_vq_avail_pending(r.vq) == 1
    assert lib.vnb_vq_avail_count(r.vq, 32) == 1
    assert r.pop()[0] == -lib.VNB_FAULT_CHAIN_FLAGS


def test_avail_count_on_a_ring_with_every_slot_in_flight_follows_avail_pending(mem):
    # Every slot held by a popped buffer, and a hostile driver marks the head available for the next
    # lap: the count walks nothing, yet must say what avail_pending says, and pop faults.
    r, buf = hostile(mem, 4)
    for i in range(4):
        r.write_packed_desc(i, buf, 10, i, avail())
        assert r.pop()[0] == 1
    r.write_packed_desc(0, buf, 10, 0, avail(0))
    assert lib.vnb_vq_avail_pending(r.vq) == 1 == lib.vnb_vq_avail_count(r.vq, 32)
    assert r.pop()[0] == -lib.VNB_FAULT_AVAIL_IDX


@pytest.mark.parametrize("buf_id", [8, 0xFFFF])
def test_a_buffer_id_beyond_the_ring_is_a_fault(mem, buf_id):
    r, buf = hostile(mem)
    r.write_packed_desc(0, buf, 10, buf_id, avail())
    assert r.pop()[0] == -lib.VNB_FAULT_BUFFER_ID


def test_a_buffer_id_reused_while_in_flight_is_a_fault(mem):
    r, buf = hostile(mem)
    r.write_packed_desc(0, buf, 10, 3, avail())
    r.write_packed_desc(1, buf, 10, 3, avail())
    assert r.pop()[0] == 1
    assert r.pop()[0] == -lib.VNB_FAULT_BUFFER_ID


def test_a_chain_that_comes_around_onto_its_own_first_slot_is_refused(mem):
    # Its first slot carries this lap's bits, not the next one's: the walk ends there (the LOOP
    # check behind it is a second bound that a packed ring cannot reach).
    r, buf = hostile(mem, 4)
    for i in range(4):
        r.write_packed_desc(i, buf, 10, 0, avail() | F_NEXT)
    assert r.pop()[0] == -lib.VNB_FAULT_CHAIN_FLAGS


def test_more_slots_made_available_than_are_free_is_a_fault(mem):
    # Buffers in flight hold slots; a driver that makes their slots available again overruns the ring.
    r, buf = hostile(mem, 4)
    for i in range(3):
        r.write_packed_desc(i, buf, 10, i, avail())
        assert r.pop()[0] == 1
    r.write_packed_desc(3, buf, 10, 3, avail() | F_NEXT)
    r.write_packed_desc(0, buf, 10, 0, avail(0))                    # the next lap, over a slot in flight
    assert r.pop()[0] == -lib.VNB_FAULT_AVAIL_IDX


def test_a_chain_of_exactly_the_ring_size_is_legal(mem):
    r, buf = hostile(mem, 4)
    for i in range(4):
        r.write_packed_desc(i, buf, 10, 2, avail() | (F_NEXT if i < 3 else 0))
    rc, c = r.pop()
    assert rc == 1 and c["head"] == 2 and c["ndesc"] == 4


@pytest.mark.parametrize("case,fault_name", [
    ("nested", "NESTED_INDIRECT"), ("indirect_next", "INDIRECT_NEXT"), ("len_zero", "INDIRECT_LEN"),
    ("len_odd", "INDIRECT_LEN"), ("outside", "DESC_ADDR"), ("buffer_outside", "DESC_ADDR"),
    ("not_negotiated", "INDIRECT_NOT_NEGOTIATED"), ("readable_after_writable", "ORDER"),
])
def test_a_malformed_indirect_table_or_buffer_is_its_fault(mem, case, fault_name):
    r, buf = hostile(mem, indirect=case != "not_negotiated")
    table = mem.alloc(64, 16)
    entries = [pack_packed_desc(buf, 10, 0, F_WRITE if case == "readable_after_writable" else 0),
               pack_packed_desc(buf, 10, 0, 0)]
    if case == "nested":
        entries[1] = pack_packed_desc(table, 32, 0, F_INDIRECT)
    if case == "buffer_outside":
        entries[1] = pack_packed_desc((1 << 20) - 4, 10, 0, 0)
    mem.write(table, b"".join(entries))
    addr, length, flags = table, 32, avail() | F_INDIRECT
    if case == "indirect_next":
        flags |= F_NEXT
    if case == "len_zero":
        length = 0
    if case == "len_odd":
        length = 24
    if case == "outside":
        addr = (1 << 20) - 16
    r.write_packed_desc(0, addr, length, 0, flags)
    assert r.pop()[0] == -getattr(lib, f"VNB_FAULT_{fault_name}")
    assert r.pop()[0] == -getattr(lib, f"VNB_FAULT_{fault_name}"), "the queue stays stopped"


def test_a_popped_buffer_maps_to_exactly_its_guest_range(mem):
    r, buf = hostile(mem)
    r.write_packed_desc(0, buf, 4096, 1, avail())
    rc, c = r.pop()
    assert rc == 1 and merge_iov(c["out"]) == merge_iov(split_gpa(mem, buf, 4096))


def test_a_used_id_the_device_never_popped_writes_nothing(mem):
    r, buf = hostile(mem)
    before = mem.read(r.desc, 16 * 8)
    lib.vnb_vq_add_used(r.vq, 5, 10)
    lib.vnb_vq_add_used(r.vq, 0xFFFF, 10)
    lib.vnb_vq_flush_used(r.vq)
    assert mem.read(r.desc, 16 * 8) == before


def test_a_fresh_event_idx_driver_is_notified_once_until_it_moves_its_event(mem):
    # As the split ring's used_event of 0 (test_rx_flood_loses_nothing_and_keeps_order bounds the
    # interrupts by the guest's waits + 1): zeroed memory would say ENABLE, an interrupt every flush.
    r, heads = posted_and_popped(mem, 6, event_idx=True)
    fired = []
    for h in heads:
        r.push_used(h, 1)
        fired.append(r.should_notify())
    assert fired == [True] + [False] * 5
