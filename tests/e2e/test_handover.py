"""Live hand-over between the datapaths (user, uring, vhost-net) while traffic flows both ways.

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
from vnbtest.wait import wait_for

pytestmark = [pytest.mark.root]

# Each datapath hands over to and takes over from every other: vhost alternates with user and uring.
CYCLES = [
    pytest.param(("uring", "user"), id="user-uring", marks=pytest.mark.uring),
    pytest.param(("vhost", "uring", "vhost", "user"), id="user-vhost-uring", marks=pytest.mark.vhost),
]

# Inside the software-emulated lab everything runs ~10x slower: keep rates modest so that only the
# hand-over, not an overloaded veth backlog, could lose frames.
IN_LAB = bool(os.environ.get("VNETBE_LAB"))
SWITCHES = 10
PER_PHASE = 4                            # chunks per direction between two switches
CHUNKS = PER_PHASE * (SWITCHES + 2)      # each direction sends its frames in this many numbered chunks
COUNT = CHUNKS * (150 if IN_LAB else 1000)
PACE_NS = 400_000 if IN_LAB else 50_000


@pytest.fixture
def net(tag):
    n = Net(tag, "user", mtu=1500, peer_kw={"rx_ring": True}, mem_size=64 << 20)
    yield n.topo, n.link, n.peer, n.peer_mac, n.dev, n.guest
    n.close()


@pytest.mark.parametrize("cycle", CYCLES)
def test_switching_datapaths_under_bidirectional_traffic_loses_duplicates_and_reorders_nothing(net, cycle):
    topo, link, peer, peer_mac, dev, guest = net
    results: dict = {}
    errors: list = []

    def run(name, fn):
        try:
            results[name] = fn()
        except Exception as e:  # re-raised below with its thread's name
            errors.append((name, e))

    expected_time = COUNT * PACE_NS / 1e9
    chunk = COUNT // CHUNKS
    template = packet.tagged_frame(0, 128, peer_mac, link.mac)
    switched = [0]   # switches done

    # Traffic runs in phases of PER_PHASE chunks a direction. Phase j+1 may start once switch j-1 is
    # done and marked, and switch j waits until both directions are half way through phase j+1: so
    # every switch lands while frames flow both ways, and frames move both ways between every two
    # marks (the last phase only after the last switch), however fast one direction runs ahead.
    def may_send(k: int) -> None:
        phase = k // PER_PHASE
        assert wait_for(lambda: switched[0] >= phase - 1, timeout=60), (k, switched, dev.stats())

    def guest_tx() -> int:
        sent, t0 = 0, time.monotonic()
        for k in range(CHUNKS):
            may_send(k)
            sent += guest.flood(template, chunk, batch=8, tagged=True, first_seq=k * chunk, timeout=10.0)
            time.sleep(max(t0 + (k + 1) * expected_time / CHUNKS - time.monotonic(), 0))
        return sent

    def peer_tx() -> dict:
        out = {"sent": 0}
        for k in range(CHUNKS):
            may_send(k)
            out["sent"] += peer.send_tagged(chunk, 128, link.mac, peer_mac, pace_ns=PACE_NS,
                                            first_seq=k * chunk)["sent"]
        return out

    threads = [
        threading.Thread(target=run, args=("peer_rx", lambda: peer.recv_tagged(COUNT, timeout=10.0))),
        threading.Thread(target=run, args=("guest_rx", lambda: guest.receive_count(
            COUNT, timeout=10.0, seq_offset=14, verify=True))),
        threading.Thread(target=run, args=("peer_tx", peer_tx)),
        threading.Thread(target=run, args=("guest_tx", guest_tx)),
    ]
    for t in threads:
        t.start()
    marks = [(dev.stats()["tx_frames"], dev.stats()["rx_frames"])]
    try:
        for j in range(SWITCHES):
            due = ((j + 1) * PER_PHASE + PER_PHASE // 2) * chunk

            def moved() -> bool:
                s = dev.stats()
                return min(s["tx_frames"], s["rx_frames"]) >= due
            assert wait_for(moved, timeout=60), f"traffic stalled before switch {j}: {dev.stats()}"
            dev.switch_datapath(cycle[j % len(cycle)])
            s = dev.stats()
            marks.append((s["tx_frames"], s["rx_frames"]))
            switched[0] += 1   # after the mark: the next phase's frames all fall after it
    finally:
        switched[0] = SWITCHES   # a failed switch must not leave the senders waiting
        for t in threads:
            t.join()
    assert not errors, errors
    s = dev.stats()
    marks.append((s["tx_frames"], s["rx_frames"]))
    # The gates above make frames move both ways in every interval; this checks that the device's
    # counters (summed over the datapaths) see it so: each datapath counted the frames it moved.
    for k, ((tx0, rx0), (tx1, rx1)) in enumerate(zip(marks, marks[1:])):
        assert tx1 > tx0 and rx1 > rx0, f"no {'TX' if tx1 <= tx0 else 'RX'} frames around switch {k}: {marks}"

    got, out_of_order, bad = results["guest_rx"]
    assert results["peer_tx"]["sent"] == COUNT
    assert (got, out_of_order, bad) == (COUNT, 0, 0), dev.stats()

    rx = results["peer_rx"]
    assert results["guest_tx"] == CHUNKS * chunk == COUNT
    assert rx["received"] == COUNT and rx["bad"] == 0, rx
    assert rx["out_of_order"] == 0 and rx["duplicates"] == 0 and rx["missing"] == 0, rx
    assert dev.stats()["drops"].get("rx_stopped", 0) == 0
    # The device's own counters, summed over ten datapaths, count every frame once: a frame queued in
    # the macvtap at a switch is counted by whichever datapath puts it in a guest buffer.
    s = dev.stats()
    assert (s["tx_frames"], s["rx_frames"], s["rx_bytes"]) == (COUNT, COUNT, 128 * COUNT), s
