"""TX at 64 B: the userspace datapath side by side with the raw write loop, in the same session.

Each round moves ``count`` frames through a device that stays up between rounds (the device's setup
is not timed); ``extra_info`` holds pps and ``ratio_vs_raw`` (target: >= 0.90 for the user path)."""
from __future__ import annotations

import pytest

from conftest import DATAPATHS, ROUNDS, record

SIZE = 64


def test_tx_raw(benchmark, bt, count, same_run):
    runs = []
    benchmark.group = f"tx {SIZE} B"
    benchmark.pedantic(lambda: runs.append(bt.raw_tx(SIZE, count)), rounds=ROUNDS, iterations=1, warmup_rounds=1)
    info = record(benchmark, runs[1:])
    same_run[("tx", SIZE)] = info["pps"]
    assert info["pps"] > 0


@pytest.mark.parametrize("datapath", DATAPATHS)
def test_tx_device(benchmark, bt, count, same_run, datapath):
    runs = []
    benchmark.group = f"tx {SIZE} B"
    with bt.guest(datapath) as (dev, guest):
        benchmark.pedantic(lambda: runs.append(bt.tx_run(dev, guest, SIZE, count, count_delivered=False)), rounds=ROUNDS, iterations=1,
                           warmup_rounds=1)
    info = record(benchmark, runs[1:], same_run.get(("tx", SIZE)))
    assert info["pps"] > 0 and all(r.offered == count for r in runs)
