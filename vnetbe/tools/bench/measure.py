"""Measuring one run: its result record, the per-packet arithmetic, the CPU and sleep meter over the
threads involved, and the median of repeated runs (``summarize``)."""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field

from pyroute2 import IPRoute

from ...cputime import current_tid, thread_cpu_ns, voluntary_switches
from ...device import VirtioNet
from ..noise import cv
from ..results import size_label
from ..topology import Topology


@dataclass
class RunResult:
    datapath: str              # "user", "uring", "uring-sqpoll", "vhost" or "raw" (the baseline loop)
    scenario: str              # "tx", "rx", "vm2vm" or "rr"
    size: int                  # Ethernet frame bytes (no FCS, no virtio header)
    frames: int                # frames moved end to end (rr: round trips)
    seconds: float
    pps: float                 # frames/s (64k: super-frames/s; rr: round trips/s)
    gbps: float                # frame bits/s (64k: TCP payload; rr: both directions)
    offered: int = 0           # frames the source tried to move
    per_packet: dict = field(default_factory=dict)
    cpu_ns: dict = field(default_factory=dict)   # thread -> CPU ns per packet
    drops: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    latency: dict = field(default_factory=dict)  # rr: p50_us, p99_us, min_us, max_us, mean_us

    def as_dict(self) -> dict:
        return asdict(self)


def rate(frames: int, size: int, seconds: float, bits_per_frame: float | None = None) -> tuple[float, float]:
    if seconds <= 0:
        return 0.0, 0.0
    bits = size * 8 if bits_per_frame is None else bits_per_frame
    return frames / seconds, frames * bits / seconds / 1e9


def delta(after: dict, before: dict) -> dict:
    """after - before for every number (nested dicts too); other values as in ``after``."""
    out = {}
    for k, v in after.items():
        b = before.get(k)
        if isinstance(v, dict):
            out[k] = delta(v, b if isinstance(b, dict) else {})
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = v - (b if isinstance(b, (int, float)) and not isinstance(b, bool) else 0)
        else:
            out[k] = v
    return out


