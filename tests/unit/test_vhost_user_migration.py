"""Live migration behind vhost-user. Dirty logging in QEMU's order (hw/virtio/vhost.c vhost_log_global_start):
SET_LOG_BASE with a memfd (its reply), SET_FEATURES with VHOST_F_LOG_ALL on running rings, then
SET_VRING_ADDR with VHOST_VRING_F_LOG and log_guest_addr; every page the server writes for the
guest is then in the front end's log, none once logging is off; a log that cannot serve is refused
by name. vnetbe's own front end speaks for QEMU here (tests/e2e has QEMU itself)."""
from __future__ import annotations

import os

import numpy as np
import pytest
from vnbtest.vhost_user import FrontendRig, ServerRig, closed_by_peer, raw_client

from vnetbe import spec
from vnetbe.dirtylog import DirtyLog
from vnetbe.errors import VnetError
from vnetbe.vhost_user import protocol as P
from vnetbe.vhost_user.protocol import Request

ETH = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x88\xb5"
PAGE = 4096


def _frame(i: int, n: int = 700) -> bytes:
    return ETH + bytes((i + k) & 0xFF for k in range(n - len(ETH)))


@pytest.fixture
def rig():
    r = ServerRig()
    yield r
    r.close()


@pytest.fixture
def log_fd():
    fd = os.memfd_create("vnb-test-log", os.MFD_CLOEXEC)
    yield fd
    os.close(fd)


