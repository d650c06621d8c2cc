"""vhost-net specifics: the kernel really carries the traffic, and its faults read like ours."""
from __future__ import annotations

import os
import struct

import pytest

from vnetbe import errors, spec

from vnetbe.tools import packet
from vnetbe.datapath.stats import DatapathStats
from vnetbe.datapath.vhost import VhostDatapath, _vhost_workers
from vnetbe.faults import DROP_REASONS
from vnbtest.net import Net
from vnetbe.cputime import thread_cpu_ns

pytestmark = pytest.mark.root


@pytest.fixture
def rig(tag, datapath):
    n = Net(tag, datapath, mtu=1500, mem_size=32 << 20)
    yield n.link, n.peer, n.peer_mac, n.mem, n.dev, n.guest
    n.close()


@pytest.mark.vhost
@pytest.mark.parametrize("datapath", ["vhost"], indirect=False)
def test_vhost_worker_carries_the_traffic_and_no_userspace_datapath_thread_runs(rig):
    link, peer, peer_mac, mem, dev, guest = rig
    workers = _vhost_workers()
    assert workers, "no vhost worker for this process"
    before = {t: thread_cpu_ns(t, t) for t in workers}
    names_before = {t: open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")}
    frame = packet.tagged_frame(0, 256, peer_mac, link.mac)
    count = 3000
    import threading
    out = {}
    th = threading.Thread(target=lambda: out.update(peer.recv_tagged(count, timeout=5.0)))
    th.start()
    assert guest.flood(frame, count, tagged=True) == count
    guest.drain_tx()
    th.join()
    assert out["received"] == count and out["bad"] == 0
    assert sum(thread_cpu_ns(t, t) - before[t] for t in workers) > 0
    assert not any(n.startswith("vnb") for n in names_before.values())
    assert dev.threads() == sorted(workers)
    assert dev.stats()["syscalls"] == 0


@pytest.mark.vhost
@pytest.mark.parametrize("datapath", ["vhost"], indirect=False)
def test_each_vhost_device_reports_only_its_own_worker(rig):
    # A VMM with two NICs in one process: each device's CPU time and wake-ups are its own worker's.
    link, peer, peer_mac, mem, dev, guest = rig
    other = VhostDatapath()
    try:
        mine, theirs = dev.threads(), other.threads()
        assert len(mine) == 1 and len(theirs) == 1 and set(mine).isdisjoint(theirs)
        assert sorted(mine + theirs) == sorted(_vhost_workers())
    finally:
        other.close()
    assert dev.threads() == mine


def _corrupt_tx_desc(mem, guest, addr, length, flags=0):
    """Post a TX chain whose one descriptor is (addr, length, flags), bypassing the driver's checks."""
    num, desc, avail, used = guest.rings[spec.TX_QUEUE]
    g = guest.raw
    head = g.txq.free_head
    mem.write(desc + 16 * head, struct.pack("<QIHH", addr, length, flags, 0))
    idx = g.txq.avail_idx
    mem.write(avail + 4 + 2 * (idx % num), struct.pack("<H", head))
    mem.write(avail + 2, struct.pack("<H", (idx + 1) & 0xFFFF))
    os.eventfd_write(guest.kick_fd[spec.TX_QUEUE], 1)


@pytest.mark.parametrize("case,exc", [
    ("outside", errors.DescriptorOutOfBounds),
    ("writable", errors.WritableInTx),
    ("indirect_len", errors.IndirectLength),
])
def test_guest_fault_raises_the_same_exception_on_both_datapaths(rig, case, exc):
    link, peer, peer_mac, mem, dev, guest = rig
    if case == "outside":
        _corrupt_tx_desc(mem, guest, mem.size + (1 << 30), 64)
    elif case == "writable":
        _corrupt_tx_desc(mem, guest, guest.tx_buf_gpa, 64, spec.VRING_DESC_F_WRITE)
    else:
        _corrupt_tx_desc(mem, guest, guest.tx_ind_gpa, 24, spec.VRING_DESC_F_INDIRECT)
    fault = dev.wait_fault(5.0)
    assert isinstance(fault, exc), fault
    assert fault.queue == spec.TX_QUEUE
    assert dev.status & spec.DEVICE_NEEDS_RESET
    with pytest.raises(exc):
        dev.check()
    # The RX queue keeps working: a frame from the peer still arrives.
    f = packet.tagged_frame(7, 100, link.mac, peer_mac)
    peer.send(f)
    got = guest.receive(timeout=3.0)
    while got is not None and not packet.is_tagged(got):
        got = guest.receive(timeout=3.0)
    assert got == f


def test_stats_have_the_same_keys_on_every_datapath(rig, datapath):
    link, peer, peer_mac, mem, dev, guest = rig
    guest.send(packet.tagged_frame(0, 128, peer_mac, link.mac))
    guest.drain_tx()
    st = dev.stats()
    assert set(st) == set(DatapathStats().as_dict()) | {"datapath", "status", "features", "queue_pairs", "pairs",
                                                         "ctrl_commands"}
    assert st["pairs"][0]["tx_frames"] == 1 and set(st["pairs"][0]) <= set(st)
    assert set(st["drops"]) == set(DROP_REASONS)
    assert set(st["not_counted"]) <= set(st)
    assert st["tx_frames"] == 1 and st["faults"] == {}
