"""The userspace datapath end to end, with a SOCK_SEQPACKET socketpair standing in for the tap (no root):
frames come out byte-exact with the right virtio-net header in every TX layout, RX fills mergeable and
multi-descriptor buffers correctly, drops are counted, and floods lose nothing and keep order."""
from __future__ import annotations

import os
import random
import socket
import struct
import threading
import time

import pytest

from vnetbe import spec
from vnetbe.errors import ConfigError, VnetError
from vnetbe.device import VirtioNet
from vnetbe.memory import GuestMemory
from vnetbe.queue import QueueConfig
from vnbtest.fakelink import PairLink
from vnetbe.cputime import voluntary_switches

from vnbtest import device
from vnbtest.device import DeviceRig
from vnbtest.rings import Ring
from vnbtest.wait import wait_for

SIZES = [1, 2, 3, 4, 5, 7, 13, 14, 59, 60, 61, 64, 127, 128, 255, 1500, 1514, 1515, 4096, 9000, 9014,
         16384, 32768, 65000, 65535]
ALL = spec.DEVICE_FEATURES & ~spec.bit(spec.VIRTIO_F_RING_PACKED)   # the ring format is make_rig's parameter
NO_EVENT_IDX = ALL & ~spec.bit(spec.VIRTIO_RING_F_EVENT_IDX)
NO_MRG = ALL & ~spec.bit(spec.VIRTIO_NET_F_MRG_RXBUF)
LEGACY_HDR = ALL & ~spec.bit(spec.VIRTIO_NET_F_MRG_RXBUF) & ~spec.bit(spec.VIRTIO_F_VERSION_1)
SEQ_OFF = 14   # frame offset of the 32-bit sequence number used to check order


def hdr_bytes(flags=0, gso_type=0, hdr_len=0, gso_size=0, csum_start=0, csum_offset=0, num_buffers=0, n=12):
    return struct.pack("<BBHHHHH", flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers)[:n]


def rand_frame(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def tcp4_frame(payload: int) -> bytes:
    eth = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00"
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 20 + payload, 1, 0, 64, 6, 0, b"\x0a\0\0\1", b"\x0a\0\0\2")
    tcp = struct.pack("!HHIIBBHHH", 1234, 80, 1, 0, 5 << 4, 0x18, 65535, 0, 0)
    return eth + ip + tcp + rand_frame(payload, payload)


class Rig(DeviceRig):
    def __init__(self, mem_size=64 << 20, sndbuf=4 << 20, busyloop_us=0, **guest_kw):
        super().__init__(GuestMemory(mem_size), sndbuf, busyloop_us, **guest_kw)

    def stats(self):
        return self.dev.stats()


@pytest.fixture(params=["split", "packed"])
def make_rig(request):
    """Rigs on the userspace datapath under test, with split or packed rings (every scenario runs on both)."""
    rigs = []

    def make(**kw):
        r = Rig(packed=request.param == "packed", **kw)
        rigs.append(r)
        return r
    yield make
    for r in rigs:
        r.close()


# ---------------------------------------------------------------- TX

@pytest.mark.parametrize("layout", ["single", "split_hdr", "scatter", "indirect"])
def test_tx_frames_of_every_size_leave_byte_exact_in_every_layout(make_rig, layout):
    rig = make_rig(queue_size=64, tx_layout=layout)
    for n in SIZES:
        frame = rand_frame(n, n)
        rig.guest.send(frame)
        got = rig.link.sent(timeout=2.0)
        assert got is not None, f"{n}-byte frame never reached the tap"
        assert got[:12] == hdr_bytes(), n
        assert got[12:] == frame, n
    rig.guest.drain_tx(2.0)   # the device counts a frame after its writev: settle before reading stats
    s = rig.stats()
    assert s["tx_frames"] == len(SIZES) and s["tx_bytes"] == sum(SIZES)
    assert s["faults"] == {} and not any(s["drops"].values())
    assert rig.link.sent(timeout=0.05) is None


