"""Driver side of the split virtqueue (csrc/tools/vnb_driver.c) against the device side: what the device pops
is exactly what the driver added, every head comes back once, and no descriptor is lost or invented,
whatever the interleaving, index base, chain shape or device completion order."""
from __future__ import annotations

import errno
import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from vnetbe.tools._native import ffi, lib
from vnetbe.memory import GuestMemory

from vnbtest.rings import Ring, iov_inside

MB = 1 << 20
MAX_SEGS = 8


def in_flight_descs(model) -> int:
    return sum(ch["ndesc"] for ch in model.values())


# ---------------------------------------------------------------- plain driver behaviour

def test_add_refuses_empty_chains_and_full_rings_without_changing_state(mem):
    r = Ring(mem, 4)
    buf = mem.alloc(64)
    assert r.add([]) == -errno.EINVAL
    assert r.add([(buf, 1, 0)] * 3) >= 0
    before = (r.drv.num_free, r.drv.free_head, r.drv.avail_idx)
    assert r.add([(buf, 1, 0)] * 2) == -errno.ENOSPC
    assert (r.drv.num_free, r.drv.free_head, r.drv.avail_idx) == before
    assert r.add([(buf, 1, 0)]) >= 0
    assert r.drv.num_free == 0
    assert r.add([(buf, 1, 0)]) == -errno.ENOSPC


def test_indirect_chain_takes_one_descriptor_however_long(mem):
    r = Ring(mem, 2, table_slots=2, table_entries=MAX_SEGS)
    buf = mem.alloc(4096)
    segs = [(buf + 8 * k, 8, k >= 4) for k in range(MAX_SEGS)]
    assert r.add(segs, indirect=True, token=0) >= 0
    assert r.add(segs, indirect=True, token=1) >= 0
    assert r.drv.num_free == 0
    r.publish()
    for tok in (0, 1):
        rc, c = r.pop()
        assert rc == 1 and c["ndesc"] == 1 + MAX_SEGS
        assert (c["out"], c["in_"]) == r.expected_iov(segs)
        r.push_used(c["head"], 5)
    assert [r.get_used(), r.get_used(), r.get_used()] == [(5, 0), (5, 1), None]
    assert r.drv.num_free == 2


@pytest.mark.parametrize("num", [0, 3, 65536])
def test_driver_init_refuses_bad_queue_sizes(mem, num):
    q = ffi.new("struct vnb_drv_vq *")
    assert lib.vnb_drv_vq_init(q, mem.table, num, 0, 0x10000, 0x20000, 0) == -errno.EINVAL


def test_driver_init_refuses_rings_outside_memory(mem):
    q = ffi.new("struct vnb_drv_vq *")
    end = mem.regions[0].size
    assert lib.vnb_drv_vq_init(q, mem.table, 8, end - 64, 0x10000, 0x20000, 0) == -errno.EFAULT
    # The driver always owns used_event/avail_event space: a ring without it does not fit.
    assert lib.vnb_drv_vq_init(q, mem.table, 8, 0, end - (4 + 2 * 8), 0x20000, 0) == -errno.EFAULT
    assert lib.vnb_drv_vq_init(q, mem.table, 8, 0, 0x10000, end - (4 + 8 * 8), 0) == -errno.EFAULT


def test_used_entry_for_a_head_never_given_is_refused_and_harmless(mem):
    r = Ring(mem, 8)
    buf = mem.alloc(64)
    h = r.add([(buf, 4, 1), (buf + 4, 4, 1)], token=42)
    r.publish()
    rc, c = r.pop()
    # A buggy device returns an index out of range, then one that is not in flight, then the real one.
    for bogus in (8, 0xFFFFFFFF, 0x10000 + h, (h + 5) % 8):
        # Written raw: add_used takes a 16-bit head, a hostile device writes any 32-bit id.
        r.mem.write(r.used + 4 + 8 * (r.vq.used_idx % 8), struct.pack("<II", bogus, 0))
        r.vq.used_idx += 1
        lib.vnb_vq_flush_used(r.vq)
        assert r.get_used() == -errno.EIO
    assert r.drv.num_free == 6
    r.push_used(h, 3)
    assert r.get_used() == (3, 42)
    assert r.drv.num_free == 8
    r.push_used(h, 3)                          # the same head twice
    assert r.get_used() == -errno.EIO
    assert r.drv.num_free == 8