def test_in_qemus_order_every_page_written_for_the_guest_is_logged_and_none_after(rig, log_fd):
    fr = FrontendRig(rig.path)
    try:
        size = fr.mem.log_size_needed()
        os.ftruncate(log_fd, size)
        assert fr.fe.offers_log and fr.fe.set_log_base(log_fd, size) == 0
        fr.fe.set_logging(True)
        g = fr.guest
        area = (g.rx_buf_gpa, g.rx_buf_size * g.rings[0][0])
        with DirtyLog.from_fd(log_fd, size) as log:
            log.dirty_pages()
            before = bytes(fr.mem.view(*area))
            for i in range(50):
                rig.link.inject(_frame(i))
                assert g.receive(2.0) == _frame(i)
                g.send(_frame(i, 100))
                assert rig.link.sent(2.0)[12:] == _frame(i, 100)
            dirty = set(log.dirty_pages())
            changed = np.flatnonzero(np.frombuffer(before, np.uint8) != np.frombuffer(bytes(fr.mem.view(*area)), np.uint8))
            rx_pages = {(area[0] + int(b)) // PAGE for b in changed}
            assert rx_pages and rx_pages <= dirty, sorted(rx_pages - dirty)
            assert {u // PAGE for _, _, _, u in g.rings.values()} <= dirty
            fr.fe.set_logging(False)
            log.dirty_pages()
            for i in range(10):
                rig.link.inject(_frame(i))
                assert g.receive(2.0) == _frame(i)
            assert log.dirty_pages() == []
        assert rig.server.stats()["connected"]
    finally:
        fr.close()


def _refused(rig, act, *phrases: str) -> None:
    """On a new front end connection, ``act(rig)`` fails and the server names why with ``phrases``."""
    fr = FrontendRig(rig.path)
    try:
        with pytest.raises(VnetError):
            act(fr)
        assert any(all(ph in r for ph in phrases) for r in rig.refusals()), rig.refusals()
    finally:
        fr.close()


def test_a_log_too_small_for_the_memory_is_refused_by_name_and_closes_only_that_connection(rig, log_fd):
    os.ftruncate(log_fd, 4096)
    # 8 bytes cover 256 KiB; the guest has 8 MiB
    _refused(rig, lambda fr: fr.fe.set_log_base(log_fd, 8), "SET_LOG_BASE: bad mmap_size")
    again = FrontendRig(rig.path)          # the server goes on
    try:
        again.guest.send(_frame(1, 100))
        assert rig.link.sent(2.0)[12:] == _frame(1, 100)
    finally:
        again.close()


def test_log_all_before_any_log_base_is_refused(rig):
    s = raw_client(rig.path)
    try:
        s.sendall(P.request(Request.SET_OWNER)
                  + P.request(Request.SET_FEATURES, P.U64.pack(spec.bit(spec.VIRTIO_F_VERSION_1) | 1 << P.VHOST_F_LOG_ALL)))
        assert closed_by_peer(s)
        assert any("SET_FEATURES: bad features: VHOST_F_LOG_ALL before any SET_LOG_BASE" in r for r in rig.refusals())
    finally:
        s.close()


def test_a_log_past_the_end_of_its_file_and_a_ring_log_address_outside_memory_are_refused(rig, log_fd):
    os.ftruncate(log_fd, 4096)
    _refused(rig, lambda fr: fr.fe.set_log_base(log_fd, 4096, offset=4096), "SET_LOG_BASE: bad log", "past the end")

    def ring_log_outside_memory(fr):
        os.ftruncate(log_fd, fr.mem.log_size_needed())
        assert fr.fe.set_log_base(log_fd, fr.mem.log_size_needed()) == 0
        cfg = fr.fe.queues[0]
        fr.fe.send(Request.SET_VRING_ADDR, P.VRING_ADDR.pack(0, P.VRING_F_LOG, fr.mem.hva(cfg.desc),
                                                             fr.mem.hva(cfg.used), fr.mem.hva(cfg.avail), 1 << 40))
    _refused(rig, ring_log_outside_memory, "SET_VRING_ADDR: bad log")


def test_send_rarp_puts_a_broadcast_rarp_for_the_given_mac_on_the_link(rig):
    """For a guest that did not ack GUEST_ANNOUNCE QEMU asks the back end (SEND_RARP, the MAC in the
    first 6 bytes of the u64): the frame QEMU's announce_self and DPDK's make_rarp_packet build."""
    from vnetbe.vhost_user.session import rarp_frame
    mac = bytes.fromhex("525400800002")
    s = raw_client(rig.path)
    try:
        s.sendall(P.request(Request.SET_PROTOCOL_FEATURES, P.U64.pack(1 << P.ProtocolFeature.RARP))
                  + P.request(Request.SET_OWNER)
                  + P.request(Request.SEND_RARP, P.U64.pack(int.from_bytes(mac + b"\0\0", "little"))))
        got = rig.link.sent(2.0)
        assert got == bytes(10) + rarp_frame(mac)
        frame = got[10:]
        assert frame[:6] == b"\xff" * 6 and frame[6:12] == mac and frame[12:14] == b"\x80\x35" and len(frame) == 60
        assert frame[14 + 6:14 + 8] == b"\x00\x03" and frame[14 + 8:14 + 14] == frame[14 + 18:14 + 24] == mac
    finally:
        s.close()


def test_send_rarp_without_the_rarp_protocol_feature_is_refused(rig):
    s = raw_client(rig.path)
    try:
        s.sendall(P.request(Request.SET_OWNER) + P.request(Request.SEND_RARP, P.U64.pack(0x0200008050)))
        assert closed_by_peer(s)
        assert any("SEND_RARP: bad order: RARP protocol feature not negotiated" in r for r in rig.refusals())
        assert rig.link.sent(0.2) is None
    finally:
        s.close()


def test_the_server_offers_what_qemu_needs_to_migrate_and_to_announce_the_guest():
    from vnetbe.vhost_user.session import Session
    from vnbtest.fakelink import PairLink
    link = PairLink()
    try:
        sess = Session(link)
        try:
            assert sess.offered_features & (1 << P.VHOST_F_LOG_ALL)
            assert sess.offered_features & spec.bit(spec.VIRTIO_NET_F_GUEST_ANNOUNCE)
            assert P.PROTOCOL_FEATURES & (1 << P.ProtocolFeature.LOG_SHMFD | 1 << P.ProtocolFeature.RARP)
            assert not P.PROTOCOL_FEATURES & (1 << P.ProtocolFeature.PAGEFAULT)   # no post-copy
        finally:
            sess.close()
    finally:
        link.close()
