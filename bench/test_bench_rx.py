"""RX at 64 and 1500 B: the peer floods, the guest receives; beside the raw read loop of the same session."""
from __future__ import annotations

import pytest

from conftest import DATAPATHS, ROUNDS, record

SIZES = [64, 1500]


@pytest.mark.parametrize("size", SIZES)
def test_rx_raw(benchmark, bt, count, same_run, size):
    runs = []
    benchmark.group = f"rx {size} B"
    benchmark.pedantic(lambda: runs.append(bt.raw_rx(size, count)), rounds=ROUNDS, iterations=1, warmup_rounds=1)
    info = record(benchmark, runs[1:])
    same_run[("rx", size)] = info["pps"]
    assert info["pps"] > 0


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("datapath", DATAPATHS)
def test_rx_device(benchmark, bt, count, same_run, datapath, size):
    runs = []
    benchmark.group = f"rx {size} B"
    with bt.guest(datapath) as (dev, guest):
        benchmark.pedantic(lambda: runs.append(bt.rx_run(dev, guest, size, count)), rounds=ROUNDS, iterations=1,
                           warmup_rounds=1)
    info = record(benchmark, runs[1:], same_run.get(("rx", size)))
    assert info["pps"] > 0
