"""Long runs: every frame of 10^7 (VNETBE_LOAD_FRAMES) through TX and through RX, on each datapath, is
delivered (the peer checks every byte of every TX frame) or counted as a drop with its reason, and
nothing is left unaccounted. Marked slow: tests/run.sh runs them in a step of their own, the vhost
ones inside the kernel lab. The accounting is the bench's own (vnetbe/tools/bench/delivery.py)."""
from __future__ import annotations

import json
import os

import pytest

from vnetbe.tools.bench import BenchTopology
from vnetbe.tools.bench.delivery import UNACCOUNTED

pytestmark = [pytest.mark.root, pytest.mark.slow]

LOAD = int(os.environ.get("VNETBE_LOAD_FRAMES", 10_000_000))


@pytest.mark.parametrize("direction", ["tx", "rx"])
def test_every_frame_of_a_long_run_is_delivered_or_dropped_by_a_named_reason(tag, datapath, direction):
    with BenchTopology(tag) as bt:
        r = bt.run(direction, datapath, 64, LOAD)
    print(json.dumps({"datapath": datapath, "direction": direction, "offered": r.offered, "delivered": r.frames,
                      "drops": r.drops, "kpps": round(r.pps / 1e3, 1), "seconds": round(r.seconds, 1)}))
    assert r.offered == LOAD
    assert r.frames + sum(r.drops.values()) == LOAD, r.drops
    assert UNACCOUNTED not in r.drops and "damaged" not in r.drops, r.drops
    if direction == "rx":
        assert r.options["out_of_order"] == 0, r.options
    # The peer floods RX unpaced: the macvtap's queue may overflow (counted); most frames still arrive.
    assert r.frames >= 0.5 * LOAD, r
