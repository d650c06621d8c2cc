"""vm2vm: guest A floods guest B through two bridge-mode macvtaps of one parent (each round sets up
both guests, which the round's time includes; ``extra_info["pps"]`` is the flood's own rate)."""
from __future__ import annotations

import pytest

from benchutil import DATAPATHS, assert_delivered, run_rounds


@pytest.mark.parametrize("size", [64, 1500])
@pytest.mark.parametrize("datapath", DATAPATHS)
def test_vm2vm(benchmark, bt, count, datapath, size):
    info, runs = run_rounds(benchmark, "vm2vm", size, lambda: bt.vm2vm(datapath, size, count), warmup=False)
    assert_delivered(runs)   # guest B checked every byte: a damaged frame would be counted "damaged"
    assert all("damaged" not in r.drops for r in runs)
