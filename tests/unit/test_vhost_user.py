"""vnetbe's vhost-user server without root: frames cross it byte for byte, every refused message is
named and closes only its connection, and no connection, however it ends, leaves an fd, a thread or a
mapping behind. (The real front ends, DPDK's virtio-user and a Linux guest under QEMU, are in e2e.)"""
from __future__ import annotations

import array
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vnbtest.fakelink import PairLink
from vnbtest.vhost_user import (
    FrontendRig,
    ServerRig,
    closed_by_peer,
    raw_client,
)
from vnbtest.leaks import assert_nothing_left, footprint
from vnbtest.wait import wait_for

from vnetbe import spec
from vnetbe.errors import ProtocolError, VnetError
from vnetbe.memory import GuestMemory
from vnetbe.tools.guest import GuestDriver
from vnetbe.tools.vhost_user_frontend import VhostUserFrontend
from vnetbe.vhost_user import Session
from vnetbe.vhost_user import protocol as P
from vnetbe.vhost_user.protocol import MemRegion, Request

ETH = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00"


def _frame(n: int, seed: int = 0) -> bytes:
    return ETH + bytes((i * 7 + seed) & 0xFF for i in range(n - len(ETH)))


@pytest.fixture
def rig():
    r = ServerRig()
    yield r
    r.close()


def test_frames_cross_the_vhost_user_server_byte_for_byte_both_ways(rig):
    fr = FrontendRig(rig.path)
    try:
        assert rig.server.wait_connected(2)
        for i, n in enumerate((60, 61, 128, 1000, 1514)):
            f = _frame(n, i)
            fr.guest.send(f)
            assert rig.link.sent(2.0)[12:] == f
            rig.link.inject(f)
            assert fr.guest.receive(timeout=2.0) == f
        dev = rig.server.stats()["device"]
        assert (dev["tx_frames"], dev["rx_frames"]) == (5, 5)
    finally:
        fr.close()


def test_ring_position_survives_get_vring_base_and_restart(rig):
    """GET_VRING_BASE stops a ring and returns last_avail_idx without resetting it; the ring started
    again from there goes on where it stopped (the used index is taken from guest memory)."""
    fr = FrontendRig(rig.path)
    try:
        for i in range(3):
            fr.guest.send(_frame(64, i))
            assert rig.link.sent(2.0)[12:] == _frame(64, i)
        fr.guest.drain_tx()
        base = fr.fe.get_vring_base(1)
        assert base == 3
        cfg = fr.fe.queues[1]
        cfg.last_avail_idx = base
        fr.fe.start_ring(1, cfg)
        fr.guest.send(_frame(64, 9))
        assert rig.link.sent(2.0)[12:] == _frame(64, 9)
    finally:
        fr.close()


def test_clearing_driver_ok_stops_every_ring_at_once_until_driver_ok_is_set_again(rig):
    """QEMU's vhost_dev_stop (a VM stopping; a migration's last step): SET_STATUS 0, then GET_VRING_BASE
    ring by ring. The datapath stops once, at SET_STATUS, each ring where it stood (not once per
    ring: each stop waits for the datapath thread, inside the migration's downtime); nothing moves
    until DRIVER_OK comes back after the rings are set up again, and they go on from there."""
    fr = FrontendRig(rig.path, status=True)
    try:
        for i in range(3):
            fr.guest.send(_frame(64, i))
            assert rig.link.sent(2.0)[12:] == _frame(64, i)
            rig.link.inject(_frame(80, i))
            assert fr.guest.receive(timeout=2.0) == _frame(80, i)
        fr.guest.drain_tx()
        dev = rig.server.session.dev
        stops, stop = [], dev.stop
        dev.stop = lambda: (stops.append(1), stop())[1]
        assert fr.fe.stop_device() == {0: 3, 1: 3}
        assert len(stops) == 1 and not dev.running
        rig.link.inject(_frame(90, 7))
        for q, cfg in sorted(fr.fe.queues.items()):      # QEMU's vhost_dev_start: the rings, then DRIVER_OK
            cfg.last_avail_idx = 3
            fr.fe.start_ring(q, cfg)
        assert fr.guest.receive(timeout=0.3) is None and not dev.running
        fr.fe.set_status(spec.ACKNOWLEDGE | spec.DRIVER | spec.FEATURES_OK | spec.DRIVER_OK)
        assert fr.guest.receive(timeout=2.0) == _frame(90, 7)
        fr.guest.send(_frame(64, 9))
        assert rig.link.sent(2.0)[12:] == _frame(64, 9)
        assert rig.server.stats()["device"]["faults"] == {}
    finally:
        fr.close()


def test_packed_rings_cross_the_server_and_their_base_is_position_and_wrap_both_sides(rig):
    """VIRTIO_F_RING_PACKED behind vhost-user: frames both ways over packed rings; GET_VRING_BASE answers
    last_avail | used << 16, each a position with its wrap counter in bit 15 (as QEMU and DPDK read it),
    and a ring restarted there goes on (SET_VRING_BASE takes the low half)."""
    fr = FrontendRig(rig.path, packed=True, queue_size=5)   # any size: packed rings need no power of two
    try:
        assert fr.guest.packed and fr.fe.driver_features & spec.bit(spec.VIRTIO_F_RING_PACKED)
        for i in range(7):   # past one lap of the 5-slot ring: the wrap counter flips
            fr.guest.send(_frame(64, i))
            assert rig.link.sent(2.0)[12:] == _frame(64, i)
            rig.link.inject(_frame(80, i))
            assert fr.guest.receive(timeout=2.0) == _frame(80, i)
        fr.guest.drain_tx()
        base = fr.fe.get_vring_base(1)
        assert base == (2 | (2 << 16)), hex(base)   # position 2, wrap counter 0, both sides
        cfg = fr.fe.queues[1]
        cfg.last_avail_idx = base & 0xFFFF
        fr.fe.start_ring(1, cfg)
        fr.guest.send(_frame(64, 9))
        assert rig.link.sent(2.0)[12:] == _frame(64, 9)
        dev = rig.server.stats()["device"]
        assert (dev["tx_frames"], dev["rx_frames"], dev["faults"]) == (8, 7, {})
    finally:
        fr.close()


