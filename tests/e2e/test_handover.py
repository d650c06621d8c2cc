"""Live hand-over between the userspace datapath and vhost-net while traffic flows both ways.

The ring state (last_avail_idx, used index, notification state) moves with the queues: no frame may
be lost, duplicated or reordered, in either direction, across many switches.
"""
from __future__ import annotations

import os
import threading
import time

import pytest

from vnetbe.tools import packet
from vnbtest.net import Net

pytestmark = [pytest.mark.root, pytest.mark.vhost]

# Inside the software-emulated lab everything runs ~10x slower: keep rates modest so that only the
# hand-over, not an overloaded veth backlog, could lose frames.
IN_LAB = bool(os.environ.get("VNETBE_LAB"))
COUNT = 6000 if IN_LAB else 40000
PACE_NS = 400_000 if IN_LAB else 50_000
SWITCHES = 10


@pytest.fixture
def net(tag):
    n = Net(tag, "user", mtu=1500, peer_kw={"rx_ring": True}, mem_size=64 << 20)
    yield n.topo, n.link, n.peer, n.peer_mac, n.dev, n.guest
    n.close()


def test_switching_datapaths_under_bidirectional_traffic_loses_duplicates_and_reorders_nothing(net):
    topo, link, peer, peer_mac, dev, guest = net
    results: dict = {}
    errors: list = []

    def run(name, fn):
        try:
            results[name] = fn()
        except Exception as e:  # re-raised below with its thread's name
            errors.append((name, e))

    template = packet.tagged_frame(0, 128, peer_mac, link.mac)
    threads = [
        threading.Thread(target=run, args=("peer_rx", lambda: peer.recv_tagged(COUNT, timeout=5.0))),
        threading.Thread(target=run, args=("guest_rx", lambda: guest.receive_count(
            COUNT, timeout=5.0, seq_offset=14, verify=True))),
        threading.Thread(target=run, args=("peer_tx", lambda: peer.send_tagged(
            COUNT, 128, link.mac, peer_mac, pace_ns=PACE_NS))),
        threading.Thread(target=run, args=("guest_tx", lambda: guest.flood(
            template, COUNT, batch=8, tagged=True, timeout=10.0))),
    ]
    for t in threads:
        t.start()
    switches = 0
    expected_time = COUNT * PACE_NS / 1e9
    for i in range(SWITCHES):
        time.sleep(expected_time / (SWITCHES + 2))
        dev.switch_datapath("vhost" if dev.datapath_name == "user" else "user")
        switches += 1
    for t in threads:
        t.join()
    assert not errors, errors
    assert switches == SWITCHES

    got, out_of_order, bad = results["guest_rx"]
    assert results["peer_tx"]["sent"] == COUNT
    assert (got, out_of_order, bad) == (COUNT, 0, 0), dev.stats()

    rx = results["peer_rx"]
    assert results["guest_tx"] == COUNT
    assert rx["received"] == COUNT and rx["bad"] == 0, rx
    assert rx["out_of_order"] == 0 and rx["duplicates"] == 0 and rx["missing"] == 0, rx
    assert dev.stats()["drops"].get("rx_stopped", 0) == 0
