"""A Linux guest's TCP throughput through ``vnetbe serve`` (vhost-user, user datapath) against the same
guest on QEMU's own tap back end, one boot each in the same session (``vnetbe bench --frontend qemu``
prints the same table). Target (issue 10): vnetbe >= 1.0 x QEMU's tap back end, each way."""
from __future__ import annotations

from vnetbe.tools import lab
from vnetbe.tools.bench import guest_tcp


def test_guest_tcp_through_vnetbe_serve_and_qemu_tap(benchmark):
    doc = benchmark.pedantic(lambda: guest_tcp.run(lab.run, rounds=3, tag="Q"), rounds=1, iterations=1)
    benchmark.extra_info.update({"guest_tcp": doc})
    print("\n" + guest_tcp.format_table(doc))
    for row in doc["rows"]:
        assert row["failed"] == 0 and row["mbit_median"] > 0, row