@pytest.mark.parametrize("layout", ["single", "scatter", "indirect"])
def test_tx_header_fields_reach_the_tap_unchanged(make_rig, layout):
    rig = make_rig(queue_size=16, tx_layout=layout)
    frame = tcp4_frame(1000)
    rig.guest.send(frame, csum=(34, 16))
    got = rig.link.sent(timeout=2.0)
    assert got[:12] == hdr_bytes(flags=1, csum_start=34, csum_offset=16) and got[12:] == frame
    big = tcp4_frame(9000)
    rig.guest.send(big, gso=("tcpv4", 1448))
    got = rig.link.sent(timeout=2.0)
    assert got[:12] == hdr_bytes(flags=1, gso_type=spec.VIRTIO_NET_HDR_GSO_TCPV4, hdr_len=54, gso_size=1448,
                                 csum_start=34, csum_offset=16)
    assert got[12:] == big


def test_tx_with_the_legacy_10_byte_header(make_rig):
    rig = make_rig(queue_size=16, features=LEGACY_HDR, rx_buf_size=2048)
    assert rig.dev.hdr_len == 10 and rig.link.vnet_hdr_len == 10
    for layout in ("single", "split_hdr", "scatter", "indirect"):
        frame = rand_frame(777, 5)
        rig.guest.send(frame, layout=layout)
        got = rig.link.sent(timeout=2.0)
        assert got == hdr_bytes(n=10) + frame
    rig.link.inject(b"x" * 100)
    assert rig.guest.receive(timeout=2.0) == b"x" * 100


# ---------------------------------------------------------------- RX