def add(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict):
            out[k] = add(out.get(k) or {}, v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = out.get(k, 0) + v
        else:
            out.setdefault(k, v)
    return out


def _stats64(ipr, ifname: str) -> dict:
    return dict(ipr.link("get", ifname=ifname)[0].get_attr("IFLA_STATS64") or {})


def ns_link_stats(topo: Topology, ifname: str) -> dict:
    """IFLA_STATS64 of an interface inside the topology's namespace."""
    with topo.ns.ipr() as ipr:
        return _stats64(ipr, ifname)


def root_link_stats(ifname: str) -> dict:
    """IFLA_STATS64 of an interface in this process's namespace (the veth's root end)."""
    with IPRoute() as ipr:
        return _stats64(ipr, ifname)


def per_packet(frames: int, dev_stats: dict, guest_stats: dict, cpu: dict,
                peer_syscalls: float = 0, sleeps: dict | None = None) -> tuple[dict, dict]:
    """Per-packet counts. ``sleeps`` (from Meter): device_sleeps (datapath thread, vhost worker or raw
    loop) and guest_sleeps (the guest's thread), the wake-ups that happened; ``wakeups`` and
    ``interrupts`` count signals, some of which found their thread still awake."""
    n = max(frames, 1)
    kicks = guest_stats.get("tx_kicks", 0) + guest_stats.get("rx_kicks", 0)
    # Interrupts as the guest saw them (call eventfd reads): the one count both datapaths share,
    # since the kernel keeps no count of vhost's eventfd signals.
    irqs = guest_stats.get("tx_interrupts", 0) + guest_stats.get("rx_interrupts", 0)
    dsys, gsys = dev_stats.get("syscalls", 0), guest_stats.get("syscalls", 0)
    pp = {
        "syscalls": (dsys + gsys + peer_syscalls) / n,
        "datapath_syscalls": dsys / n,
        "guest_syscalls": gsys / n,
        "peer_syscalls": peer_syscalls / n,
        "kicks": kicks / n,
        "interrupts": irqs / n,
        "wakeups": dev_stats.get("wakeups", 0) / n,
        "cpu_ns": sum(cpu.values()) / n,
    }
    if sleeps is not None:
        pp["device_sleeps"] = sleeps.get("device", 0) / n
        pp["guest_sleeps"] = sleeps.get("guest", 0) / n
    return pp, {k: v / n for k, v in cpu.items()}


class Meter:
    """CPU ns over one run of: the calling thread (``self_name``), other threads of this process by
    name, and the vhost workers of ``devs`` (kernel threads before Linux 6.4, our own tasks after).
    ``sleeps`` after stop(): times the device side (named threads and workers) and the calling thread
    went to sleep, i.e. the wake-ups that really happened."""

    def __init__(self, self_name: str | None, named: dict[str, int], devs: list[VirtioNet] = ()):
        self.self_name = self_name
        self.named = {k: t for k, t in named.items() if t}
        # (label, tid): pair 0's workers are "vhost_worker", pair p's "vhost_worker_p<p>".
        self.workers = sorted({("vhost_worker" if p == 0 else f"vhost_worker_p{p}", t)
                               for d in devs if d.datapath_name == "vhost"
                               for p, ts in d.pair_threads().items() for t in ts})
        self._t0: dict = {}
        self._s0: dict = {}
        self.sleeps = {"device": 0, "self": 0}

    def _read(self) -> dict:
        out = {k: thread_cpu_ns(t) for k, t in self.named.items()}
        out.update({("w", lab, t): thread_cpu_ns(t, t) for lab, t in self.workers})
        if self.self_name:
            out[self.self_name] = time.thread_time_ns()
        return out

    def _read_sleeps(self) -> dict:
        return {"device": sum(voluntary_switches(t) for t in self.named.values())
                + sum(voluntary_switches(t, t) for _, t in self.workers),
                "self": voluntary_switches(current_tid())}

    def start(self) -> "Meter":
        self._s0 = self._read_sleeps()
        self._t0 = self._read()
        return self

    def stop(self) -> dict[str, int]:
        now = self._read()
        s1 = self._read_sleeps()
        self.sleeps = {k: s1[k] - self._s0.get(k, 0) for k in s1}
        out = {k: v - self._t0.get(k, 0) for k, v in now.items() if not isinstance(k, tuple)}
        for k, v in now.items():
            if isinstance(k, tuple):
                out[k[1]] = out.get(k[1], 0) + v - self._t0.get(k, 0)
        return out


def dev_sleeps(meter: Meter) -> dict:
    """A device run: the datapath thread or vhost worker, and the guest on the calling thread."""
    return {"device": meter.sleeps["device"], "guest": meter.sleeps["self"]}


def raw_sleeps(meter: Meter) -> dict:
    """A raw loop: the loop itself, on the calling thread, stands where the device would."""
    return {"device": meter.sleeps["self"], "guest": 0}


def _kernel_role(tid: int) -> str:
    """What a kernel thread of this process does for a uring datapath, from its name."""
    try:
        with open(f"/proc/self/task/{tid}/comm") as f:
            comm = f.read().strip()
    except OSError:
        return "gone"
    return "sqpoll" if comm.startswith("iou-sqp-") else "io_wq" if comm.startswith("iou-wrk-") else comm


def dev_threads(devs: dict[str, VirtioNet]) -> dict[str, int]:
    """name -> tid of the userspace datapath threads ("datapath", or "datapath_a"/"datapath_b"; pair p
    of a multiqueue device "datapath_p<p>"), and of the kernel threads working for a uring datapath
    ("datapath_sqpoll", "datapath_io_wq")."""
    out = {}
    for name, dev in devs.items():
        if dev.datapath_name == "vhost":
            continue
        for p, ts in dev.pair_threads().items():
            base = name if p == 0 else f"{name}_p{p}"
            for i, t in enumerate(ts):
                out[base if i == 0 else f"{base}_{_kernel_role(t)}{i if i > 1 else ''}"] = t
    return out


def summarize(runs: list[RunResult]) -> dict:
    """Median of repeated runs with min and max, in the shape of ``vnetbe bench --json`` results.
    The per-packet counts and per-thread CPU are those of the median run (by pps)."""
    pps = [r.pps for r in runs]
    mid = sorted(runs, key=lambda r: r.pps)[len(runs) // 2]
    out = {
        "datapath": mid.datapath, "scenario": mid.scenario, "size": mid.size, "size_label": size_label(mid),
        "pps": statistics.median(pps), "gbps": statistics.median([r.gbps for r in runs]),
        "pps_min": min(pps), "pps_max": max(pps), "runs": len(runs),
        "pps_runs": pps, "pps_cv": cv(pps),
        "frames": mid.frames, "offered": mid.offered,
        "per_packet": mid.per_packet, "cpu_ns_per_packet": mid.cpu_ns, "drops": mid.drops,
        "options": mid.options,
    }
    if mid.scenario == "rr":
        for k in ("p50_us", "p99_us"):
            xs = [r.latency[k] for r in runs]
            out[k] = statistics.median(xs)
            out[k + "_min"], out[k + "_max"] = min(xs), max(xs)
        out["latency"] = mid.latency
    return out
