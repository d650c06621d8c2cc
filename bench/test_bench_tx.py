"""TX at 64 B: the userspace datapath side by side with the raw write loop, in the same session.

Each round moves ``count`` frames through a device that stays up between rounds (the device's setup
is not timed); ``extra_info`` holds pps and ``ratio_vs_raw`` (target: >= 0.90 for the user path)."""
from __future__ import annotations

import pytest

from conftest import DATAPATHS, run_rounds

SIZE = 64


def test_tx_raw(benchmark, bt, count, same_run):
    info, _ = run_rounds(benchmark, "tx", SIZE, lambda: bt.raw_tx(SIZE, count))
    same_run[("tx", SIZE)] = info["pps"]
    assert info["pps"] > 0


@pytest.mark.parametrize("datapath", DATAPATHS)
def test_tx_device(benchmark, bt, count, same_run, datapath):
    with bt.guest(datapath) as (dev, guest):
        info, runs = run_rounds(benchmark, "tx", SIZE,
                                lambda: bt.tx_run(dev, guest, SIZE, count, count_delivered=False),
                                baseline=same_run.get(("tx", SIZE)))
    assert info["pps"] > 0 and all(r.offered == count for r in runs)