def test_driver_reclaims_from_its_private_links_even_if_the_device_scribbles_the_table(mem):
    r = Ring(mem, 8)
    buf = mem.alloc(4096)
    h = r.add([(buf, 4, 0), (buf + 8, 4, 0), (buf + 16, 4, 1)], token=1)
    r.publish()
    rc, c = r.pop()
    assert c["head"] == h
    mem.write(r.desc, bytes([0xA5]) * 16 * 8)     # a hostile device rewrites every next field
    r.push_used(c["head"], 0)
    assert r.get_used() == (0, 1)
    assert r.drv.num_free == 8
    # The free list is intact: the ring can be filled completely again and every chain pops cleanly.
    heads = [r.add([(buf + 64 * k, 8, 0)], token=k) for k in range(8)]
    assert sorted(heads) == list(range(8))
    r.publish()
    assert [r.pop()[1]["head"] for _ in range(8)] == heads


# ---------------------------------------------------------------- property: driver <-> device

def seg_strategy():
    # Addresses near the boundary of the two adjacent regions as often as anywhere else, so that
    # segments split into two iovecs are common.
    addr = st.one_of(st.integers(MB - 4096, MB + 4096), st.integers(0x40000, 2 * MB - 0x10000))
    return st.tuples(addr, st.integers(0, 3000))


chain_strategy = st.tuples(
    st.lists(seg_strategy(), min_size=0, max_size=5),   # readable
    st.lists(seg_strategy(), min_size=0, max_size=5),   # writable
    st.booleans(),                                     # indirect
).filter(lambda t: t[0] or t[1])

op_strategy = st.one_of(
    st.tuples(st.just("add"), chain_strategy),
    st.tuples(st.just("publish"), st.none()),
    st.tuples(st.just("pop"), st.integers(1, 8)),
    st.tuples(st.just("complete"), st.integers(1, 8)),
    st.tuples(st.just("reap"), st.none()),
)


@pytest.fixture(scope="module")
def big_mem():
    m = GuestMemory(regions=[(0, MB), (MB, MB)])
    yield m
    m.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(num=st.sampled_from([1, 2, 4, 8, 16]), base=st.one_of(st.integers(0xFFE0, 0xFFFF), st.integers(0, 0xFFFF)),
       event_idx=st.booleans(), seed=st.integers(0, 2**32 - 1),
       ops=st.lists(op_strategy, min_size=1, max_size=80))
def test_device_pops_exactly_what_the_driver_added_and_every_head_returns_once(
        big_mem, num, base, event_idx, seed, ops):
    mem = big_mem
    mem.reset_alloc()
    r = Ring(mem, num, event_idx=event_idx, table_slots=num, table_entries=2 * 5)
    r.set_base(base)
    rnd = random.Random(seed)
    free_slots = list(range(num))         # indirect table slots not held by a live chain
    token = 0
    live = {}                             # token -> chain the driver added and has not reaped
    unpublished, published = [], []      # tokens, FIFO
    popped = []                           # tokens the device holds
    used_order = []                       # tokens in the order the device returned them

    def check_conservation():
        assert r.drv.num_free + in_flight_descs(live) == num

    for op, arg in ops:
        if op == "add":
            rd, wr, ind = arg
            segs = [(a, n, 0) for a, n in rd] + [(a, n, 1) for a, n in wr]
            need = 1 if ind else len(segs)
            free_before = r.drv.num_free
            # Each live indirect chain holds a descriptor, so a free descriptor implies a free slot.
            slot = free_slots[0] if ind and free_slots else 0
            head = r.add(segs, indirect=ind, token=token, slot=slot)
            if need > free_before:
                assert head == -errno.ENOSPC
                continue
            assert head >= 0, head
            if ind:
                free_slots.remove(slot)
            live[token] = {"head": head, "segs": segs, "ndesc": need, "ind": ind, "slot": slot}
            unpublished.append(token)
            token += 1
        elif op == "publish":
            r.publish()
            published += unpublished
            unpublished = []
        elif op == "pop":
            for _ in range(arg):
                rc, c = r.pop()
                if not published:
                    assert rc == 0
                    break
                assert rc == 1
                t = published.pop(0)
                ch = live[t]
                assert c["head"] == ch["head"]
                out, in_ = r.expected_iov(ch["segs"])
                assert c["out"] == out and c["in_"] == in_
                assert c["ndesc"] == (1 + len(ch["segs"]) if ch["ind"] else len(ch["segs"]))
                for b, n in c["out"] + c["in_"]:
                    assert iov_inside(mem, b, n)
                popped.append(t)
        elif op == "complete":
            for _ in range(min(arg, len(popped))):
                t = popped.pop(rnd.randrange(len(popped)))   # devices may complete out of order
                r.push_used(live[t]["head"], t & 0xFFFF, flush=False)
                used_order.append(t)
            lib.vnb_vq_flush_used(r.vq)
        elif op == "reap":
            while (u := r.get_used()) is not None:
                assert u != -errno.EIO
                t = used_order.pop(0)
                assert u == (t & 0xFFFF, t)
                ch = live.pop(t)
                if ch["ind"]:
                    free_slots.append(ch["slot"])
            assert not used_order
        check_conservation()
        assert lib.vnb_drv_used_pending(r.drv) == len(used_order)
        assert lib.vnb_vq_avail_pending(r.vq) == len(published)

    # Drain: everything added comes back exactly once, and the ring is whole again.
    r.publish()
    published += unpublished
    while (p := r.pop())[0] == 1:
        t = published.pop(0)
        assert p[1]["head"] == live[t]["head"]
        popped.append(t)
    assert not published
    for t in popped:
        r.push_used(live[t]["head"], 0, flush=False)
        used_order.append(t)
    lib.vnb_vq_flush_used(r.vq)
    while (u := r.get_used()) is not None:
        t = used_order.pop(0)
        assert u[1] == t
        live.pop(t)
    assert not live and not used_order
    assert r.drv.num_free == num
    # The free list holds every index exactly once.
    i, seen = r.drv.free_head, set()
    for _ in range(num):
        seen.add(i)
        i = r.drv.next[i]
    assert seen == set(range(num))
    assert r.avail_idx == r.used_idx == r.vq.last_avail_idx == r.vq.used_idx


