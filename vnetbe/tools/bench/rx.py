"""RX, peer -> guest, and rxsat (RX under saturating load); baseline ``raw_rx``, one thread read()s
from the macvtap fd. Functions of ``BenchTopology`` (its methods ``rx``, ``rx_run``, ``rxsat``, ``raw_rx``)."""
from __future__ import annotations

import time

from ... import spec
from ...device import VirtioNet
from ...errors import ConfigError
from .._native import ffi, lib
from ..guest import GuestDriver
from ..results import TSO_LABEL
from .delivery import RX_KERNEL, account, kernel_counters, kernel_drops
from .frames import HDR, RX_IDLE_S, SAT_SENDERS, receive_all
from .pinning import pinned
from .measure import Meter, RunResult, delta, dev_sleeps, dev_threads, per_packet, rate, raw_sleeps


def rx_run(self, dev: VirtioNet, guest: GuestDriver, size: int, count: int, pace_ns: int = 0,
           senders: int = 1) -> RunResult:
    if size == TSO_LABEL:
        raise ConfigError("rx at 64k: the peer (an AF_PACKET socket) cannot send frames above its MTU")
    kernel0 = kernel_counters(self, dev.link)
    dev0, g0 = dev.stats(), guest.stats()
    meter = Meter("guest", dev_threads({"datapath": dev}), [dev]).start()
    t0 = time.perf_counter()
    finish = self._send_async(size, count, pace_ns, senders=senders)
    got, ooo, _, t_last = receive_all(guest, count, seq_offset=14)
    sender = finish()
    cpu = meter.stop()
    cpu["peer_sender"] = sender.get("cpu_ns", 0)
    dt = t_last - t0
    dstats, gstats = delta(dev.stats(), dev0), delta(guest.stats(), g0)
    kernel = kernel_drops(kernel0, kernel_counters(self, dev.link), RX_KERNEL)
    if "error" in sender:
        raise sender["error"]
    pps, gbps = rate(got, size, dt)
    pp, cpu_pp = per_packet(got, dstats, gstats, cpu,
                             peer_syscalls=sender.get("syscalls", 0) + sender.get("retries", 0),
                             sleeps=dev_sleeps(meter))
    rx_drops = {k: v for k, v in dstats.get("drops", {}).items() if k.startswith("rx_")}   # this direction's
    drops, foreign = account(count, got, {**rx_drops, "not_sent": count - sender.get("sent", 0)}, kernel)
    # Several senders interleave their sequences: out-of-order means nothing then.
    extra = {"out_of_order": ooo} if senders == 1 else {"senders": senders}
    if foreign:
        extra["foreign_drops"] = foreign
    return RunResult(dev.datapath_name, "rx" if senders == 1 else "rxsat", size, got, dt, pps, gbps,
                     offered=count, per_packet=pp, cpu_ns=cpu_pp, drops=drops,
                     options=self._options(guest.rings[spec.RX_QUEUE][0], guest.event_idx,
                                           dev.busyloop_us, size, packed=guest.packed, **extra))

def rx(self, datapath: str, size: int, count: int, *, queue_size: int = 256, event_idx: bool = True,
       busyloop_us: int = 0, ring: str = "split", pace_ns: int = 0, senders: int = 1) -> RunResult:
    with self.guest(datapath, queue_size=queue_size, event_idx=event_idx, busyloop_us=busyloop_us,
                    ring=ring) as (dev, g):
        return self.rx_run(dev, g, size, count, pace_ns, senders)

def rxsat(self, datapath: str, size: int, count: int, **opts) -> RunResult:
    return self.rx(datapath, size, count, senders=SAT_SENDERS, **opts)

def raw_rx(self, size: int, count: int, pace_ns: int = 0, senders: int = 1) -> RunResult:
    """Baseline: one thread read()s frames straight from the macvtap fd while the peer sends."""
    if size == TSO_LABEL:
        raise ConfigError("rx at 64k: the peer (an AF_PACKET socket) cannot send frames above its MTU")
    self.link.set_vnet_hdr_len(HDR)
    buf = ffi.new("uint8_t[]", 1 << 17)
    st = ffi.new("struct vnb_raw_stats *")
    kernel0 = kernel_counters(self, self.link)
    meter = Meter("reader", {}).start()
    finish = self._send_async(size, count, pace_ns, senders=senders)
    timeout_ms = int(RX_IDLE_S * 1000)
    with pinned(self.cpu("device")):   # the loop stands where the device would
        n = max(lib.vnb_raw_read_loop_ex(self.link.fd, buf, 1 << 17, count, timeout_ms, st), 0)
    sender = finish()
    cpu = meter.stop()
    cpu["peer_sender"] = sender.get("cpu_ns", 0)
    if "error" in sender:
        raise sender["error"]
    dt = st.elapsed_ns / 1e9
    if n < count:
        dt = max(dt - timeout_ms / 1000, 1e-9)   # the loop ended by waiting out its idle timeout
    pps, gbps = rate(n, size, dt)
    pp, cpu_pp = per_packet(n, {"syscalls": n + 2 * st.eagain}, {}, cpu,
                             peer_syscalls=sender.get("syscalls", 0) + sender.get("retries", 0),
                             sleeps=raw_sleeps(meter))
    drops, foreign = account(count, n, {"not_sent": count - sender.get("sent", 0)},
                             kernel_drops(kernel0, kernel_counters(self, self.link), RX_KERNEL))
    opts = {} if senders == 1 else {"senders": senders}
    if self.pin:
        opts["pin"] = dict(self.pin)
    if foreign:
        opts["foreign_drops"] = foreign
    return RunResult("raw", "rx" if senders == 1 else "rxsat", size, n, dt, pps, gbps,
                     offered=count, per_packet=pp, cpu_ns=cpu_pp, drops=drops, options=opts)
