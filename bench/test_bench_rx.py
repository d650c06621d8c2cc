"""RX at 64 and 1500 B: the peer floods, the guest receives; beside the raw read loop of the same session."""
from __future__ import annotations

import pytest

from benchutil import DATAPATHS, assert_delivered, run_rounds

SIZES = [64, 1500]


@pytest.mark.parametrize("size", SIZES)
def test_rx_raw(benchmark, bt, count, same_run, size):
    info, runs = run_rounds(benchmark, "rx", size, lambda: bt.raw_rx(size, count))
    same_run[("rx", size)] = info["pps"]
    assert_delivered(runs)   # an unpaced peer may overrun the path: what it loses is counted


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("datapath", DATAPATHS)
def test_rx_device(benchmark, bt, count, same_run, datapath, size):
    with bt.guest(datapath) as (dev, guest):
        info, runs = run_rounds(benchmark, "rx", size, lambda: bt.rx_run(dev, guest, size, count),
                                baseline=same_run.get(("rx", size)))
    assert_delivered(runs)
    assert all(r.options["out_of_order"] == 0 for r in runs)