def _rx_roundtrip(rig, sizes, buf_size):
    for n in sizes:
        frame = rand_frame(n, n + 1)
        rig.link.inject(frame)
        r = rig.guest.receive_with_header(timeout=2.0)
        assert r is not None, f"{n}-byte frame not received"
        hdr, got = r
        assert got == frame, n
        if rig.guest.mrg_rxbuf:
            assert hdr["num_buffers"] == -(-(n + 12) // buf_size), n


def test_rx_mergeable_buffers_smaller_than_the_frame_are_filled_in_order(make_rig):
    rig = make_rig(queue_size=256, rx_buf_size=256)
    sizes = [1, 60, 243, 244, 245, 256, 500, 511, 512, 1514, 4000, 9014, 60000, 65535 - 12]
    _rx_roundtrip(rig, sizes, 256)
    s = rig.stats()
    assert s["rx_frames"] == len(sizes) and s["rx_bytes"] == sum(sizes)
    assert s["rx_merged"] == sum(1 for n in sizes if n + 12 > 256)
    assert not any(s["drops"].values()) and s["faults"] == {}
    assert rig.guest.stats()["bad_used"] == 0


def test_rx_header_from_the_tap_is_passed_on_with_num_buffers_set_by_the_device(make_rig):
    rig = make_rig(queue_size=64, rx_buf_size=256)
    rig.link.inject(b"y" * 700, hdr=hdr_bytes(flags=spec.VIRTIO_NET_HDR_F_DATA_VALID, num_buffers=0x7777))
    hdr, got = rig.guest.receive_with_header(timeout=2.0)
    assert got == b"y" * 700
    assert hdr["flags"] == spec.VIRTIO_NET_HDR_F_DATA_VALID and hdr["num_buffers"] == 3


def test_rx_header_larger_than_one_buffer_spans_the_first_buffers(make_rig):
    # Buffers smaller than the header break §5.1.6.3.1 (a driver MUST), but the device copes as vhost
    # does: header and num_buffers land across the first buffers. GuestDriver's receive path does not
    # accept such buffers, so read the used ring and the buffers straight from guest memory.
    rig = make_rig(queue_size=256, rx_buf_size=8)
    g, mem = rig.guest, rig.mem
    num, desc, _, used = g.rings[0]
    frame = rand_frame(300, 1)
    rig.link.inject(frame)
    nbuf = -(-312 // 8)
    if g.packed:   # used descriptors in the ring itself, one slot a buffer here; USED set in the last one
        assert wait_for(lambda: struct.unpack("<H", mem.read(desc + 16 * (nbuf - 1) + 14, 2))[0] & 0x8000)
        elems = [struct.unpack("<QIHH", mem.read(desc + 16 * i, 16))[2:0:-1] for i in range(nbuf)]
    else:
        assert wait_for(lambda: struct.unpack("<H", mem.read(used + 2, 2))[0] == nbuf)
        elems = [struct.unpack("<II", mem.read(used + 4 + 8 * i, 8)) for i in range(nbuf)]
    data = b""
    for head, ln in elems:
        data += mem.read(g.rx_buf_gpa + 8 * head, ln)   # rx_segs=1: buffer slot = head (packed: the id)
    assert len(data) == 312
    assert data[:10] == bytes(10)
    assert struct.unpack_from("<H", data, 10)[0] == nbuf
    assert data[12:] == frame


@pytest.mark.parametrize("mrg", [True, False])
def test_rx_into_buffers_of_three_descriptors(make_rig, mrg):
    if mrg:
        rig = make_rig(queue_size=128, rx_buf_size=2048, rx_segs=3)
        sizes = [1, 60, 682, 683, 1514, 2036, 2037, 9014, 60000]
    else:
        rig = make_rig(queue_size=64, rx_buf_size=65535 + 12, rx_segs=3, features=NO_MRG)
        sizes = [1, 60, 1514, 9014, 21845, 21846, 60000, 65535]
    _rx_roundtrip(rig, sizes, 2048)
    assert rig.stats()["rx_frames"] == len(sizes)


def test_rx_without_mergeable_buffers_drops_a_frame_too_big_for_one_buffer(make_rig):
    rig = make_rig(queue_size=16, rx_buf_size=2048, features=NO_MRG)
    rig.link.inject(rand_frame(3000, 3))
    assert wait_for(lambda: rig.stats()["drops"]["rx_no_buffer"] == 1)
    small = rand_frame(1000, 4)
    rig.link.inject(small)
    assert rig.guest.receive(timeout=2.0) == small
    s = rig.stats()
    assert s["rx_frames"] == 1 and s["drops"]["rx_no_buffer"] == 1 and s["faults"] == {}


def test_rx_frame_needing_more_buffers_than_the_ring_has_is_dropped_not_stuck(make_rig):
    # 60000 bytes in 256-byte buffers needs 235 buffers; a 64-entry ring can never offer them.
    rig = make_rig(queue_size=64, rx_buf_size=256)
    rig.link.inject(rand_frame(60000, 9))
    assert wait_for(lambda: rig.stats()["drops"]["rx_no_buffer"] == 1)
    after = rand_frame(5000, 10)
    rig.link.inject(after)
    hdr, got = rig.guest.receive_with_header(timeout=2.0)
    assert got == after and hdr["num_buffers"] == 20


def test_rx_waits_for_buffers_instead_of_dropping_when_the_guest_is_slow(make_rig):
    rig = make_rig(queue_size=16, rx_buf_size=2048)
    frames = [rand_frame(100 + k, k) for k in range(40)]   # more frames than buffers
    for f in frames:
        rig.link.inject(f)
        time.sleep(0.001)
    got = [rig.guest.receive(timeout=2.0) for _ in frames]
    assert got == frames
    assert rig.stats()["rx_stalls"] > 0 and not any(rig.stats()["drops"].values())


def test_tap_frame_shorter_than_the_vnet_header_is_dropped_not_delivered(make_rig):
    rig = make_rig(queue_size=16, rx_buf_size=2048)
    for junk in (b"", b"abc", bytes(11)):
        rig.link.peer.send(junk)
    assert wait_for(lambda: rig.stats()["drops"]["rx_truncated"] == 3)
    good = rand_frame(200, 2)
    rig.link.inject(good)
    assert rig.guest.receive(timeout=2.0) == good
    assert rig.guest.receive(timeout=0.05) is None
    assert rig.stats()["rx_frames"] == 1 and rig.stats()["faults"] == {}


def test_rx_frame_larger_than_every_buffer_the_guest_can_post_is_dropped_not_stuck(make_rig):
    # 256 descriptors in chains of 3: at most 85 chains (255 descriptors, 21760 bytes) are ever
    # outstanding, and one descriptor stays free but useless. A 30000-byte frame can never fit.
    rig = make_rig(queue_size=256, rx_buf_size=256, rx_segs=3)
    rig.link.inject(rand_frame(30000, 11))
    assert wait_for(lambda: rig.stats()["drops"]["rx_no_buffer"] == 1, timeout=1.0)
    after = rand_frame(100, 12)
    rig.link.inject(after)
    assert rig.guest.receive(timeout=1.0) == after


def test_guest_refuses_layouts_and_buffers_its_ring_can_never_hold(make_rig):
    # A scatter chain of 5 descriptors on a 2-entry ring used to wait out the timeout and report
    # "ring full"; now it is refused at once.
    rig = make_rig(queue_size=2, tx_layout="scatter", rx_buf_size=2048)
    t0 = time.monotonic()
    with pytest.raises(VnetError, match="Invalid argument"):
        rig.guest.send(b"x" * 100, timeout=5.0)
    assert time.monotonic() - t0 < 1.0
    rig.guest.send(b"x" * 100, layout="split_hdr")     # 2 descriptors: fits
    assert rig.link.sent(timeout=2.0)[12:] == b"x" * 100
    with pytest.raises(ConfigError):
        make_rig(queue_size=4, rx_segs=8, rx_buf_size=2048)


def test_device_without_an_rx_queue_does_not_spin_on_a_readable_tap():
    # A VMM may describe TX only; the tap then has nobody to drain it and must not be watched.
    with GuestMemory(4 << 20) as mem, PairLink() as link:
        dev = VirtioNet(mem, link, datapath=device.datapath)
        try:
            dev.set_driver_features(ALL)
            n = 16
            kick, call = os.eventfd(0, os.EFD_NONBLOCK), os.eventfd(0, os.EFD_NONBLOCK)
            dev._on_close.append(lambda: (os.close(kick), os.close(call)))
            dev.set_queue(spec.TX_QUEUE, QueueConfig(n, mem.alloc(16 * n, 16), mem.alloc(6 + 2 * n, 2),
                                                     mem.alloc(6 + 8 * n, 4), kick, call))
            dev.start()
            link.peer.send(bytes(12) + b"x" * 60)
            time.sleep(0.05)
            s0 = dev.stats()
            time.sleep(0.1)
            s1 = dev.stats()
            assert s1["syscalls"] - s0["syscalls"] < 5 and s1["wakeups"] - s0["wakeups"] < 5
        finally:
            dev.close()


class RawRxGuest:
    """A minimal RX driver built from the ring helpers, for chain shapes GuestDriver never makes."""

    def __init__(self, mem, link, num, *, table_entries):
        self.dev = VirtioNet(mem, link, datapath=device.datapath)
        self.dev.set_driver_features(ALL)
        self.kick, self.call = os.eventfd(0, os.EFD_NONBLOCK), os.eventfd(0, os.EFD_NONBLOCK)
        self.dev._on_close.append(lambda: (os.close(self.kick), os.close(self.call)))
        self.ring = Ring(mem, num, event_idx=True, table_slots=num, table_entries=table_entries)
        self.dev.set_queue(spec.RX_QUEUE, QueueConfig(num, self.ring.desc, self.ring.avail, self.ring.used,
                                                      self.kick, self.call))
        self.mem = mem

    def post_indirect(self, seg_len, nsegs):
        r = self.ring
        self.bufs = {}
        for slot in range(r.num):
            base = self.mem.alloc(seg_len * nsegs, 64)
            head = r.add([(base + seg_len * k, seg_len, 1) for k in range(nsegs)], indirect=True,
                         token=slot, slot=slot)
            assert head >= 0
            self.bufs[slot] = base
        r.publish()

    def frames(self):
        """Reassemble what the device returned, using num_buffers from each first buffer."""
        out, r = [], self.ring
        while (u := r.get_used()) is not None:
            ln, tok = u
            data = self.mem.read(self.bufs[tok], ln)
            nbuf = struct.unpack_from("<H", data, 10)[0]
            for _ in range(nbuf - 1):
                ln, tok = r.get_used()
                data += self.mem.read(self.bufs[tok], ln)
            out.append((nbuf, data[12:]))
        return out


@pytest.fixture
def raw_rx():
    made = []

    def make(num, table_entries):
        mem = GuestMemory(8 << 20)
        link = PairLink()
        g = RawRxGuest(mem, link, num, table_entries=table_entries)
        made.append((g, link, mem))
        return g, link
    yield make
    for g, link, mem in made:
        g.dev.close()
        link.close()
        mem.close()


def test_rx_into_indirect_chains_merges_across_them(raw_rx):
    g, link = raw_rx(16, 4)
    g.post_indirect(64, 4)                      # 16 chains of 4 x 64 bytes
    g.dev.start()
    for n in (200, 700):
        frame = rand_frame(n, n)
        link.inject(frame)
        assert wait_for(lambda: g.ring.used_idx != g.ring.drv.last_used_idx)
        time.sleep(0.02)
        assert g.frames() == [(-(-(n + 12) // 256), frame)]
    s = g.dev.stats()
    assert s["rx_frames"] == 2 and not any(s["drops"].values())


def test_rx_chain_listed_many_times_in_the_avail_ring_cannot_stall_rx(raw_rx):
    # A hostile guest lists one 3-descriptor chain in all 16 avail slots: the device then holds "48"
    # ring descriptors of a 16-entry ring. A frame larger than all of it must be dropped, not waited on.
    g, link = raw_rx(16, 4)
    r = g.ring
    base = g.mem.alloc(3 * 64, 64)
    for i in range(3):
        r.write_desc(i, base + 64 * i, 64, spec.VRING_DESC_F_WRITE | (spec.VRING_DESC_F_NEXT if i < 2 else 0), i + 1)
    for k in range(16):
        r.mem.write(r.avail + 4 + 2 * k, struct.pack("<H", 0))
    r.avail_idx = 16
    g.dev.start()
    link.inject(rand_frame(9000, 5))                       # 16 x 192 bytes can never hold it
    assert wait_for(lambda: g.dev.stats()["drops"]["rx_no_buffer"] == 1, timeout=1.0), g.dev.stats()
    link.inject(rand_frame(100, 6))                        # the chains were handed back: this one fits
    assert wait_for(lambda: r.used_idx == 1, timeout=1.0)
    assert g.dev.stats()["faults"] == {}


def test_rx_frame_spanning_many_indirect_chains_is_not_dropped(raw_rx):
    g, link = raw_rx(16, 4)
    g.post_indirect(64, 4)                      # 16 ring slots, 4096 bytes in all
    g.dev.start()
    frame = rand_frame(1500, 1)                 # 6 chains: 6 ring slots, 30 "descriptors" counted
    link.inject(frame)
    assert wait_for(lambda: g.ring.used_idx != 0, timeout=1.0), g.dev.stats()["drops"]
    time.sleep(0.02)
    assert g.frames() == [(6, frame)]


# ---------------------------------------------------------------- floods

N_FLOOD = 20000


def _seq_frame(size=64):
    return bytearray(rand_frame(size, 77))


def _read_peer(link, count, out, idle=3.0, keep=lambda m: struct.unpack_from("!I", m, 12 + SEQ_OFF)[0]):
    """Drain the peer end concurrently (a socketpair queues only max_dgram_qlen messages), keeping
    ``keep(message)``: by default the sequence number."""
    link.peer.settimeout(idle)
    try:
        while len(out) < count:
            out.append(keep(link.peer.recv(1 << 17)))
    except (socket.timeout, OSError):
        pass


@pytest.mark.parametrize("features", [ALL, NO_EVENT_IDX], ids=["event_idx", "no_event_idx"])
def test_tx_flood_loses_nothing_and_keeps_order(make_rig, features):
    rig = make_rig(queue_size=256, features=features)
    seen: list[int] = []
    t = threading.Thread(target=_read_peer, args=(rig.link, N_FLOOD, seen))
    t.start()
    try:
        sent = rig.guest.flood(bytes(_seq_frame()), N_FLOOD, seq_offset=SEQ_OFF, batch=32, timeout=5.0)
        rig.guest.drain_tx(5.0)
    finally:
        t.join(10)
    assert sent == N_FLOOD
    assert len(seen) == N_FLOOD and seen == list(range(N_FLOOD))
    s, g = rig.stats(), rig.guest.stats()
    assert s["tx_frames"] == N_FLOOD == g["tx_frames"] and s["tx_bytes"] == 64 * N_FLOOD
    assert s["tap_writes"] >= N_FLOOD
    assert not any(s["drops"].values()) and s["faults"] == {}
    assert 0 < s["tx_kicks"] <= g["tx_kicks"]
    if features & spec.bit(spec.VIRTIO_RING_F_EVENT_IDX):
        # The target: at most one kick and one interrupt per 32 frames of a saturating flood.
        assert g["tx_kicks"] <= N_FLOOD // 32, g
        assert s["tx_interrupts"] <= N_FLOOD // 32, s


@pytest.mark.parametrize("layout", ["single", "split_hdr", "scatter", "indirect"])
@pytest.mark.parametrize("kind", ["numbered", "tso"])
def test_flood_frames_stay_byte_exact_when_ring_slots_are_reused(make_rig, layout, kind):
    # The guest's flood writes a slot's buffer in full only the first time and then just the
    # sequence number: every later frame must still leave with every byte and its header right.
    rig = make_rig(queue_size=16)
    count = 200
    if kind == "tso":   # numbered inside the TCP payload, so the staged rewrite is checked here too
        frame, seq_off, kw = tcp4_frame(6000), 60, dict(gso=("tcpv4", 1448))
        hdr = hdr_bytes(flags=1, gso_type=1, hdr_len=54, gso_size=1448, csum_start=34, csum_offset=16)
    else:
        frame, seq_off, kw, hdr = rand_frame(300, 7), SEQ_OFF, {}, hdr_bytes()
    got: list[bytes] = []
    t = threading.Thread(target=_read_peer, args=(rig.link, count, got), kwargs=dict(keep=bytes))
    t.start()
    try:
        assert rig.guest.flood(frame, count, seq_offset=seq_off, layout=layout, batch=8, **kw) == count
        rig.guest.drain_tx(5.0)
    finally:
        t.join(10)
    assert len(got) == count
    for k, m in enumerate(got):
        want = bytearray(frame)
        if seq_off:
            struct.pack_into("!I", want, seq_off, k)
        assert m == hdr + want, k


def test_a_full_tap_is_waited_on_not_polled_and_resumes_in_order(make_rig):
    # Nobody reads the tap's other end, so its queue fills and writev says EAGAIN. The datapath must
    # then sleep until the tap is writable (EPOLLOUT), not retry on a timer, and lose nothing.
    rig = make_rig(queue_size=256, sndbuf=64 << 10)
    count = 3000
    seen: list[int] = []
    sender = threading.Thread(target=rig.guest.flood, args=(bytes(_seq_frame()), count),
                              kwargs=dict(seq_offset=SEQ_OFF, batch=32, timeout=10.0))
    sender.start()
    try:
        assert wait_for(lambda: rig.stats()["tx_tap_full"] > 0, timeout=5.0), rig.stats()
        before = rig.stats()["syscalls"]
        time.sleep(0.3)
        # A 1 ms retry timer would make ~300 epoll_wait + writev pairs here; waiting makes none.
        assert rig.stats()["syscalls"] - before <= 4, rig.stats()
        _read_peer(rig.link, count, seen, idle=3.0)
    finally:
        sender.join(15)
    assert seen == list(range(count))
    rig.guest.drain_tx(2.0)
    s = rig.stats()
    assert s["tx_frames"] == count and not any(s["drops"].values())


def _datapath_sleeps(rig) -> int:
    return voluntary_switches(rig.dev.threads()[0])


@pytest.mark.parametrize("features", [ALL, NO_EVENT_IDX], ids=["event_idx", "no_event_idx"])
@pytest.mark.parametrize("busyloop_us", [0, 400_000], ids=["polling_off_control", "polling_on"])
def test_busy_polling_takes_frames_without_sleeps_or_kicks_and_rearms_kicks_when_idle(make_rig, busyloop_us,
                                                                                       features):
    # Frames 5 ms apart: without busy polling every one kicks and wakes the sleeping datapath. With a
    # window longer than the gaps it never sleeps, and it keeps the guest's kicks off while it polls (as
    # vhost_net_busy_poll); once idle past the window it turns them back on and sleeps.
    rig = make_rig(queue_size=64, busyloop_us=busyloop_us, features=features)
    rig.guest.send(rand_frame(60, 0))
    assert rig.link.sent(timeout=2.0) is not None
    s0, k0 = _datapath_sleeps(rig), rig.guest.stats()["tx_kicks"]
    for k in range(1, 21):
        time.sleep(0.005)
        rig.guest.send(rand_frame(60, k))
        assert rig.link.sent(timeout=2.0)[12:] == rand_frame(60, k)
    slept, kicks = _datapath_sleeps(rig) - s0, rig.guest.stats()["tx_kicks"] - k0
    if busyloop_us:
        assert slept <= 2 and kicks == 0 and rig.stats()["busy_polls"] > 0, (slept, kicks)
        time.sleep(busyloop_us / 1e6 + 0.1)
        polls = rig.stats()["busy_polls"]
        time.sleep(0.1)
        assert rig.stats()["busy_polls"] == polls        # asleep now, not spinning
        k1 = rig.guest.stats()["tx_kicks"]
        rig.guest.send(rand_frame(60, 99))               # so the guest must kick, and the kick must wake it
        assert rig.link.sent(timeout=2.0)[12:] == rand_frame(60, 99)
        assert rig.guest.stats()["tx_kicks"] == k1 + 1
    else:
        assert slept >= 15 and kicks >= 15 and rig.stats()["busy_polls"] == 0, (slept, kicks)


@pytest.mark.parametrize("features", [ALL, NO_EVENT_IDX], ids=["event_idx", "no_event_idx"])
@pytest.mark.parametrize("busyloop_us", [0, 400_000], ids=["polling_off_control", "polling_on"])
def test_busy_polling_finds_new_rx_buffers_without_a_kick(make_rig, busyloop_us, features):
    # The guest runs out of RX buffers. A sleeping datapath needs a kick to learn of new ones; a polling
    # one keeps kicks off and looks for them itself. Either way every frame arrives, in order.
    rig = make_rig(queue_size=16, busyloop_us=busyloop_us, features=features)
    errs: list[Exception] = []
    count = 200
    t = threading.Thread(target=_inject_flood, args=(rig.link, count, _seq_frame(), 12, errs))
    t.start()
    try:
        assert wait_for(lambda: rig.stats()["rx_stalls"] > 0)
        k0 = rig.guest.stats()["rx_kicks"]
        n, out_of_order, _ = rig.guest.receive_count(count, timeout=5.0, seq_offset=SEQ_OFF)
    finally:
        t.join(10)
    assert not errs and (n, out_of_order) == (count, 0)
    kicks = rig.guest.stats()["rx_kicks"] - k0
    assert kicks == 0 if busyloop_us else kicks > 0, kicks


def _inject_flood(link, count, frame: bytearray, hdr_len, errors):
    hdr = bytes(hdr_len)
    try:
        for k in range(count):
            struct.pack_into("!I", frame, SEQ_OFF, k)
            msg = hdr + frame
            while True:
                try:
                    link.peer.send(msg, socket.MSG_DONTWAIT)
                    break
                except BlockingIOError:
                    time.sleep(0.0001)
    except Exception as e:  # noqa: BLE001 - surfaced by the test
        errors.append(e)


@pytest.mark.parametrize("features", [ALL, NO_EVENT_IDX], ids=["event_idx", "no_event_idx"])
def test_rx_flood_loses_nothing_and_keeps_order(make_rig, features):
    rig = make_rig(queue_size=256, features=features)
    errs: list[Exception] = []
    t = threading.Thread(target=_inject_flood, args=(rig.link, N_FLOOD, _seq_frame(), 12, errs))
    t.start()
    try:
        res = rig.guest.receive_count(N_FLOOD, timeout=5.0, seq_offset=SEQ_OFF)
        n, out_of_order = res[0], res[1]
    finally:
        t.join(10)
    assert not errs
    assert n == N_FLOOD and out_of_order == 0
    s, g = rig.stats(), rig.guest.stats()
    assert s["rx_frames"] == N_FLOOD == g["rx_frames"] and s["rx_bytes"] == 64 * N_FLOOD
    assert not any(s["drops"].values()) and s["faults"] == {}
    # The device counts an interrupt just after its eventfd write, so the guest may see it first.
    assert wait_for(lambda: rig.guest.stats()["rx_interrupts"] <= rig.stats()["rx_interrupts"])
    s, g = rig.stats(), rig.guest.stats()
    assert s["rx_interrupts"] > 0
    if features & spec.bit(spec.VIRTIO_RING_F_EVENT_IDX):
        # vring_need_event: the device interrupts only when used->idx crosses used_event, and the guest
        # moves used_event (to its last_used_idx) only when it is about to wait, once per rx_waits
        # (used_event starts at 0, which the first push crosses: + 1). However fast either side ran,
        # an interrupt without a wait before it is the device ignoring the guest's used_event.
        assert s["rx_interrupts"] <= g["rx_waits"] + 1, (s, g)


def test_stats_are_consistent_after_mixed_traffic(make_rig):
    rig = make_rig(queue_size=64, rx_buf_size=512)
    layouts = ("single", "split_hdr", "scatter", "indirect")
    for k in range(200):
        out = rand_frame(60 + k, k)
        rig.guest.send(out, layout=layouts[k % 4])
        got = rig.link.sent(timeout=2.0)
        assert got is not None and got[12:] == out
        rig.link.inject(rand_frame(100 + 7 * k, k))
        assert rig.guest.receive(timeout=2.0) == rand_frame(100 + 7 * k, k)
    rig.guest.drain_tx(2.0)
    assert rig.link.sent(timeout=0.05) is None
    s, g = rig.stats(), rig.guest.stats()
    assert s["tx_frames"] == g["tx_frames"] == 200
    assert s["rx_frames"] == g["rx_frames"] == 200
    assert s["tx_bytes"] == g["tx_bytes"] and s["rx_bytes"] == g["rx_bytes"]
    assert s["tap_writes"] == 200 and s["rx_merged"] == sum(1 for k in range(200) if 112 + 7 * k > 512)
    assert s["tx_kicks"] <= g["tx_kicks"] and s["rx_kicks"] <= g["rx_kicks"]
    # The device counts an interrupt just after signalling it: the guest may be one ahead for a moment.
    assert wait_for(lambda: rig.guest.stats()["rx_interrupts"] <= rig.stats()["rx_interrupts"])
    if device.datapath == "user":   # a system call per tap write or read, and per interrupt
        assert s["syscalls"] >= s["tap_writes"] + s["tap_reads"] + s["tx_interrupts"] + s["rx_interrupts"]
    else:                            # uring: an enter carries the reads and writes; interrupts are calls
        assert s["tap_reads"] >= s["rx_frames"] and s["syscalls"] >= s["tx_interrupts"] + s["rx_interrupts"]
    assert s["datapath"] == device.datapath and s["status"] & spec.DRIVER_OK
    assert not any(s["drops"].values()) and s["faults"] == {}


N_WRAP = 70000   # more than 2^16: every ring index (avail, used, event) wraps at least once


@pytest.mark.parametrize("direction", ["tx", "rx"])
def test_ring_indices_wrap_through_the_whole_device_without_loss(make_rig, direction):
    rig = make_rig(queue_size=256)
    if direction == "tx":
        seen: list[int] = []
        t = threading.Thread(target=_read_peer, args=(rig.link, N_WRAP, seen))
        t.start()
        try:
            assert rig.guest.flood(bytes(_seq_frame()), N_WRAP, seq_offset=SEQ_OFF, batch=64, timeout=5.0) == N_WRAP
            rig.guest.drain_tx(5.0)
        finally:
            t.join(10)
        assert seen == list(range(N_WRAP))
        q = spec.TX_QUEUE
    else:
        errs: list[Exception] = []
        t = threading.Thread(target=_inject_flood, args=(rig.link, N_WRAP, _seq_frame(), 12, errs))
        t.start()
        try:
            res = rig.guest.receive_count(N_WRAP, timeout=5.0, seq_offset=SEQ_OFF)
        finally:
            t.join(20)
        assert not errs and res[0] == N_WRAP and res[1] == 0
        q = spec.RX_QUEUE
    num, _, avail, used = rig.guest.rings[q]
    if rig.guest.packed:   # positions wrap each lap of the ring, with a wrap counter (one slot a frame here)
        st = rig.dev.stop()[q]
        expect = N_WRAP % num | (spec.PACKED_WRAP if (N_WRAP // num) % 2 == 0 else 0)
        assert (st.last_avail_idx, st.used_idx) == (expect, expect)
    else:
        used_idx = struct.unpack("<H", rig.mem.read(used + 2, 2))[0]
        assert used_idx == N_WRAP % 65536
    s = rig.stats()
    assert s[f"{direction}_frames"] == N_WRAP and not any(s["drops"].values()) and s["faults"] == {}
