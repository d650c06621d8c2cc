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