def test_a_packed_base_beyond_the_ring_is_refused_by_name(rig):
    fr = FrontendRig(rig.path, packed=True, queue_size=5)
    try:
        fr.fe.get_vring_base(1)
        cfg = fr.fe.queues[1]
        cfg.last_avail_idx = 7 | spec.PACKED_WRAP          # position 7 in a ring of 5
        try:
            fr.fe.start_ring(1, cfg)
        except (OSError, VnetError):
            pass                                            # the server hung up mid-sequence
        assert wait_for(lambda: any("base" in t and "beyond the ring size 5" in t for t in rig.refusals()),
                        timeout=3), rig.events
    finally:
        fr.close()


def test_memory_added_one_slot_at_a_time_serves_and_a_removed_slot_is_unmapped(rig):
    """CONFIGURE_MEM_SLOTS: regions arrive by ADD_MEM_REG (as QEMU sends them when offered); removing
    one the rings do not use keeps the device running, with that region's mapping gone."""
    fr = FrontendRig(rig.path, regions=[(0, 8 << 20), (64 << 20, 1 << 20)], slots=True)
    try:
        assert fr.fe.slots and fr.fe.max_slots == P.MAX_MEM_SLOTS
        fr.guest.send(_frame(64, 1))
        assert rig.link.sent(2.0)[12:] == _frame(64, 1)
        session = rig.server.session
        assert len(session.mem.regions) == 2
        fr.fe.remove_region(64 << 20)
        assert [r.gpa for r in session.mem.regions] == [0]
        fr.guest.send(_frame(64, 2))
        assert rig.link.sent(2.0)[12:] == _frame(64, 2)
        rig.link.inject(_frame(70, 3))
        assert fr.guest.receive(timeout=2.0) == _frame(70, 3)
    finally:
        fr.close()


def test_memory_hot_plug_maps_only_its_region_and_traffic_flows_across_it(rig):
    """ADD/REM_MEM_REG between frames in flight both ways: the region the rings live in is never
    mapped again (same host address throughout), and not one frame is lost or reordered."""
    fr = FrontendRig(rig.path, regions=[(0, 8 << 20), (64 << 20, 1 << 20)], slots=True)
    try:
        session = rig.server.session
        hva0 = session.mem.regions[0].hva
        for i in range(100):
            fr.guest.send(_frame(100, i))           # posted, perhaps not yet taken, when the map changes
            fr.fe.remove_region(64 << 20)
            rig.link.inject(_frame(90, i))          # waits in the tap while the datapath pauses
            fr.fe.add_region(64 << 20)
            assert rig.link.sent(2.0)[12:] == _frame(100, i), i
            assert fr.guest.receive(timeout=2.0) == _frame(90, i), i
        assert session.mem.regions[0].hva == hva0
        assert [r.gpa for r in session.mem.regions] == [0, 64 << 20]
        assert rig.server.stats()["refused_messages"] == 0
        dev = rig.server.stats()["device"]
        assert (dev["tx_frames"], dev["rx_frames"]) == (100, 100)
    finally:
        fr.close()


def test_a_second_front_end_is_refused_while_one_is_connected(rig):
    fr = FrontendRig(rig.path)
    try:
        extra = raw_client(rig.path)
        assert closed_by_peer(extra)
        extra.close()
        fr.guest.send(_frame(64))
        assert rig.link.sent(2.0)[12:] == _frame(64)
        assert rig.server.stats()["refused_connections"] == 1
    finally:
        fr.close()


# --- hostile messages: each one is refused by name and field, only its connection closes ---
def _memfd(size: int = 1 << 20) -> int:
    fd = os.memfd_create("vnb-test", os.MFD_CLOEXEC)
    os.ftruncate(fd, size)
    return fd


def _hdr(req, size, flags=P.VERSION):
    return P.HEADER.pack(int(req), flags, size)


def _owner():
    return P.request(Request.SET_OWNER)


def _table(*regions):
    return P.request(Request.SET_MEM_TABLE, P.mem_table_payload([MemRegion(*r) for r in regions]))


