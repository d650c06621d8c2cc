"""testpmd (DPDK virtio-user) at 64 B through each back end in one session: ``vnetbe serve`` on each
datapath here, DPDK's own vhost-user back end forwarding to a tap, and testpmd on /dev/vhost-net where
it exists (``vnetbe lab -- python3 -m pytest bench/test_bench_testpmd.py``). ``extra_info`` holds the
document ``vnetbe bench --frontend testpmd`` prints (rates of frames that arrived, offered, lost).
Both ring formats (virtio-user packed_vq=1 for packed; the back ends on vhost-net run split only).
Targets (issue 10): vnetbe user >= 1.0 x dpdk-vhost; vnetbe vhost >= 0.98 x kernel; (issue 21) with
packed rings, vnetbe >= dpdk-vhost."""
from __future__ import annotations

from benchutil import DATAPATHS

from vnetbe.tools.bench import testpmd


def test_testpmd_through_each_backend(benchmark):
    backends = ["vnetbe-" + d for d in DATAPATHS] + ["dpdk-vhost", "kernel"]
    doc = benchmark.pedantic(lambda: testpmd.run(backends, seconds=3.0, repeat=3, tag="P",
                                                                  rings=("split", "packed")), rounds=1, iterations=1)
    benchmark.extra_info.update({"testpmd": doc})
    print("\n" + testpmd.format_table(doc))
    for row in doc["rows"]:
        assert row["offered"] == row["delivered"] + row["lost"]
        assert row["delivered"] > 0, row
    assert {r["ring"] for r in doc["rows"]} == {"split", "packed"}


def test_testpmd_with_two_queue_pairs_sends_on_both(benchmark):
    """queues=2 (virtio-user cq=1 --txq=2 --rxq=2) through each back end, split rings: what arrives is
    accounted for, and vnetbe's two pairs each carried testpmd's TX (issue 20)."""
    backends = ["vnetbe-" + d for d in DATAPATHS] + ["dpdk-vhost"]
    doc = benchmark.pedantic(lambda: testpmd.run(backends, seconds=2.0, repeat=1, tag="Q", queues=(2,)),
                             rounds=1, iterations=1)
    benchmark.extra_info.update({"testpmd_queues": doc})
    print("\n" + testpmd.format_table(doc))
    for row in doc["rows"]:
        assert row["queues"] == 2 and row["offered"] == row["delivered"] + row["lost"]
        assert row["delivered"] > 0, row
        if row["backend"].startswith("vnetbe-") and row["mode"] == "tx":
            assert row["pair_frames"] and len(row["pair_frames"]) == 2 and min(row["pair_frames"]) > 0, row
