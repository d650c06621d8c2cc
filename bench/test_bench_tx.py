"""TX at 64 B: the userspace datapath side by side with the raw write loop, in the same session.

Each round moves ``count`` frames through a device that stays up between rounds (the device's setup
is not timed); pps counts frames delivered at the peer; ``extra_info`` holds pps and ``ratio_vs_raw``
(target: >= 0.90 for the user path)."""
from __future__ import annotations

import pytest

from benchutil import DATAPATHS, assert_delivered, run_rounds

SIZE = 64


def test_tx_raw(benchmark, bt, count, same_run):
    info, runs = run_rounds(benchmark, "tx", SIZE, lambda: bt.raw_tx(SIZE, count))
    same_run[("tx", SIZE)] = info["pps"]
    assert_delivered(runs, at_least=0.99)


@pytest.mark.parametrize("datapath", DATAPATHS)
def test_tx_device(benchmark, bt, count, same_run, datapath):
    with bt.guest(datapath) as (dev, guest):
        info, runs = run_rounds(benchmark, "tx", SIZE,
                                lambda: bt.tx_run(dev, guest, SIZE, count),
                                baseline=same_run.get(("tx", SIZE)))
    # A frame that reached the peer was checked there byte for byte; the rest are accounted by reason.
    assert_delivered(runs, at_least=0.99)
    assert all(r.offered == count for r in runs)
    for r in runs:   # the EVENT_IDX target under a saturating flood
        assert r.per_packet["kicks"] <= 1 / 32 and r.per_packet["interrupts"] <= 1 / 32, r


@pytest.mark.parametrize("datapath", DATAPATHS)
def test_tx_two_queue_pairs(benchmark, bt, count, datapath):
    """Two queue pairs, each pair's guest flooding half the sequence numbers from a thread of its own
    (vnetbe bench --queues 2): every frame arrives or is dropped by a named reason, each pair's datapath
    took its half, and each pair's thread (vhost: worker) has its own CPU figure."""
    with bt.guest_pairs(datapath, 2) as (dev, guests):
        _, runs = run_rounds(benchmark, "tx", SIZE, lambda: bt.tx_pairs_run(dev, guests, SIZE, count))
    assert_delivered(runs, at_least=0.99)
    for r in runs:
        took = r.options["pair_tx_frames"]
        assert r.options["queues"] == 2 and took == [-(-count // 2), count - -(-count // 2)], r
        threads = {"vhost_worker", "vhost_worker_p1"} if datapath == "vhost" else {"datapath", "datapath_p1"}
        assert threads | {"guest", "guest_p1"} <= set(r.cpu_ns) and all(r.cpu_ns[t] > 0 for t in threads), r
