"""rr: request/response one frame at a time, the device beside a thread answering on the raw macvtap fd.
``extra_info`` holds p50_us and p99_us (target for the user path: p50 <= 3x the eventfd wake-up round
trip that ``vnetbe costs`` measures)."""
from __future__ import annotations

import pytest

from benchutil import DATAPATHS, run_rounds

SIZE = 64


def _n(count: int) -> int:
    return min(count, 5000)


def test_rr_raw(benchmark, bt, count, same_run):
    info, runs = run_rounds(benchmark, "rr", SIZE, lambda: bt.raw_rr(SIZE, _n(count)), warmup=False)
    same_run[("rr", SIZE)] = info["pps"]
    assert all(r.frames == _n(count) for r in runs) and info["p50_us"] > 0   # every round trip measured


@pytest.mark.parametrize("datapath", DATAPATHS)
def test_rr_device(benchmark, bt, count, same_run, datapath):
    info, runs = run_rounds(benchmark, "rr", SIZE, lambda: bt.rr(datapath, SIZE, _n(count)), warmup=False,
                            baseline=same_run.get(("rr", SIZE)))
    assert all(r.frames == _n(count) for r in runs) and info["p50_us"] > 0   # every round trip measured
