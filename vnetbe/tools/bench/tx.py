"""TX, guest -> peer: the guest floods frames; baseline ``raw_tx``, one thread write()s them to the
macvtap fd. Functions of ``BenchTopology`` (its methods ``tx``, ``tx_run``, ``raw_tx``)."""
from __future__ import annotations

import time

from ... import spec
from ...device import VirtioNet
from .._native import ffi, lib
from ..guest import GuestDriver
from ..results import TSO_LABEL
from .frames import HDR, flood_guest, guest_frame, tso_hdr
from .measure import Meter, RunResult, delta, dev_sleeps, dev_threads, ns_link_stats, per_packet, rate, raw_sleeps


def tx_run(self, dev: VirtioNet, guest: GuestDriver, size: int | str, count: int, *,
           count_delivered: bool = True) -> RunResult:
    """One TX run on an already started device (bench/ reuses one device over rounds).
    ``count_delivered=False`` skips reading the peer's counters afterwards (a netlink round trip
    and a 50 ms wait for the veth's backlog): ``frames`` is then what the device consumed."""
    frame, flood, nbytes, bits = guest_frame(size, self.peer_mac, dev.link.mac, dict(seq_offset=14))
    before = ns_link_stats(self.topo, self.topo.peer) if count_delivered else {}
    dev0, g0 = dev.stats(), guest.stats()
    meter = Meter("guest", dev_threads({"datapath": dev}), [dev]).start()
    t0 = time.perf_counter()
    sent = flood_guest(guest, frame, count, **flood)
    guest.drain_tx()
    dt = time.perf_counter() - t0
    cpu = meter.stop()
    dstats, gstats = delta(dev.stats(), dev0), delta(guest.stats(), g0)
    if count_delivered:
        time.sleep(0.05)   # let the veth's backlog reach the peer before reading its counters
        after = ns_link_stats(self.topo, self.topo.peer)
        delivered = after.get("rx_packets", 0) - before.get("rx_packets", 0)
    else:
        delivered = sent
    pps, gbps = rate(sent, nbytes, dt, bits)
    pp, cpu_pp = per_packet(sent, dstats, gstats, cpu, sleeps=dev_sleeps(meter))
    return RunResult(dev.datapath_name, "tx", nbytes, delivered, dt, pps, gbps, offered=sent, per_packet=pp,
                     cpu_ns=cpu_pp, drops=dstats.get("drops", {}),
                     options=self._options(guest.rings[spec.TX_QUEUE][0], guest.event_idx, dev.busyloop_us, size))

def tx(self, datapath: str, size: int | str, count: int, *, queue_size: int = 256, event_idx: bool = True,
       busyloop_us: int = 0) -> RunResult:
    with self.guest(datapath, queue_size=queue_size, event_idx=event_idx, busyloop_us=busyloop_us) as (dev, g):
        return self.tx_run(dev, g, size, count)

def raw_tx(self, size: int | str, count: int) -> RunResult:
    """Baseline: one thread write()s the same frames straight to the macvtap fd (a zero vnet
    header; for 64k the TSO header, so the kernel segments exactly as for the device)."""
    self.link.set_vnet_hdr_len(HDR)
    self.link.set_offload(0)
    frame, flood, nbytes, bits = guest_frame(size, self.peer_mac, self.link.mac, {})
    buf = (tso_hdr(flood["csum"]) if "csum" in flood else bytes(HDR)) + frame
    st = ffi.new("struct vnb_raw_stats *")
    meter = Meter("writer", {}).start()
    n = lib.vnb_raw_write_loop_ex(self.link.fd, buf, len(buf), count, st)
    cpu = meter.stop()
    n = max(n, 0)
    dt = st.elapsed_ns / 1e9
    pps, gbps = rate(n, nbytes, dt, bits)
    # Every EAGAIN costs the failed write() and a poll().
    pp, cpu_pp = per_packet(n, {"syscalls": n + 2 * st.eagain}, {}, cpu, sleeps=raw_sleeps(meter))
    return RunResult("raw", "tx", nbytes, n, dt, pps, gbps, offered=count, per_packet=pp, cpu_ns=cpu_pp,
                     options={"tso": True} if size == TSO_LABEL else {})