_M = 1 << 20
HOSTILE = [
    # (what, bytes after SET_OWNER (or the whole stream), fds to send with the last message, field named)
    ("wrong version", _hdr(Request.GET_FEATURES, 0, flags=2), 0, "flags"),
    ("reply bit on a request", _hdr(Request.GET_FEATURES, 0, flags=P.VERSION | P.FLAG_REPLY), 0, "flags"),
    ("undefined flag bits", _hdr(Request.GET_FEATURES, 0, flags=P.VERSION | 0x100), 0, "flags"),
    ("size beyond any request", _hdr(Request.SET_MEM_TABLE, 1 << 30), 0, "size"),
    ("size not matching the type", _hdr(Request.SET_FEATURES, 4) + b"\0" * 4, 0, "size"),
    ("unknown request", _hdr(999, 0), 0, "request"),
    ("postcopy refused", P.request(Request.POSTCOPY_ADVISE), 0, "request"),
    ("log base without LOG_SHMFD", _owner() + P.request(Request.SET_LOG_BASE, P.log_payload(4096)), 1, "order"),
    ("log base without its fd", _owner() + P.request(Request.SET_LOG_BASE, P.log_payload(4096)), 0, "fds"),
    ("not offered request", P.request(Request.GET_INFLIGHT_FD, b"\0" * 24), 0, "request"),
    ("before SET_OWNER", P.request(Request.SET_VRING_NUM, P.VRING_STATE.pack(0, 256)), 0, "order"),
    ("fd with a message that takes none", _owner() + P.request(Request.SET_VRING_NUM, P.VRING_STATE.pack(0, 256)),
     1, "fds"),
    ("kick without its fd", _owner() + P.request(Request.SET_VRING_KICK, P.U64.pack(0)), 0, "fds"),
    ("kick payload junk bits", _owner() + P.request(Request.SET_VRING_KICK, P.U64.pack(1 << 20)), 1, "payload"),
    ("ring index out of range", _owner() + P.request(Request.SET_VRING_NUM, P.VRING_STATE.pack(2, 256)), 0, "index"),
    ("ring size not a power of two", _owner() + P.request(Request.SET_VRING_NUM, P.VRING_STATE.pack(0, 100)), 0, "num"),
    ("ring size too big", _owner() + P.request(Request.SET_VRING_NUM, P.VRING_STATE.pack(0, 65536)), 0, "num"),
    ("base beyond 16 bits", _owner() + P.request(Request.SET_VRING_BASE, P.VRING_STATE.pack(0, 1 << 16)), 0, "num"),
    ("enable neither 0 nor 1", _owner() + P.request(Request.SET_VRING_ENABLE, P.VRING_STATE.pack(0, 2)), 0, "num"),
    ("enable without protocol features", _owner() + P.request(Request.SET_VRING_ENABLE, P.VRING_STATE.pack(0, 1)),
     0, "order"),
    ("size beyond this request's", _hdr(Request.SET_VRING_NUM, 200) + b"\0" * 200, 0, "size"),
    ("MTU without VIRTIO_NET_F_MTU", P.request(Request.SET_PROTOCOL_FEATURES, P.U64.pack(1 << P.ProtocolFeature.NET_MTU))
     + _owner() + P.request(Request.SET_FEATURES, P.U64.pack(1 << 32)) + P.request(Request.NET_SET_MTU, P.U64.pack(1500)),
     0, "order"),
    ("reset device without its protocol feature", _owner() + P.request(Request.RESET_DEVICE), 0, "order"),
    ("features not offered", _owner() + P.request(Request.SET_FEATURES, P.U64.pack(1 << 63)), 0, "features"),
    ("protocol features not offered", P.request(Request.SET_PROTOCOL_FEATURES, P.U64.pack(1 << 40)), 0, "features"),
    ("ring addresses before the table", _owner() + P.request(Request.SET_VRING_ADDR, P.VRING_ADDR.pack(0, 0, 0, 0, 0, 0)),
     0, "order"),
    ("table announcing more regions than sent",
     _owner() + P.request(Request.SET_MEM_TABLE, P.MEM_HDR.pack(3, 0) + P.MEM_REGION.pack(0, _M, 0, 0)), 1, "nregions"),
    ("empty table", _owner() + P.request(Request.SET_MEM_TABLE, P.MEM_HDR.pack(0, 0)), 0, "nregions"),
    ("region fds missing", _owner() + _table((0, _M, 1 << 40, 0), (_M, _M, (1 << 40) + _M, 0)), 1, "fds"),
    ("empty region", _owner() + _table((0, 0, 1 << 40, 0)), 1, "memory_size"),
    ("region wrapping around", _owner() + _table(((1 << 64) - 4096, 8192, 1 << 40, 0)), 1, "guest_phys_addr"),
    ("region user address wrapping", _owner() + _table((0, _M, (1 << 64) - 4096, 0)), 1, "userspace_addr"),
    ("unaligned mmap offset", _owner() + _table((0, _M, 1 << 40, 12)), 1, "mmap_offset"),
    ("regions overlapping in guest memory", _owner() + _table((0, _M, 1 << 40, 0), (_M // 2, _M, 1 << 41, 0)), 2,
     "guest_phys_addr"),
    ("regions overlapping in user addresses", _owner() + _table((0, _M, 1 << 40, 0), (4 * _M, _M, (1 << 40) + 4096, 0)),
     2, "userspace_addr"),
    ("region beyond its fd", _owner() + _table((0, 4 * _M, 1 << 40, 0)), 1, "memory_size"),
    ("region offset beyond its fd", _owner() + _table((0, _M, 1 << 40, _M)), 1, "memory_size"),
    ("add region without the slots feature", _owner() + P.request(Request.ADD_MEM_REG,
     P.mem_single_payload(MemRegion(0, _M, 1 << 40, 0))), 1, "order"),
]


def _assert_nothing_left_and_next_is_served(rig, before) -> None:
    """The process has the fds, threads and shared mappings it had before the connection, and a new
    front end is served."""
    assert_nothing_left(before, footprint())
    fr = FrontendRig(rig.path)
    try:
        fr.guest.send(_frame(64))
        assert rig.link.sent(2.0)[12:] == _frame(64)
    finally:
        fr.close()


@pytest.mark.parametrize("what,data,nfds,field", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_a_hostile_message_is_named_closes_its_connection_and_the_server_serves_on(rig, what, data, nfds, field):
    fr = FrontendRig(rig.path)     # first use: what stays loaded afterwards
    fr.close()
    wait_for(lambda: not rig.server.stats()["connected"], 2.0)
    before = footprint()
    fds = [_memfd() for _ in range(nfds)]
    s = raw_client(rig.path)
    try:
        if data.startswith(_owner()) and len(data) > P.HEADER_SIZE:
            s.sendall(_owner())      # the fds ride on the first byte of a sendmsg: the hostile message's
            data = data[P.HEADER_SIZE:]
        s.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else [])
        assert closed_by_peer(s), f"{what}: the server kept the connection open"
    finally:
        s.close()
        for fd in fds:
            os.close(fd)
    wait_for(lambda: not rig.server.stats()["connected"], 2.0)
    refusal = rig.refusals()[-1]
    assert f"bad {field}:" in refusal, refusal
    assert rig.server.stats()["refused_messages"] == 1
    _assert_nothing_left_and_next_is_served(rig, before)


def _reply(s: socket.socket) -> tuple[int, int, bytes]:
    head = s.recv(P.HEADER_SIZE, socket.MSG_WAITALL)
    assert len(head) == P.HEADER_SIZE, "the server closed the connection instead of replying"
    req, flags, size = P.HEADER.unpack(head)
    body = s.recv(size, socket.MSG_WAITALL) if size else b""
    assert len(body) == size
    assert flags == P.VERSION | P.FLAG_REPLY
    return req, size, body


def test_under_reply_ack_a_refused_request_is_answered_non_zero_and_the_connection_goes_on(rig):
    s = raw_client(rig.path)
    try:
        s.sendall(P.request(Request.SET_PROTOCOL_FEATURES, P.U64.pack(1 << P.ProtocolFeature.REPLY_ACK)) + _owner())
        for data, req in ((P.request(Request.SET_VRING_NUM, P.VRING_STATE.pack(0, 100), need_reply=True),
                           Request.SET_VRING_NUM),                                    # refused by the session
                          (P.HEADER.pack(999, P.VERSION | P.FLAG_NEED_REPLY, 16) + b"\0" * 16, 999),  # by the parser
                          (P.request(Request.POSTCOPY_LISTEN, need_reply=True), Request.POSTCOPY_LISTEN)):
            s.sendall(data)
            assert _reply(s) == (req, 8, P.U64.pack(1))
        s.sendall(P.request(Request.SET_VRING_NUM, P.VRING_STATE.pack(0, 256), need_reply=True))
        assert _reply(s) == (Request.SET_VRING_NUM, 8, P.U64.pack(0))
        s.sendall(P.request(Request.GET_FEATURES))
        assert _reply(s)[0] == Request.GET_FEATURES
        st = rig.server.stats()
        assert st["connected"] and st["refused_messages"] == 3
        assert sum("non-zero REPLY_ACK" in r for r in rig.refusals()) == 3
        # A refusal that cannot be answered in place (a request whose reply is its answer) still closes.
        s.sendall(P.request(Request.GET_VRING_BASE, P.VRING_STATE.pack(7, 0), need_reply=True))
        assert closed_by_peer(s)
    finally:
        s.close()


def test_net_set_mtu_before_set_features_is_taken_as_qemu_sends_it(rig):
    """QEMU sends NET_SET_MTU when the device starts, before SET_FEATURES (it saw VIRTIO_NET_F_MTU
    offered); refusing it there fails every guest with an MTU ("9000Bytes MTU not supported")."""
    s = raw_client(rig.path)
    try:
        s.sendall(P.request(Request.SET_PROTOCOL_FEATURES, P.U64.pack((1 << P.ProtocolFeature.NET_MTU) |
                                                                      (1 << P.ProtocolFeature.REPLY_ACK))) + _owner())
        s.sendall(P.request(Request.NET_SET_MTU, P.U64.pack(1400), need_reply=True))
        assert _reply(s) == (Request.NET_SET_MTU, 8, P.U64.pack(0))
        assert rig.server.session.dev.mtu == 1400
    finally:
        s.close()


def test_set_vring_enable_before_set_features_is_taken_after_set_protocol_features(rig):
    """QEMU 7.2's order: GET_FEATURES, SET_PROTOCOL_FEATURES, SET_OWNER, then SET_VRING_ENABLE before
    SET_FEATURES (QEMU checks bit 30 in GET_FEATURES' answer, not in what it acked yet)."""
    s = raw_client(rig.path)
    try:
        s.sendall(P.request(Request.GET_FEATURES))
        assert _reply(s)[2] == P.U64.pack(rig.server.session.offered_features)
        s.sendall(P.request(Request.SET_PROTOCOL_FEATURES, P.U64.pack(1 << P.ProtocolFeature.REPLY_ACK)) + _owner())
        for ring in (0, 1):
            s.sendall(P.request(Request.SET_VRING_ENABLE, P.VRING_STATE.pack(ring, 1), need_reply=True))
            assert _reply(s) == (Request.SET_VRING_ENABLE, 8, P.U64.pack(0))
        assert rig.server.stats()["refused_messages"] == 0, rig.refusals()
        assert all(r.enabled for r in rig.server.session.rings)
    finally:
        s.close()


def test_a_front_end_reconnecting_as_its_old_connection_hangs_up_is_served(rig):
    a = raw_client(rig.path)
    assert rig.server.wait_connected(2)
    with rig.server._lock:          # the server stalls in SET_OWNER while the front end reconnects
        a.sendall(_owner())
        time.sleep(0.2)
        a.close()
        pending = raw_client(rig.path)
    try:
        assert wait_for(lambda: rig.server.stats()["connections"] == 2, 3.0)
        assert rig.server.stats()["refused_connections"] == 0, rig.refusals()
        pending.sendall(P.request(Request.GET_FEATURES))
        assert _reply(pending)[0] == Request.GET_FEATURES
    finally:
        pending.close()


def test_reset_device_keeps_the_owner_and_the_device_is_set_up_again(rig):
    fr = FrontendRig(rig.path)
    try:
        fe = fr.fe
        assert fe.acks
        fe.send(Request.RESET_DEVICE)          # acked: REPLY_ACK is on, so it was accepted
        assert rig.server.session.features_acked is None and rig.server.session.mem is None
        fe.set_driver_features(fe.driver_features)   # then features, table and rings again, no SET_OWNER
        fe.start()
        fr.guest.send(_frame(64))
        assert rig.link.sent(2.0)[12:] == _frame(64)
        assert rig.server.stats()["refused_messages"] == 0
    finally:
        fr.close()


def test_ring_addresses_outside_every_region_are_refused_with_the_ring_named(rig):
    with FrontendRigNoStart(rig.path) as fr:
        fr.fe.send_raw_addr(0, desc=fr.mem.hva(0) + (64 << 20))
    assert "bad desc:" in rig.refusals()[-1]


class FrontendRigNoStart(FrontendRig):
    """A front end that sent the table but no ring, to send ring messages of its own."""

    def __init__(self, path):
        super().__init__(path, start=False)
        fe = self.fe
        regions = fe.memory_regions()
        fe.send(Request.SET_MEM_TABLE, P.mem_table_payload([r for r, _ in regions]), [fd for _, fd in regions])
        fe.send(Request.SET_VRING_NUM, P.VRING_STATE.pack(0, 64))

        def send_raw_addr(q, desc):
            try:
                fe.send(Request.SET_VRING_ADDR, P.VRING_ADDR.pack(q, 0, desc, fe.mem.hva(0), fe.mem.hva(0), 0))
            except Exception:
                pass
        fe.send_raw_addr = send_raw_addr

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --- a front end killed in the middle of its traffic ---
KILLED_FRONTEND = r"""
import sys, os
sys.path.insert(0, sys.argv[2])
from vnbtest.vhost_user import FrontendRig
fr = FrontendRig(sys.argv[1])
frame = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + bytes(50)
os.write(1, b"up\n")
while True:
    fr.guest.flood(frame, 1000)
"""


def test_a_front_end_killed_mid_traffic_leaves_no_fd_thread_or_mapping(rig):
    fr = FrontendRig(rig.path)
    fr.close()
    wait_for(lambda: not rig.server.stats()["connected"], 2.0)
    before = footprint()
    tests_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen([sys.executable, "-c", KILLED_FRONTEND, rig.path, tests_dir], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"up\n"
        assert wait_for(lambda: rig.link.sent(0.5) is not None, 5.0)
        # The counter is bumped after the write: the frame can be seen first.
        assert wait_for(lambda: rig.server.stats().get("device", {}).get("tx_frames", 0) > 0, 5.0)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    wait_for(lambda: not rig.server.stats()["connected"], 5.0)
    while rig.link.sent(0.05) is not None:
        pass
    assert [k for k, _ in rig.events].count("disconnected") == 2
    _assert_nothing_left_and_next_is_served(rig, before)


# --- property: any sequence of messages, valid or mutated, gives a reply or a ProtocolError ---
_REQS = [r for r in Request]


@st.composite
def _messages(draw):
    req = draw(st.sampled_from(_REQS + [0, 41, 0xFFFFFFFF]))
    kind = draw(st.sampled_from(["u64", "state", "addr", "table", "single", "random"]))
    if kind == "u64":
        payload = P.U64.pack(draw(st.integers(0, (1 << 64) - 1) | st.integers(0, 0x1FF)))
    elif kind == "state":
        payload = P.VRING_STATE.pack(draw(st.integers(0, 3)), draw(st.sampled_from([0, 1, 2, 64, 100, 256, 1 << 16])))
    elif kind == "addr":
        base = 1 << 40
        payload = P.VRING_ADDR.pack(draw(st.integers(0, 2)), draw(st.integers(0, 2)),
                                    *(base + draw(st.integers(-8192, 1 << 21)) for _ in range(3)), 0)
    elif kind == "table":
        n = draw(st.integers(0, 3))
        payload = P.MEM_HDR.pack(draw(st.integers(0, 9)), 0) + b"".join(
            P.MEM_REGION.pack(draw(st.sampled_from([0, 4096, _M, (1 << 64) - 4096])),
                              draw(st.sampled_from([0, 4096, _M, 2 * _M])),
                              (1 << 40) + i * 4 * _M, draw(st.sampled_from([0, 12, 4096, _M]))) for i in range(n))
    elif kind == "single":
        payload = P.mem_single_payload(MemRegion(draw(st.sampled_from([0, _M])), draw(st.sampled_from([0, _M])),
                                                 1 << 41, 0))
    else:
        payload = draw(st.binary(max_size=64))
    flags = draw(st.sampled_from([P.VERSION, P.VERSION | P.FLAG_NEED_REPLY, 0, P.VERSION | P.FLAG_REPLY]))
    nfds = draw(st.integers(0, 3))
    return req, flags, payload, nfds


def _valid_prefix():
    """SET_OWNER, features and a real memory table, so mutated ring messages reach the deep checks."""
    return [(Request.SET_OWNER, P.VERSION, b"", 0), (Request.GET_FEATURES, P.VERSION, b"", 0),
            (Request.SET_PROTOCOL_FEATURES, P.VERSION, P.U64.pack(P.PROTOCOL_FEATURES), 0),
            (Request.SET_FEATURES, P.VERSION, P.U64.pack(1 << 32), 0),
            (Request.SET_MEM_TABLE, P.VERSION, P.mem_table_payload([MemRegion(0, 2 * _M, 1 << 40, 0)]), 1),
            (Request.SET_VRING_NUM, P.VERSION, P.VRING_STATE.pack(1, 64), 0),
            (Request.SET_VRING_ADDR, P.VERSION, P.VRING_ADDR.pack(1, 0, 1 << 40, (1 << 40) + 8192,
                                                                  (1 << 40) + 4096, 0), 0),
            (Request.SET_VRING_CALL, P.VERSION, P.U64.pack(1), 1),
            (Request.SET_VRING_KICK, P.VERSION, P.U64.pack(1), 1)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prefix=st.integers(0, 9), seq=st.lists(_messages(), max_size=12))
def test_any_message_sequence_gives_replies_or_a_protocol_error_and_leaks_nothing(prefix, seq):
    before = footprint()
    link = PairLink()
    session = Session(link, "user")
    try:
        for req, flags, payload, nfds in _valid_prefix()[:prefix] + seq:
            fds = [_memfd(2 * _M) if req in (Request.SET_MEM_TABLE, Request.ADD_MEM_REG) else
                   os.eventfd(0, os.EFD_CLOEXEC) for _ in range(nfds)]
            try:
                request, flags, _ = P.parse_header(P.HEADER.pack(int(req), flags, len(payload)))
                msg = P.parse(request, flags, payload, nfds)
            except ProtocolError:
                for fd in fds:
                    os.close(fd)
                continue
            try:
                out = session.handle(msg, fds)
            except ProtocolError:
                break              # the server closes the connection here
            if out is not None:
                code, rflags, size = P.HEADER.unpack_from(out)
                assert code == msg.request and rflags & P.FLAG_REPLY and size == len(out) - P.HEADER_SIZE
    finally:
        session.close()
        link.close()
    assert_nothing_left(before, footprint())


def test_header_parser_refuses_short_headers():
    with pytest.raises(ProtocolError, match="bad length"):
        P.parse_header(b"\0" * 11)


def test_memory_fd_shrunk_below_a_region_is_refused_before_mapping():
    link = PairLink()
    session = Session(link, "user")
    try:
        session.handle(P.parse(Request.SET_OWNER, P.VERSION, b"", 0), [])
        fd = _memfd(4096)
        msg = P.parse(Request.SET_MEM_TABLE, P.VERSION, P.mem_table_payload([MemRegion(0, _M, 1 << 40, 0)]), 1)
        with pytest.raises(ProtocolError, match="past the end of its fd"):
            session.handle(msg, [fd])
        with pytest.raises(OSError):
            os.fstat(fd)           # the session closed the fd it was given
    finally:
        session.close()
        link.close()


@pytest.mark.parametrize("datapath", ["user", "uring"])
def test_a_front_end_that_shrinks_its_memory_loses_only_its_connection(datapath):
    """A front end whose memory file shrinks under the mapping (DPDK's --no-huge memfd is unsealed)
    makes the datapath fault with SIGBUS: recovered, that one connection closes with one line and a
    counter, the process lives, a second device in it keeps its traffic, and the server serves on."""
    a, b = ServerRig(datapath), ServerRig(datapath)
    fa = fb = fc = None
    try:
        fa, fb = FrontendRig(a.path), FrontendRig(b.path)
        for fr, rig in ((fa, a), (fb, b)):
            fr.guest.send(_frame(64))
            assert rig.link.sent(2.0)[12:] == _frame(64)
        os.ftruncate(fa.mem.regions[0].fd, 0)
        os.eventfd_write(fa.fe.queues[1].kick_fd, 1)       # the TX ring is read: its page is gone
        assert wait_for(lambda: not a.server.stats()["connected"], 5.0), a.events
        st = a.server.stats()
        assert st["memory_gone"] == 1 and st["faults"] == 1, st
        assert sum("took its guest memory away" in r for r in a.refusals()) == 1, a.events
        assert any("guest memory vanished" in t for k, t in a.events if k == "fault"), a.events
        for i in range(50):                                 # the other device never noticed
            fb.guest.send(_frame(100, i))
            assert b.link.sent(2.0)[12:] == _frame(100, i)
            b.link.inject(_frame(90, i))
            assert fb.guest.receive(timeout=2.0) == _frame(90, i)
        assert b.server.stats()["memory_gone"] == 0
        fc = FrontendRig(a.path)                            # and the first serves its next front end
        fc.guest.send(_frame(70))
        assert a.link.sent(2.0)[12:] == _frame(70)
    finally:
        for fr in (fa, fb, fc):
            if fr is not None:
                fr.close()
        a.close()
        b.close()


def test_control_plane_reads_of_memory_taken_away_raise_instead_of_killing():
    from vnetbe.errors import GuestMemoryGone
    from vnetbe.memory import GuestMemory
    with GuestMemory(1 << 20) as mem:
        mem.write(4096, b"abcd")
        assert mem.read(4096, 4) == b"abcd"
        os.ftruncate(mem.regions[0].fd, 0)
        with pytest.raises(GuestMemoryGone, match="guest memory vanished"):
            mem.read(4096, 4)
        with pytest.raises(GuestMemoryGone):
            mem.write(0, b"x")
        os.ftruncate(mem.regions[0].fd, 1 << 20)           # the file grows back: readable again (zeros)
        assert mem.read(4096, 4) == b"\0" * 4


def test_backend_program_conventions_print_capabilities_as_json():
    out = subprocess.run([sys.executable, "-m", "vnetbe", "serve", "--print-capabilities"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    import json
    assert json.loads(out.stdout) == {"type": "net"}


def test_a_listening_socket_handed_over_by_fd_is_served_like_a_path(tmp_path):
    from vnetbe.vhost_user import VhostUserServer
    path = str(tmp_path / "mgr.sock")
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(path)
    lsock.listen(1)
    link = PairLink()
    server = VhostUserServer(None, link, fd=lsock.detach()).start()
    try:
        for n in (64, 65):                         # two front ends one after the other
            fr = FrontendRig(path)
            try:
                fr.guest.send(_frame(n))
                assert link.sent(2.0)[12:] == _frame(n)
            finally:
                fr.close()
            assert wait_for(lambda: not server.stats()["connected"], 2.0)
    finally:
        server.close()
        link.close()
    assert os.path.exists(path)                    # the manager's socket file is the manager's


def test_a_connected_socket_handed_over_by_fd_is_served_once_then_the_server_ends():
    from vnetbe.vhost_user import VhostUserServer
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    link = PairLink()
    server = VhostUserServer(None, link, fd=theirs.detach()).start()
    try:
        ours.sendall(P.request(Request.GET_FEATURES))
        req, size, _ = _reply(ours)
        assert (req, size) == (Request.GET_FEATURES, 8)
        ours.close()
        assert server.join(3.0), "the server kept running after its only connection ended"
    finally:
        server.close()
        link.close()


def _config_client(rig, features: int) -> socket.socket:
    s = raw_client(rig.path)
    s.sendall(P.request(Request.SET_PROTOCOL_FEATURES, P.U64.pack(features)) + _owner())
    return s


def test_get_config_reads_the_virtio_net_config_space_and_answers_a_bad_window_with_no_payload(rig):
    s = _config_client(rig, (1 << P.ProtocolFeature.CONFIG) | (1 << P.ProtocolFeature.REPLY_ACK))
    try:
        s.sendall(P.request(Request.GET_CONFIG, P.config_payload(0, 12)))
        req, size, body = _reply(s)
        assert (req, size) == (Request.GET_CONFIG, 24)
        offset, csize, flags = P.CONFIG_HDR.unpack_from(body)
        mac = bytes.fromhex(rig.link.mac.replace(":", ""))
        import struct
        assert (offset, csize, flags) == (0, 12, 0)
        assert body[12:] == mac + struct.pack("<HHH", 1, 1, rig.link.mtu)   # link up, 1 pair, the MTU
        s.sendall(P.request(Request.GET_CONFIG, P.config_payload(10, 2)))  # mtu alone
        assert _reply(s)[2][12:] == struct.pack("<H", rig.link.mtu)
        s.sendall(P.request(Request.GET_CONFIG, P.config_payload(20, 8)))  # past the end: the spec's error
        assert _reply(s) == (Request.GET_CONFIG, 0, b"")
        # a write that changes nothing is taken; one that would change the MAC is refused, answered
        s.sendall(P.request(Request.SET_CONFIG, P.config_payload(0, 6, 0, mac), need_reply=True))
        assert _reply(s) == (Request.SET_CONFIG, 8, P.U64.pack(0))
        s.sendall(P.request(Request.SET_CONFIG, P.config_payload(0, 6, 0, b"\x02" * 6), need_reply=True))
        assert _reply(s) == (Request.SET_CONFIG, 8, P.U64.pack(1))
        assert rig.server.stats()["connected"] and rig.server.stats()["refused_messages"] == 2
        assert any("bad offset" in r for r in rig.refusals()) and any("read-only" in r for r in rig.refusals())
    finally:
        s.close()


def test_get_config_without_its_protocol_feature_is_refused(rig):
    s = _config_client(rig, 0)
    try:
        s.sendall(P.request(Request.GET_CONFIG, P.config_payload(0, 12)))
        assert closed_by_peer(s)
        assert "bad order" in rig.refusals()[-1] and "CONFIG" in rig.refusals()[-1]
    finally:
        s.close()


def test_set_status_is_read_back_by_get_status(rig):
    s = _config_client(rig, (1 << P.ProtocolFeature.STATUS) | (1 << P.ProtocolFeature.REPLY_ACK))
    try:
        s.sendall(P.request(Request.GET_STATUS))
        assert _reply(s) == (Request.GET_STATUS, 8, P.U64.pack(0))
        for status in (1, 3, 11, 15):                  # ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK
            s.sendall(P.request(Request.SET_STATUS, P.U64.pack(status), need_reply=True))
            assert _reply(s) == (Request.SET_STATUS, 8, P.U64.pack(0))
            s.sendall(P.request(Request.GET_STATUS))
            assert _reply(s) == (Request.GET_STATUS, 8, P.U64.pack(status))
        s.sendall(P.request(Request.SET_STATUS, P.U64.pack(0x100), need_reply=True))
        assert _reply(s) == (Request.SET_STATUS, 8, P.U64.pack(1))
    finally:
        s.close()


@pytest.mark.parametrize("datapath", ["user", "uring"])
def test_rings_without_kick_fds_are_polled_and_carry_frames_both_ways(datapath):
    """SET_VRING_KICK with NOFD: the front end never kicks, and the back end must poll the ring."""
    rig = ServerRig(datapath)
    fr = None
    try:
        fr = FrontendRig(rig.path, poll_rings=True)
        for i in range(20):
            fr.guest.send(_frame(80 + i, i))
            assert rig.link.sent(2.0)[12:] == _frame(80 + i, i)
            rig.link.inject(_frame(70 + i, i))
            assert fr.guest.receive(timeout=2.0) == _frame(70 + i, i)
        dev = rig.server.stats()["device"]
        assert (dev["tx_frames"], dev["rx_frames"]) == (20, 20)
        assert dev["tx_kicks"] == 0 and dev["rx_kicks"] == 0      # the driver's kicks reached no one
    finally:
        if fr is not None:
            fr.close()
        rig.close()


def test_a_polled_ring_is_refused_on_a_datapath_that_cannot_poll(rig):
    """vhost's kernel worker looks at a ring only when kicked: NOFD there is refused by name."""
    from vnetbe.datapath import PairedDatapath
    from vnetbe.datapath.user import UserDatapath

    class NoModes(UserDatapath):
        ring_modes = False
    s = raw_client(rig.path)
    try:
        s.sendall(_owner())
        assert wait_for(lambda: rig.server.session is not None and rig.server.session.owner, 2.0)
        rig.server.session.dev._datapath = PairedDatapath(NoModes, 1)
        s.sendall(P.request(Request.SET_VRING_KICK, P.U64.pack(P.VRING_NOFD_MASK)))
        assert closed_by_peer(s)
        assert "cannot poll a ring" in rig.refusals()[-1]
    finally:
        s.close()


@pytest.mark.parametrize("datapath", ["user", "uring"])
def test_a_started_but_disabled_ring_discards_tx_and_supplies_no_rx(datapath):
    """The spec's ring states: disabled, a net device supplies no new RX but processes and discards
    TX; enabled again, both flow, and the frame that waited in the tap arrives."""
    rig = ServerRig(datapath)
    fr = None
    try:
        fr = FrontendRig(rig.path)
        fr.guest.send(_frame(64))
        assert rig.link.sent(2.0)[12:] == _frame(64)
        for q in (0, 1):
            fr.fe.send(Request.SET_VRING_ENABLE, P.VRING_STATE.pack(q, 0))
        for i in range(5):
            fr.guest.send(_frame(100, i))
        fr.guest.drain_tx(timeout=2.0)                  # used: processed, not left in the ring
        assert rig.link.sent(0.3) is None
        rig.link.inject(_frame(90, 7))
        assert fr.guest.receive(timeout=0.5) is None    # no RX supplied while disabled
        dev = rig.server.stats()["device"]
        assert dev["drops"]["tx_disabled"] == 5 and dev["tx_frames"] == 1
        for q in (0, 1):
            fr.fe.send(Request.SET_VRING_ENABLE, P.VRING_STATE.pack(q, 1))
        assert fr.guest.receive(timeout=2.0) == _frame(90, 7)
        fr.guest.send(_frame(65))
        assert rig.link.sent(2.0)[12:] == _frame(65)
    finally:
        if fr is not None:
            fr.close()
        rig.close()


# --- multiqueue (VHOST_USER_PROTOCOL_F_MQ) ---

def test_get_queue_num_answers_the_virtqueues_of_every_pair_and_rings_beyond_are_refused():
    link = PairLink()
    session = Session(link, "user", queues=3)
    try:
        session.handle(P.parse(Request.SET_OWNER, P.VERSION, b"", 0), [])
        reply = session.handle(P.parse(Request.GET_QUEUE_NUM, P.VERSION, b"", 0), [])
        assert P.U64.unpack(reply[P.HEADER_SIZE:])[0] == 6     # 2 x pairs: QEMU, DPDK and CH all attach
        assert session.dev.device_features & spec.MQ_FEATURES == spec.MQ_FEATURES
        for ring in (5, 6):
            msg = P.parse(Request.SET_VRING_NUM, P.VERSION, P.VRING_STATE.pack(ring, 64), 0)
            if ring == 5:
                session.handle(msg, [])
            else:
                with pytest.raises(ProtocolError, match=r"ring 6; this device has rings 0 \.\. 5 \(3 pairs\)"):
                    session.handle(msg, [])
    finally:
        session.close()
        link.close()


def test_pairs_are_served_as_the_front_end_enables_them_as_qemu_does_for_ethtool_combined():
    """QEMU starts every pair's rings and enables pair 1 only when the guest asks (ethtool -L combined 2);
    combined 1 disables rings 2 and 3 again: ring 3 (TX) then discards, ring 2 is not served and the
    link's queue 1 is detached so the kernel steers nothing to it."""
    rig = ServerRig(queues=2)
    mem = GuestMemory(16 << 20)
    fe = VhostUserFrontend(rig.path, mem)
    fe.max_queue_pairs = 2
    try:
        g0 = GuestDriver(fe, queue_size=64, rx_buf_size=2048, start=False)
        g1 = GuestDriver(fe, queue_size=64, rx_buf_size=2048, pair=1, start=False)
        assert fe.driver_features & spec.MQ_FEATURES == spec.MQ_FEATURES
        fe.start()
        session = rig.server.session
        assert wait_for(lambda: sorted(session.dev.served_queues()) == [0, 1, 2, 3], 2.0)
        q1 = rig.link.queue(1)
        for g, q, seed in ((g0, rig.link, 0), (g1, q1, 1)):
            g.send(_frame(100, seed))
            assert q.sent(2.0)[12:] == _frame(100, seed)
            q.inject(_frame(90, seed))
            assert g.receive(timeout=2.0) == _frame(90, seed)
        for ring in (2, 3):                                  # ethtool -L combined 1
            fe.send(Request.SET_VRING_ENABLE, P.VRING_STATE.pack(ring, 0))
        assert wait_for(lambda: sorted(session.dev.served_queues()) == [0, 1, 3], 2.0)
        assert session.dev.queues[3].discard and rig.link.attached[1] is False
        g1.send(_frame(100, 7))                              # discarded, not sent
        g1.drain_tx()
        assert q1.sent(0.3) is None
        g0.send(_frame(100, 8))                              # pair 0 goes on
        assert rig.link.sent(2.0)[12:] == _frame(100, 8)
        assert rig.refusals() == []
    finally:
        fe.close()
        mem.close()
        rig.close()


def test_the_same_region_added_by_each_of_qemus_per_pair_devices_is_mapped_once_and_removed_last():
    """QEMU runs a vhost device per queue pair on one socket, each with its own ADD_MEM_REG and
    REM_MEM_REG of the same regions: a duplicate is a reference, not an overlap."""
    link = PairLink()
    session = Session(link, "user", queues=2)
    pf = 1 << P.ProtocolFeature.CONFIGURE_MEM_SLOTS | 1 << P.ProtocolFeature.REPLY_ACK
    try:
        session.handle(P.parse(Request.SET_OWNER, P.VERSION, b"", 0), [])
        session.handle(P.parse(Request.SET_PROTOCOL_FEATURES, P.VERSION, P.U64.pack(pf), 0), [])
        region = MemRegion(0, 2 * _M, 1 << 40, 0)
        add = lambda: session.handle(P.parse(Request.ADD_MEM_REG, P.VERSION | P.FLAG_NEED_REPLY,
                                             P.mem_single_payload(region), 1), [_memfd(2 * _M)])
        rem = lambda: session.handle(P.parse(Request.REM_MEM_REG, P.VERSION | P.FLAG_NEED_REPLY,
                                             P.mem_single_payload(region), 0), [])
        for _ in range(2):
            assert P.U64.unpack(add()[P.HEADER_SIZE:])[0] == 0
        assert len(session.regions) == 1 and len(session.mem.regions) == 1
        rem()
        assert len(session.mem.regions) == 1              # pair 1's device removed its reference
        rem()
        assert session.regions == [] and len(session.mem.regions) == 0
        with pytest.raises(ProtocolError, match="no region"):
            rem()
        other = MemRegion(_M, 2 * _M, 1 << 41, 0)          # overlapping, not the same: refused as before
        add()
        with pytest.raises(ProtocolError, match="overlap"):
            session.handle(P.parse(Request.ADD_MEM_REG, P.VERSION, P.mem_single_payload(other), 1), [_memfd(2 * _M)])
    finally:
        session.close()
        link.close()
