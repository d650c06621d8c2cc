"""Traffic scenarios shared by ``vnetbe bench``, the pytest-benchmark files in bench/ and the tests.

A ``BenchTopology`` is a throwaway namespace with a veth whose root end is the parent of a
bridge-mode macvtap, and whose other end (inside the namespace) is "the network": a Peer that sends
and counts frames. Each scenario returns a ``RunResult`` with rates, per-packet counts and the CPU
time of every thread involved, measured in the same run as its baseline.
"""
from __future__ import annotations

import statistics
import threading
import time
from dataclasses import asdict, dataclass, field

from . import packet, spec
from ._native import ffi, lib
from .cputime import CpuMeter, current_tid, kernel_threads_cpu_ns
from .device import VirtioNet
from .guest import GuestDriver
from .memory import GuestMemory
from .peer import Peer
from .topology import Topology

HDR = spec.NET_HDR_LEN
TAG = packet.TAG_HDR_LEN


@dataclass
class RunResult:
    datapath: str              # "user", "vhost" or "raw" (the baseline loop)
    scenario: str              # "tx" or "rx"
    size: int                  # Ethernet frame bytes (no FCS, no virtio header)
    frames: int                # frames moved end to end
    seconds: float
    pps: float
    gbps: float
    offered: int = 0           # frames the source tried to move
    per_packet: dict = field(default_factory=dict)
    cpu_ns: dict = field(default_factory=dict)   # thread -> CPU ns per packet
    drops: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def _rate(frames: int, size: int, seconds: float) -> tuple[float, float]:
    if seconds <= 0:
        return 0.0, 0.0
    return frames / seconds, frames * size * 8 / seconds / 1e9


def _ns_link_stats(topo: Topology, ifname: str) -> dict:
    with topo.ns.ipr() as ipr:
        msg = ipr.link("get", ifname=ifname)[0]
    return dict(msg.get_attr("IFLA_STATS64") or {})


def _per_packet(frames: int, dev_stats: dict, guest_stats: dict, cpu: dict) -> tuple[dict, dict]:
    n = max(frames, 1)
    kicks = guest_stats.get("tx_kicks", 0) + guest_stats.get("rx_kicks", 0)
    # Interrupts as the guest saw them (call eventfd reads): the one count both datapaths share,
    # since the kernel keeps no count of vhost's eventfd signals.
    irqs = guest_stats.get("tx_interrupts", 0) + guest_stats.get("rx_interrupts", 0)
    pp = {
        "syscalls": (dev_stats.get("syscalls", 0) + guest_stats.get("syscalls", 0)) / n,
        "datapath_syscalls": dev_stats.get("syscalls", 0) / n,
        "kicks": kicks / n,
        "interrupts": irqs / n,
        "wakeups": dev_stats.get("wakeups", 0) / n,
        "cpu_ns": sum(cpu.values()) / n,
    }
    return pp, {k: v / n for k, v in cpu.items()}


