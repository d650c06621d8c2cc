"""``vnetbe bench``: userspace vs vhost datapath, side by side with the raw write/read loop baseline.

Every configuration runs ``--repeat`` times; the table shows the median with min..max, and the
``--json`` output follows the shape iperf3 -J made familiar (start / results / baseline).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

from .errors import NotRoot, SetupError


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("bench", help="measure TX/RX throughput of the datapaths against the raw baseline",
                       description=__doc__)
    p.add_argument("--datapath", default="user", help="comma list of user,vhost (default: user; vhost needs "
                   "/dev/vhost-net: run inside 'vnetbe lab -- vnetbe bench --datapath user,vhost')")
    p.add_argument("--scenario", default="tx,rx", help="comma list of tx,rx (default both)")
    p.add_argument("--sizes", default="64,1500", help="frame sizes in bytes, comma list (default 64,1500)")
    p.add_argument("--count", type=int, default=200_000, help="frames per run (default 200000)")
    p.add_argument("--repeat", type=int, default=5, help="runs per configuration; the median is reported")
    p.add_argument("--queue-size", type=int, default=256)
    p.add_argument("--no-event-idx", action="store_true", help="negotiate without VIRTIO_RING_F_EVENT_IDX")
    p.add_argument("--busyloop-us", type=int, default=0, help="vhost busy polling (VHOST_SET_VRING_BUSYLOOP_TIMEOUT)")
    p.add_argument("--no-baseline", action="store_true", help="skip the raw write/read loop")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    p.add_argument("--tag", default="B", help="name tag of the throwaway topology (interfaces vnb<tag>*)")
    p.set_defaults(func=run)
    return p


def _list(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def _progress(msg: str) -> None:
    if sys.stderr.isatty():
        print(f"\r\033[K{msg}", end="", file=sys.stderr, flush=True)


def _start_info() -> dict:
    return {"host": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "vhost_net": os.path.exists("/dev/vhost-net")}


def run(args) -> int:
    if os.geteuid() != 0:
        raise NotRoot("not running as root: the benchmark creates a namespace, a veth and a macvtap; run with sudo")
    from .datapath import DATAPATHS
    from .scenarios import BenchTopology, summarize

    datapaths = _list(args.datapath)
    for d in datapaths:
        if d not in DATAPATHS:
            raise SetupError(f"unknown datapath {d!r}: choose from {', '.join(DATAPATHS)}")
    if "vhost" in datapaths and not os.path.exists("/dev/vhost-net"):
        raise SetupError("/dev/vhost-net is missing on this host (no vhost_net module): run the vhost path in the "
                         "kernel lab: vnetbe lab -- vnetbe bench --datapath user,vhost")
    scenarios = _list(args.scenario)
    sizes = [int(s) for s in _list(args.sizes)]
    results, baseline = [], []
    with BenchTopology(args.tag) as bt:
        for scen in scenarios:
            for size in sizes:
                if not args.no_baseline:
                    runs = []
                    for i in range(args.repeat):
                        _progress(f"raw {scen} {size}B run {i + 1}/{args.repeat}")
                        runs.append(bt.raw_tx(size, args.count) if scen == "tx" else bt.raw_rx(size, args.count))
                    baseline.append(summarize(runs))
                for dp in datapaths:
                    runs = []
                    for i in range(args.repeat):
                        _progress(f"{dp} {scen} {size}B run {i + 1}/{args.repeat}")
                        fn = bt.tx if scen == "tx" else bt.rx
                        runs.append(fn(dp, size, args.count, queue_size=args.queue_size,
                                       event_idx=not args.no_event_idx, busyloop_us=args.busyloop_us))
                    results.append(summarize(runs))
    _progress("")
    doc = {"start": {**_start_info(), "count": args.count, "repeat": args.repeat, "queue_size": args.queue_size,
                     "event_idx": not args.no_event_idx}, "results": results, "baseline": baseline}
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        print()
    else:
        print(format_table(doc))
    return 0


def format_table(doc: dict) -> str:
    base = {(b["scenario"], b["size"]): b for b in doc["baseline"]}
    s = doc["start"]
    lines = [f"vnetbe bench on {s['host']} (kernel {s['kernel']}, {s['cpus']} cpus), "
             f"{s['count']} frames x {s['repeat']} runs, median [min..max]",
             f"{'path':6} {'scen':4} {'size':>6} {'kpps':>8} {'[min..max]':>17} {'Gbit/s':>7} {'vs raw':>7} "
             f"{'sys/pkt':>7} {'kick/pkt':>8} {'irq/pkt':>8} {'wake/pkt':>8} {'cpu ns/pkt':>10}"]

    def row(r: dict, ratio: str) -> str:
        pp = r["per_packet"]
        return (f"{r['datapath']:6} {r['scenario']:4} {r['size']:>6} {r['pps'] / 1e3:8.1f} "
                f"{'[' + format(r['pps_min'] / 1e3, '.0f') + '..' + format(r['pps_max'] / 1e3, '.0f') + ']':>17} "
                f"{r['gbps']:7.3f} {ratio:>7} {pp.get('syscalls', 0):7.3f} {pp.get('kicks', 0):8.4f} "
                f"{pp.get('interrupts', 0):8.4f} {pp.get('wakeups', 0):8.4f} {pp.get('cpu_ns', 0):10.0f}")

    keys = sorted({(r["scenario"], r["size"]) for r in doc["results"] + doc["baseline"]})
    for k in keys:
        b = base.get(k)
        if b:
            lines.append(row(b, "1.00"))
        for r in doc["results"]:
            if (r["scenario"], r["size"]) == k:
                ratio = f"{r['pps'] / b['pps']:.2f}" if b and b["pps"] else "-"
                lines.append(row(r, ratio))
    return "\n".join(lines)
