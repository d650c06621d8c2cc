"""The guest is untrusted: a hostile ring, written raw into guest memory, must stop only its own queue
with the right GuestFault, set DEVICE_NEEDS_RESET, be counted, leave the datapath thread and the other
queue working, and make the device touch no guest memory it was not given.

Everything runs through the whole device (VirtioNet + the userspace datapath thread) over PairLink.
"""
from __future__ import annotations

import os
import struct
import time

import numpy as np
import pytest

from vnetbe import errors, spec
from vnetbe.tools._native import ffi, lib
from vnetbe.faults import FAULT_NAMES
from vnetbe.memory import GuestMemory

from vnbtest.device import DeviceRig
from vnbtest.rings import F_INDIRECT, F_NEXT, F_WRITE, pack_desc
from vnbtest.wait import wait_for

MB = 1 << 20
RX, TX = spec.RX_QUEUE, spec.TX_QUEUE
QSIZE = 64
# Region 0 holds the guest's rings and buffers; then a hole; region 1 is a canary area the hostile
# descriptors point into, so any stray device write shows up in the snapshot comparison.
LOW_END = 8 * MB
CANARY = 16 * MB
REGIONS = [(0, LOW_END), (CANARY, MB)]
FRAME = bytes(range(256)) * 4   # 1024 bytes, recognisable anywhere
SENT_FRAME = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + b"tx-ok" * 20