class BenchTopology:
    """Namespace + veth + one bridge-mode macvtap + a Peer on the far end, all named vnb<tag>*."""

    def __init__(self, tag: str = "B", mtu: int = 9000, mode: str = "bridge"):
        self.topo = Topology(tag, mtu=mtu)
        try:
            self.link = self.topo.macvtap(mode)
            self.peer = Peer(self.topo.peer, self.topo.netns)
            with self.topo.ns.ipr() as ipr:
                self.peer_mac = ipr.link("get", ifname=self.topo.peer)[0].get_attr("IFLA_ADDRESS")
        except BaseException:
            self.topo.close()
            raise

    def close(self) -> None:
        try:
            self.peer.close()
        finally:
            self.topo.close()

    def __enter__(self) -> "BenchTopology":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- devices ---
    def device(self, datapath: str, mem_size: int = 256 << 20, **kw):
        mem = GuestMemory(mem_size)
        try:
            dev = VirtioNet(mem, self.link, datapath=datapath, **kw)
        except BaseException:
            mem.close()
            raise
        return mem, dev

    def _features(self, event_idx: bool) -> int:
        f = spec.DEVICE_FEATURES
        if not event_idx:
            f &= ~spec.bit(spec.VIRTIO_RING_F_EVENT_IDX)
        return f

    # --- TX: guest -> peer ---
    def tx(self, datapath: str, size: int, count: int, *, queue_size: int = 256, event_idx: bool = True,
           busyloop_us: int = 0) -> RunResult:
        frame = packet.tagged_frame(0, size, self.peer_mac, self.link.mac)
        mem, dev = self.device(datapath, vhost_busyloop_us=busyloop_us)
        with mem, dev:
            guest = GuestDriver(dev, queue_size=queue_size, features=self._features(event_idx))
            before = _ns_link_stats(self.topo, self.topo.peer)
            meter = CpuMeter({"guest": current_tid(), **{f"datapath{i}": t for i, t in enumerate(dev.threads())}})
            kthreads0 = kernel_threads_cpu_ns("vhost-") if datapath == "vhost" else {}
            meter.start()
            t0 = time.perf_counter()
            sent = guest.flood(frame, count, seq_offset=14)
            guest.drain_tx()
            dt = time.perf_counter() - t0
            cpu = meter.stop()
            if kthreads0:
                k1 = kernel_threads_cpu_ns("vhost-")
                cpu["vhost_worker"] = sum(v - kthreads0.get(t, 0) for t, v in k1.items())
            dev_stats, guest_stats = dev.stats(), guest.stats()
            time.sleep(0.05)   # let the veth's backlog reach the peer before reading its counters
            after = _ns_link_stats(self.topo, self.topo.peer)
        delivered = after.get("rx_packets", 0) - before.get("rx_packets", 0)
        pps, gbps = _rate(sent, size, dt)
        pp, cpu_pp = _per_packet(sent, dev_stats, guest_stats, cpu)
        return RunResult(datapath, "tx", size, delivered, dt, pps, gbps, offered=sent, per_packet=pp,
                         cpu_ns=cpu_pp, drops=dev_stats.get("drops", {}),
                         options={"queue_size": queue_size, "event_idx": event_idx, "busyloop_us": busyloop_us})

    def raw_tx(self, size: int, count: int) -> RunResult:
        """Baseline: one thread write()s the same frames (zero vnet header) straight to the macvtap fd."""
        self.link.set_vnet_hdr_len(HDR)
        self.link.set_offload(0)
        buf = bytes(HDR) + packet.tagged_frame(0, size, self.peer_mac, self.link.mac)
        st = ffi.new("struct vnb_raw_stats *")
        meter = CpuMeter({"writer": current_tid()}).start()
        n = lib.vnb_raw_write_loop_ex(self.link.fd, buf, len(buf), count, st)
        cpu = meter.stop()
        dt = st.elapsed_ns / 1e9
        pps, gbps = _rate(max(n, 0), size, dt)
        return RunResult("raw", "tx", size, max(n, 0), dt, pps, gbps, offered=count,
                         per_packet={"syscalls": 1.0 + st.eagain / max(n, 1), "kicks": 0, "interrupts": 0,
                                     "wakeups": 0, "cpu_ns": cpu["writer"] / max(n, 1)},
                         cpu_ns={"writer": cpu["writer"] / max(n, 1)})

    # --- RX: peer -> guest ---
    def _send_async(self, size: int, count: int, pace_ns: int) -> tuple[threading.Thread, dict]:
        out: dict = {}

        def run() -> None:
            out["tid"] = current_tid()
            try:
                out.update(self.peer.send_tagged(count, size, self.link.mac, self.peer_mac, pace_ns=pace_ns))
            except Exception as e:  # reported by the caller
                out["error"] = e

        th = threading.Thread(target=run, name="vnetbe-peer-sender")
        th.start()
        return th, out

    def rx(self, datapath: str, size: int, count: int, *, queue_size: int = 256, event_idx: bool = True,
           busyloop_us: int = 0, pace_ns: int = 0) -> RunResult:
        mem, dev = self.device(datapath, vhost_busyloop_us=busyloop_us)
        with mem, dev:
            guest = GuestDriver(dev, queue_size=queue_size, features=self._features(event_idx))
            link0 = self.link.stats()
            meter = CpuMeter({"guest": current_tid(), **{f"datapath{i}": t for i, t in enumerate(dev.threads())}})
            kthreads0 = kernel_threads_cpu_ns("vhost-") if datapath == "vhost" else {}
            meter.start()
            t0 = time.perf_counter()
            th, sender = self._send_async(size, count, pace_ns)
            got, ooo, _ = guest.receive_count(count, timeout=0.5, seq_offset=14)
            dt = time.perf_counter() - t0
            th.join()
            cpu = meter.stop()
            if kthreads0:
                k1 = kernel_threads_cpu_ns("vhost-")
                cpu["vhost_worker"] = sum(v - kthreads0.get(t, 0) for t, v in k1.items())
            dev_stats, guest_stats = dev.stats(), guest.stats()
            link1 = self.link.stats()
        if "error" in sender:
            raise sender["error"]
        pps, gbps = _rate(got, size, dt)
        pp, cpu_pp = _per_packet(got, dev_stats, guest_stats, cpu)
        drops = dict(dev_stats.get("drops", {}))
        drops["macvtap_queue"] = (link1 - link0).rx_dropped + (link1 - link0).tx_dropped
        return RunResult(datapath, "rx", size, got, dt, pps, gbps, offered=sender.get("sent", 0),
                         per_packet=pp, cpu_ns=cpu_pp, drops=drops,
                         options={"queue_size": queue_size, "event_idx": event_idx, "busyloop_us": busyloop_us,
                                  "out_of_order": ooo})

    def raw_rx(self, size: int, count: int, pace_ns: int = 0) -> RunResult:
        """Baseline: one thread read()s frames straight from the macvtap fd while the peer sends."""
        self.link.set_vnet_hdr_len(HDR)
        buf = ffi.new("uint8_t[]", 1 << 17)
        st = ffi.new("struct vnb_raw_stats *")
        meter = CpuMeter({"reader": current_tid()}).start()
        th, sender = self._send_async(size, count, pace_ns)
        n = lib.vnb_raw_read_loop_ex(self.link.fd, buf, 1 << 17, count, 500, st)
        th.join()
        cpu = meter.stop()
        dt = st.elapsed_ns / 1e9
        pps, gbps = _rate(max(n, 0), size, dt)
        return RunResult("raw", "rx", size, max(n, 0), dt, pps, gbps, offered=sender.get("sent", 0),
                         per_packet={"syscalls": 1.0, "kicks": 0, "interrupts": 0, "wakeups": 0,
                                     "cpu_ns": cpu["reader"] / max(n, 1)},
                         cpu_ns={"reader": cpu["reader"] / max(n, 1)})


def summarize(runs: list[RunResult]) -> dict:
    """Median of repeated runs with min and max, in the shape of ``vnetbe bench --json`` results."""
    pps = [r.pps for r in runs]
    mid = sorted(runs, key=lambda r: r.pps)[len(runs) // 2]
    return {
        "datapath": mid.datapath, "scenario": mid.scenario, "size": mid.size,
        "pps": statistics.median(pps), "gbps": statistics.median([r.gbps for r in runs]),
        "pps_min": min(pps), "pps_max": max(pps), "runs": len(runs),
        "frames": mid.frames, "offered": mid.offered,
        "per_packet": mid.per_packet, "cpu_ns_per_packet": mid.cpu_ns, "drops": mid.drops,
        "options": mid.options,
    }
