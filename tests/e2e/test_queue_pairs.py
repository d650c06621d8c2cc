"""Multiqueue on a real macvtap, on every datapath (vhost in the lab): a device of two pairs whose
driver turns the second on with VQ_PAIRS_SET on the control queue, frames from both pairs' TX queues
reaching the peer byte for byte, frames from the peer reaching the guest, and the live hand-over between
datapaths moving both pairs without losing a frame."""
from __future__ import annotations

import pytest

from vnetbe import spec
from vnetbe.tools import packet
from vnbtest.net import Net

pytestmark = pytest.mark.root
N = 200


@pytest.fixture
def net(tag, datapath):
    n = Net(tag, datapath, mtu=1500, queues=2, mem_size=64 << 20, guest_kw={"queue_size": 256})
    yield n
    n.close()


def _both_ways(n: Net, base: int) -> None:
    """N tagged frames from each pair's TX queue, in order at the peer; N from the peer, all arriving
    (the macvtap steers them to a queue of its choosing: the two pairs' guests see them between them)."""
    for p, g in enumerate(n.guests):
        sent = [packet.tagged_frame(base + 1000 * p + i, 128, n.peer_mac, n.link.mac) for i in range(N)]
        for f in sent:
            g.send(f)
        assert n.peer.capture(N, timeout=5.0, match=packet.is_tagged) == sent, f"pair {p}"
    sent = [packet.tagged_frame(base + 5000 + i, 128, n.link.mac, n.peer_mac) for i in range(N)]
    for f in sent:
        n.peer.send(f)
    got = []
    for g in n.guests:
        while (f := g.receive(timeout=1.0)) is not None:
            if packet.is_tagged(f):
                got.append(f)
    assert sorted(got) == sorted(sent)


def test_two_pairs_carry_frames_both_ways_once_the_driver_sets_them(net):
    assert net.dev.device_features & spec.bit(spec.VIRTIO_NET_F_MQ)
    assert net.guest.set_queue_pairs(2) == spec.VIRTIO_NET_OK
    _both_ways(net, 0)
    pairs = net.dev.stats()["pairs"]
    assert [p["tx_frames"] >= N for p in pairs] == [True, True], pairs


HANDOVER = [
    pytest.param(("uring", "user"), id="user-uring", marks=pytest.mark.uring),
    pytest.param(("vhost", "uring", "vhost", "user"), id="user-vhost-uring", marks=pytest.mark.vhost),
]


@pytest.mark.parametrize("cycle", HANDOVER)
def test_a_hand_over_moves_both_pairs_without_losing_a_frame(tag, cycle):
    n = Net(tag, "user", mtu=1500, queues=2, mem_size=64 << 20, guest_kw={"queue_size": 256})
    try:
        assert n.guest.set_queue_pairs(2) == spec.VIRTIO_NET_OK
        _both_ways(n, 0)
        for k, name in enumerate(cycle, start=1):
            n.dev.switch_datapath(name)
            assert n.dev.queue_pairs == 2
            _both_ways(n, 10000 * k)
        s = n.dev.stats()
        assert s["tx_frames"] >= 2 * N * (len(cycle) + 1) and not n.dev.faults()
    finally:
        n.close()