class Rig(DeviceRig):
    def __init__(self, features=None):
        mem = GuestMemory(regions=REGIONS)
        mem.view(CANARY, MB)[:] = np.frombuffer(bytes([0xC5, 0x3A]) * (MB // 2), np.uint8)
        super().__init__(mem, queue_size=QSIZE, features=features)

    # --- ring access from the "guest" side ---
    def ring(self, q):
        return self.guest.rings[q]   # (num, desc_gpa, avail_gpa, used_gpa)

    def u16(self, gpa):
        return struct.unpack("<H", self.mem.read(gpa, 2))[0]

    def used_idx(self, q):
        return self.u16(self.ring(q)[3] + 2)

    def device_pos(self, q):
        """Where the device will pop next. The device is idle and holds no chain, so it has returned
        everything it took: its last_avail_idx equals used->idx (no merged frame is half placed)."""
        return self.used_idx(q)

    def write_descs(self, q, descs):
        num, d, _, _ = self.ring(q)
        for i, addr, ln, flags, nxt in descs:
            assert i < num
            self.mem.write(d + 16 * i, pack_desc(addr, ln, flags, nxt))

    def offer(self, q, head, idx_delta=1):
        """Put ``head`` where the device pops next and move avail->idx by idx_delta past it (TX: the
        ring is drained, so this is a fresh entry; RX: the ring is full of posted buffers, so this
        rewrites the entry the device is about to take)."""
        num, _, a, _ = self.ring(q)
        pos = self.device_pos(q)
        self.mem.write(a + 4 + 2 * (pos % num), struct.pack("<H", head & 0xFFFF))
        if q == TX:
            self.mem.write(a + 2, struct.pack("<H", (pos + idx_delta) & 0xFFFF))
        elif idx_delta != 1:
            self.mem.write(a + 2, struct.pack("<H", (pos + idx_delta) & 0xFFFF))

    def kick(self, q):
        os.eventfd_write(self.guest.kick_fd[q], 1)

    # --- snapshots ---
    def snapshot(self):
        return [bytes(self.mem.view(r.gpa, r.size)) for r in self.mem.regions]

    def allowed_changes(self):
        """Bytes the device may rewrite while idle: used->flags and avail_event of each queue
        (notification suppression it toggles on every pass)."""
        out = set()
        for q in (RX, TX):
            num, _, _, u = self.ring(q)
            out |= {u, u + 1, u + 4 + 8 * num, u + 4 + 8 * num + 1}
        return out

    def changed_bytes(self, before, after):
        """Every guest-physical address whose byte differs between two snapshots."""
        diffs = []
        for r, b, a in zip(self.mem.regions, before, after):
            diffs += [r.gpa + int(i) for i in np.flatnonzero(np.frombuffer(b, np.uint8) != np.frombuffer(a, np.uint8))]
        return diffs

    def changed(self, before, after):
        diffs = []
        for r, b, a in zip(self.mem.regions, before, after):
            idx = np.flatnonzero(np.frombuffer(b, np.uint8) != np.frombuffer(a, np.uint8))
            diffs += [r.gpa + int(i) for i in idx]
        return sorted(set(diffs) - self.allowed_changes())


@pytest.fixture
def rig():
    r = Rig()
    yield r
    r.close()


@pytest.fixture
def rig_no_indirect():
    r = Rig(features=spec.DEVICE_FEATURES & ~spec.bit(spec.VIRTIO_RING_F_INDIRECT_DESC)
            & ~spec.bit(spec.VIRTIO_F_RING_PACKED))   # the split ring these tests write by hand
    yield r
    r.close()


def _table_gpa(k=0):
    return CANARY + 0x8000 + 0x1000 * k


# Each case: queue, descriptors [(index, addr, len, flags, next)], extra raw writes [(gpa, bytes)],
# head, avail idx delta, expected exception.
def cases():
    n = QSIZE
    hdr = (0, CANARY + 0x100, 12, F_NEXT, 1)
    return {
        "desc_outside_guest_memory": (TX, [(0, 1 << 40, 100, 0, 0)], [], 0, 1, errors.DescriptorOutOfBounds),
        "desc_past_the_last_region": (TX, [(0, CANARY + MB - 10, 100, 0, 0)], [], 0, 1, errors.DescriptorOutOfBounds),
        "desc_across_a_hole": (TX, [(0, LOW_END - 50, 100, 0, 0)], [], 0, 1, errors.DescriptorOutOfBounds),
        "desc_len_wraps_the_address_space": (TX, [(0, 2**64 - 16, 64, 0, 0)], [], 0, 1,
                                             errors.DescriptorOutOfBounds),
        "rx_buffer_outside_guest_memory": (RX, [(0, 1 << 40, 2048, F_WRITE, 0)], [], 0, 1,
                                           errors.DescriptorOutOfBounds),
        "rx_buffer_across_a_hole": (RX, [(0, LOW_END - 100, 2048, F_WRITE, 0)], [], 0, 1,
                                    errors.DescriptorOutOfBounds),
        "chain_loops": (TX, [hdr, (1, CANARY + 0x200, 64, F_NEXT, 2), (2, CANARY + 0x300, 64, F_NEXT, 1)], [],
                        0, 1, errors.ChainLoop),
        "chain_longer_than_the_queue": (TX, [(i, CANARY + 0x40 * i, 16, F_NEXT, i + 1 if i + 1 < n else n // 2)
                                             for i in range(n)], [], 0, 1, errors.ChainLoop),
        "rx_chain_loops": (RX, [(0, CANARY + 0x100, 512, F_WRITE | F_NEXT, 0)], [], 0, 1, errors.ChainLoop),
        "nested_indirect": (TX, [(0, _table_gpa(0), 32, F_INDIRECT, 0)],
                            [(_table_gpa(0), pack_desc(CANARY + 0x100, 12, F_NEXT, 1)
                              + pack_desc(_table_gpa(1), 16, F_INDIRECT, 0)),
                             (_table_gpa(1), pack_desc(CANARY + 0x200, 64))], 0, 1, errors.NestedIndirect),
        "indirect_len_not_multiple_of_16": (TX, [(0, _table_gpa(0), 24, F_INDIRECT, 0)],
                                            [(_table_gpa(0), pack_desc(CANARY + 0x100, 64) * 2)], 0, 1,
                                            errors.IndirectLength),
        "indirect_len_zero": (TX, [(0, _table_gpa(0), 0, F_INDIRECT, 0)], [], 0, 1, errors.IndirectLength),
        "indirect_table_too_long_for_one_writev": (
            TX, [(0, _table_gpa(0), 16 * 1025, F_INDIRECT, 0)],
            [(_table_gpa(0), b"".join(pack_desc(CANARY + 0x100 + k, 1, F_NEXT if k < 1024 else 0, k + 1)
                                      for k in range(1025)))], 0, 1, errors.ChainTooLong),
        "writable_desc_in_tx": (TX, [hdr, (1, CANARY + 0x200, 1000, F_WRITE, 0)], [], 0, 1, errors.WritableInTx),
        "readable_desc_in_rx": (RX, [(0, CANARY + 0x100, 2048, 0, 0)], [], 0, 1, errors.ReadableInRx),
        "avail_idx_jumps_past_queue_size": (TX, [(0, CANARY + 0x100, 100, 0, 0)], [], 0, n + 1,
                                            errors.AvailIndexJump),
        "rx_avail_idx_jumps_past_queue_size": (RX, [], [], None, n + 5, errors.AvailIndexJump),
        "head_index_beyond_queue": (TX, [], [], n, 1, errors.HeadOutOfRange),
        "rx_head_index_beyond_queue": (RX, [], [], 0xFFFF, 1, errors.HeadOutOfRange),
        "next_beyond_queue": (TX, [(0, CANARY + 0x100, 12, F_NEXT, n)], [], 0, 1, errors.NextOutOfRange),
        "next_beyond_indirect_table": (TX, [(0, _table_gpa(0), 32, F_INDIRECT, 0)],
                                       [(_table_gpa(0), pack_desc(CANARY + 0x100, 12, F_NEXT, 2)
                                         + pack_desc(CANARY + 0x200, 64))], 0, 1, errors.NextOutOfRange),
        "readable_after_writable_in_rx": (RX, [(0, CANARY + 0x100, 1000, F_WRITE | F_NEXT, 1),
                                               (1, CANARY + 0x600, 1000, 0, 0)], [], 0, 1,
                                          errors.ReadableAfterWritable),
        "readable_after_writable_in_tx": (TX, [hdr, (1, CANARY + 0x200, 10, F_WRITE | F_NEXT, 2),
                                               (2, CANARY + 0x300, 10, 0, 0)], [], 0, 1,
                                          errors.ReadableAfterWritable),
    }


def _other_queue_still_works(rig, q):
    if q == TX:
        rig.link.inject(FRAME)
        assert rig.guest.receive(timeout=2.0) == FRAME
    else:
        rig.guest.send(SENT_FRAME)
        got = rig.link.sent(timeout=2.0)
        assert got is not None and got[12:] == SENT_FRAME


def _expect_fault(rig, q, exc_cls, before):
    used_before = rig.used_idx(q)
    fault = rig.dev.wait_fault(2.0)
    after = rig.snapshot()
    assert type(fault) is exc_cls, f"got {fault!r}"
    assert fault.queue == q
    assert rig.dev.status & spec.DEVICE_NEEDS_RESET
    assert rig.dev.stats()["faults"] == {_fault_name(exc_cls.code): 1}
    with pytest.raises(exc_cls):
        rig.dev.check()
    # No stray writes: not the canary, not the buffers the bad chain named, not the used ring.
    assert rig.changed(before, after) == []
    assert rig.used_idx(q) == used_before
    assert rig.dev.threads(), "datapath thread died"
    # A stopped queue must not spin the thread (a still-readable tap or kick fd on a dead queue).
    s0 = rig.dev.stats()["syscalls"]
    time.sleep(0.1)
    assert rig.dev.stats()["syscalls"] - s0 < 5


def _fault_name(code):
    return FAULT_NAMES[code]


@pytest.mark.parametrize("case", sorted(cases()))
def test_hostile_ring_raises_its_fault_and_spares_the_other_queue(rig, case):
    q, descs, raw, head, delta, exc_cls = cases()[case]
    if q == RX:
        # Let the datapath settle (it peeks at the RX ring once at start) before we tamper.
        time.sleep(0.05)
    rig.write_descs(q, descs)
    for gpa, data in raw:
        rig.mem.write(gpa, data)
    if head is None:
        head = struct.unpack("<H", rig.mem.read(rig.ring(q)[2] + 4 + 2 * (rig.device_pos(q) % QSIZE), 2))[0]
    rig.offer(q, head, delta)
    before = rig.snapshot()      # the tampering itself is the guest's own business; compare from here
    rig.kick(q)
    _expect_fault(rig, q, exc_cls, before)
    _other_queue_still_works(rig, q)
    # The broken queue stays stopped: more kicks change nothing and raise no second fault.
    rig.kick(q)
    time.sleep(0.05)
    assert rig.dev.stats()["faults"] == {_fault_name(exc_cls.code): 1}


def test_indirect_without_the_feature_negotiated_is_a_fault(rig_no_indirect):
    rig = rig_no_indirect
    assert not rig.guest.indirect
    rig.mem.write(_table_gpa(0), pack_desc(CANARY + 0x100, 12, F_NEXT, 1) + pack_desc(CANARY + 0x200, 64))
    rig.write_descs(TX, [(0, _table_gpa(0), 32, F_INDIRECT, 0)])
    rig.offer(TX, 0)
    before = rig.snapshot()
    rig.kick(TX)
    _expect_fault(rig, TX, errors.IndirectNotNegotiated, before)
    _other_queue_still_works(rig, TX)


def test_rx_fault_with_a_frame_waiting_writes_nothing_into_guest_memory(rig):
    # The frame is already in the tap queue when the bad chain is offered: the device must fault on
    # the chain before reading the frame into it.
    time.sleep(0.05)
    rig.write_descs(RX, [(0, CANARY + 0x100, 1000, F_WRITE | F_NEXT, 1), (1, LOW_END - 8, 1000, F_WRITE, 0)])
    rig.offer(RX, 0)
    before = rig.snapshot()
    rig.link.inject(FRAME)
    _expect_fault(rig, RX, errors.DescriptorOutOfBounds, before)
    _other_queue_still_works(rig, RX)


def test_status_shows_needs_reset_once_the_fault_is_counted(rig):
    rig.write_descs(TX, [(0, 1 << 40, 100, 0, 0)])
    rig.offer(TX, 0)
    rig.kick(TX)
    assert wait_for(lambda: rig.dev.stats()["faults"] == {"desc_addr": 1})
    # A VMM reflects this in the status register the guest reads; it must not depend on a poll.
    assert rig.dev.stats()["status"] & spec.DEVICE_NEEDS_RESET
    assert rig.dev.status & spec.DEVICE_NEEDS_RESET


def _add_raw_tx(g, seg_lens):
    """Queue TX chains of one readable segment each, through the driver (so the front end reclaims
    them cleanly), with lengths GuestDriver.send would never produce."""
    segs = ffi.new("struct vnb_seg[1]")
    for ln in seg_lens:
        segs[0].gpa, segs[0].len, segs[0].write = g.tx_buf_gpa, ln, 0
        assert lib.vnb_drv_add(ffi.addressof(g.raw.txq), segs, 1, ffi.NULL, 0, 0) >= 0
        g.raw.tx_pending += 1   # keep the front end's in-flight count honest: it reclaims this chain
    lib.vnb_drv_publish(ffi.addressof(g.raw.txq))


@pytest.mark.parametrize("what,lens", [("tx_short", (0, 5, 11)), ("tx_oversize", (65535 + 12 + 1, 65600))])
def test_bad_tx_frame_length_is_a_counted_drop_not_a_fault(rig, what, lens):
    g = rig.guest
    _add_raw_tx(g, lens)
    rig.kick(TX)
    assert wait_for(lambda: rig.dev.stats()["drops"][what] == len(lens))
    s = rig.dev.stats()
    assert sum(s["drops"].values()) == len(lens)
    assert s["faults"] == {} and not rig.dev.status & spec.DEVICE_NEEDS_RESET
    assert rig.dev.wait_fault(0.05) is None
    assert rig.link.sent(timeout=0.1) is None          # nothing reached the tap
    g.drain_tx(2.0)                                    # the dropped chains came back as used
    assert g.stats()["bad_used"] == 0
    g.send(SENT_FRAME)
    got = rig.link.sent(timeout=2.0)
    assert got is not None and got[12:] == SENT_FRAME
    # The device counts a frame after its writev returns: the peer may see it first.
    assert wait_for(lambda: rig.dev.stats()["tx_frames"] == 1)


def test_largest_legal_tx_frame_is_not_oversize(rig):
    _add_raw_tx(rig.guest, (65535 + 12,))
    rig.kick(TX)
    got = rig.link.sent(timeout=2.0)
    assert got is not None and len(got) == 65535 + 12
    assert rig.dev.stats()["drops"]["tx_oversize"] == 0


