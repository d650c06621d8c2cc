"""A live migration's pre-copy through vnetbe's own vhost-user front end, on every datapath (vhost:
the kernel's vhost-net logs, in the lab): the front end turns the log on (SET_LOG_BASE, LOG_ALL,
VRING_F_LOG), copies the whole memory, lets frames arrive that the guest does not read yet, copies
what the log says changed, stops the rings (GET_VRING_BASE), copies the last dirty pages; the guest
then runs on the copy, which a new connection hands to the server with each ring's last_avail_idx.
Every frame the back end wrote before the switch is read from the copy byte for byte, and traffic
goes on both ways. A back end (or a kernel) that did not log its writes leaves stale RX buffers and
used rings in the copy: the guest reads damaged frames or none."""
from __future__ import annotations

import os
import tempfile
import threading
import time

import pytest

from vnetbe.dirtylog import DirtyLog
from vnetbe.memory import GuestMemory
from vnetbe.tools import packet
from vnetbe.tools.guest import GuestDriver
from vnetbe.tools.peer import Peer
from vnetbe.tools.topology import Topology
from vnetbe.tools.vhost_user_frontend import VhostUserFrontend
from vnetbe.vhost_user import VhostUserServer
from vnbtest.wait import wait_for

pytestmark = pytest.mark.root

PAGE = 4096
MEM = 32 << 20
SIZE = 256           # bytes per tagged frame; one 2048-byte RX buffer each
SEQ_AT = 14          # where a tagged frame carries its sequence number (after the Ethernet header)


def _copy_pages(src: GuestMemory, dst: bytearray, pages: list[int]) -> None:
    for p in pages:
        dst[p * PAGE:(p + 1) * PAGE] = src.read(p * PAGE, PAGE)


def test_frames_written_before_the_switch_are_read_from_the_copy_byte_for_byte(tag, datapath):
    topo = Topology(tag, mtu=1500)
    tmp = tempfile.mkdtemp(prefix="vnb-mig-")
    server = mem = peer = fe = fe2 = guest = None
    log_fd = -1
    try:
        link = topo.macvtap("bridge")
        peer = Peer(topo.peer, topo.netns)
        with topo.ns.ipr() as ipr:
            peer_mac = ipr.link("get", ifname=topo.peer)[0].get_attr("IFLA_ADDRESS")
        server = VhostUserServer(os.path.join(tmp, "sock"), link, datapath, on_event=lambda k, t: None).start()
        mem = GuestMemory(MEM)
        fe = VhostUserFrontend(server.path, mem)
        guest = GuestDriver(fe, queue_size=256, rx_buf_size=2048)
        assert server.wait_connected(5)
        peer.flush()

        # The source: logging on, as QEMU starts a migration, then the bulk copy.
        log_fd = os.memfd_create("vnb-test-log", os.MFD_CLOEXEC)
        os.ftruncate(log_fd, mem.log_size_needed())
        assert fe.offers_log and fe.set_log_base(log_fd, mem.log_size_needed()) == 0
        fe.set_logging(True)
        log = DirtyLog.from_fd(log_fd, mem.log_size_needed())
        copy = bytearray(mem.read(0, MEM))

        def arrive(first: int, n: int) -> None:
            """The peer sends frames first..first+n-1; the back end places them, the guest reads none."""
            before = server.stats()["device"]["rx_frames"]
            assert peer.send_tagged(n, SIZE, dst=link.mac, pace_ns=20000, first_seq=first)["sent"] == n
            assert wait_for(lambda: server.stats()["device"]["rx_frames"] >= before + n, 10), f"{n} frames not placed"

        # While the copy runs: frames in both directions (TX: used ring writes only).
        arrive(0, 150)
        frame = packet.tagged_frame(0, SIZE, peer_mac, link.mac)
        got = {}
        th = threading.Thread(target=lambda: got.update(peer.recv_tagged(100, timeout=10.0)))
        th.start()
        assert guest.flood(frame, 100, tagged=True) == 100
        guest.drain_tx()
        th.join()
        assert (got["received"], got["bad"]) == (100, 0), got
        _copy_pages(mem, copy, log.dirty_pages())          # a pre-copy round
        arrive(150, 80)                                     # dirtied again after that round
        # Stop-and-copy: the rings stop where they stand; the last dirty pages go over.
        bases = {q: fe.get_vring_base(q) for q in sorted(fe.queues)}
        last = log.dirty_pages()
        assert last, "the back end wrote 80 frames after the last round and logged nothing"
        _copy_pages(mem, copy, last)
        fe.set_logging(False)
        log.close()

        # The switch: the guest runs on the copy. Its memory becomes the copy (the driver's own state
        # outside guest memory stays, as a vCPU's does), and a new connection brings it to the server.
        fe.forget_on_close(guest.close)     # the guest's eventfds go on with it
        fe.close()
        mem.write(0, bytes(copy))
        fe2 = VhostUserFrontend(server.path, mem)
        fe2.on_close(guest.close)
        fe2.set_driver_features(guest.features)
        for q, cfg in sorted(fe.queues.items()):
            cfg.last_avail_idx = bases[q]
            fe2.set_queue(q, cfg)
        fe2.start()
        guest.dev = fe2
        assert wait_for(lambda: server.stats()["connected"], 5), "the destination did not connect"

        n, ooo, bad = guest.receive_count(230, timeout=5.0, seq_offset=SEQ_AT, verify=True)
        assert (n, ooo, bad) == (230, 0, 0), f"{n} of the 230 frames placed before the switch, {ooo} out of order, {bad} damaged"
        # And on, both ways, from where the rings stood.
        th = threading.Thread(target=lambda: got.update(peer.recv_tagged(100, timeout=10.0)))
        th.start()
        assert guest.flood(frame, 100, tagged=True, seq_offset=100) == 100
        guest.drain_tx()
        th.join()
        assert (got["received"], got["bad"], got["out_of_order"]) == (100, 0, 0), got
        out = {}
        th = threading.Thread(target=lambda: out.update(zip(("n", "ooo", "bad"), guest.receive_count(
            100, timeout=10.0, seq_offset=SEQ_AT, verify=True))))
        th.start()
        assert peer.send_tagged(100, SIZE, dst=link.mac, pace_ns=20000, first_seq=230)["sent"] == 100
        th.join()
        assert out == {"n": 100, "ooo": 0, "bad": 0}, out
        st = server.stats()
        assert (st["connections"], st["refused_messages"], st["faults"]) == (2, 0, 0), st
    finally:
        for obj in (fe2, fe, server, mem, peer):
            if obj is not None:
                obj.close()
        if log_fd >= 0:
            os.close(log_fd)
        topo.close()
        os.rmdir(tmp)