@settings(max_examples=60, deadline=None)
@given(num=st.sampled_from([2, 8, 64]), base=st.integers(0, 0xFFFF), batches=st.lists(st.integers(1, 64), max_size=30),
       event_idx=st.booleans())
def test_kicks_and_interrupts_are_never_lost_when_both_sides_sleep(big_mem, num, base, batches, event_idx):
    """The two-sided handshake: a side that goes to sleep after enable_* must be woken by the other.
    Whatever the batch sizes, each time the device sleeps, the driver's next publish kicks it, and each
    time the driver waits for used buffers, the device's next flush interrupts it."""
    mem = big_mem
    mem.reset_alloc()
    r = Ring(mem, num, event_idx=event_idx)
    r.set_base(base)
    buf = mem.alloc(64)
    device_asleep = lib.vnb_vq_enable_notify(r.vq) == 0
    assert device_asleep
    for n in batches:
        n = min(n, r.drv.num_free)
        if n == 0:
            continue
        for _ in range(n):
            assert r.add([(buf, 8, 1)]) >= 0
        r.publish()
        kicked = r.kick_prepare()
        if device_asleep:
            assert kicked, "device sleeps and the driver did not kick: lost wake-up"
        # Device wakes (kick or still polling), works the ring, then tries to sleep again.
        lib.vnb_vq_disable_notify(r.vq)
        heads = []
        while True:
            while (p := r.pop())[0] == 1:
                heads.append(p[1]["head"])
            if lib.vnb_vq_enable_notify(r.vq) == 0:
                break
            lib.vnb_vq_disable_notify(r.vq)
        device_asleep = True
        # The driver waits for everything it gave: enable_cb with a delay covering all in flight.
        pending = num - r.drv.num_free
        driver_waits = lib.vnb_drv_enable_cb(r.drv, pending - 1) == 0
        for h in heads:
            r.push_used(h, 0)
        if driver_waits:
            assert r.should_notify(), "driver sleeps on the call fd and was not interrupted"
        lib.vnb_drv_disable_cb(r.drv)
        while r.get_used() is not None:
            pass
        assert r.drv.num_free == num


def test_device_garbage_in_used_len_is_passed_through_not_trusted(mem):
    # The driver reports the length as the device wrote it; the caller (vnb_guest) bounds it.
    r = Ring(mem, 2)
    buf = mem.alloc(64)
    h = r.add([(buf, 8, 1)], token=9)
    r.publish()
    r.pop()
    r.push_used(h, 0xFFFFFFFF)
    assert r.get_used() == (0xFFFFFFFF, 9)
