"""TX, guest -> peer: the guest floods sequence-tagged frames, the peer receives and checks every one;
baseline ``raw_tx``, one thread write()s the same frames (built fresh each, as the guest does) straight
to the macvtap fd towards the same receiver. Rates count frames *delivered* at the peer, from the
first frame sent to the last one received. Functions of ``BenchTopology`` (``tx``, ``tx_run``, ``raw_tx``)."""
from __future__ import annotations

import functools
import threading
import time

from ... import spec
from ...cputime import current_tid, voluntary_switches
from ...device import VirtioNet
from .. import packet
from .._native import ffi, lib
from ..guest import GuestDriver
from ..results import TSO_LABEL
from .delivery import TX_KERNEL, PeerReceiver, account, kernel_counters, kernel_drops
from .frames import HDR, TSO_PAYLOAD, flood_guest, guest_frame, tso_hdr
from .pinning import pinned
from .measure import Meter, RunResult, add, delta, dev_sleeps, dev_threads, ns_link_stats, per_packet, rate, raw_sleeps

# A super-frame's TCP payload is what reaches the peer whether the kernel hands it over whole (GSO
# through the veth) or segmented: each segment repeats the Ethernet, IPv4 and TCP headers.
_TSO_HDRS = packet.ETH_HLEN + 20 + 20


class _Arrivals:
    """Where TX frames are counted at the peer: tagged frames by the PeerReceiver (every byte
    checked, the time of the last one known); 64k super-frames, which are TCP and not tagged, from
    the peer veth's byte counter converted to super-frames (the window then ends when the device
    has consumed the last one, plus a 50 ms wait for the veth's backlog)."""

    def __init__(self, bt, link, size, count: int):
        self.bt, self.link, self.tso = bt, link, size == TSO_LABEL
        self.k0 = kernel_counters(bt, link)
        if self.tso:
            self.s0 = ns_link_stats(bt.topo, bt.topo.peer)
        else:
            self.rx = PeerReceiver(bt.peer, count, cpu=bt.cpu("peer"))

    def finish(self, offered: int, t0_ns: int, t_consumed_ns: int, named: dict) -> tuple[int, float, dict, dict, int]:
        """(delivered, seconds, drops, foreign drops, receiver CPU ns). ``t_consumed_ns``: when the
        device (or raw loop) had taken the last frame, the end of a 64k run's window."""
        if self.tso:
            t_end = t_consumed_ns
            time.sleep(0.05)   # let the veth's backlog reach the peer before reading its counters
            d = delta(ns_link_stats(self.bt.topo, self.bt.topo.peer), self.s0)
            delivered = (d.get("rx_bytes", 0) - d.get("rx_packets", 0) * _TSO_HDRS) // TSO_PAYLOAD
            cpu, extra, sock = 0, {}, {}
        else:
            r = self.rx.finish()
            delivered = r["received"] - r["bad"] - r["duplicates"]
            t_end = r["t_last_ns"] if r["seen_any"] else time.monotonic_ns()
            # The socket's own drop count covers every frame it saw, not only the run's: capped below.
            cpu, extra, sock = r["cpu_ns"], {"damaged": r["bad"]}, {"peer_socket": r["tp_drops"]}
        k = kernel_drops(self.k0, kernel_counters(self.bt, self.link), TX_KERNEL)
        drops, foreign = account(offered, delivered, {**named, **extra}, {**k, **sock})
        return delivered, max(t_end - t0_ns, 1) / 1e9, drops, foreign, cpu


def tx_run(self, dev: VirtioNet, guest: GuestDriver, size: int | str, count: int) -> RunResult:
    """One TX run on an already started device (bench/ reuses one device over rounds)."""
    frame, flood, nbytes, bits = guest_frame(size, self.peer_mac, dev.link.mac, dict(tagged=True))
    arrivals = _Arrivals(self, dev.link, size, count)
    dev0, g0 = dev.stats(), guest.stats()
    meter = Meter("guest", dev_threads({"datapath": dev}), [dev]).start()
    t0 = time.monotonic_ns()
    sent = flood_guest(guest, frame, count, **flood)
    guest.drain_tx()
    t_consumed = time.monotonic_ns() - t0
    cpu = meter.stop()
    dstats, gstats = delta(dev.stats(), dev0), delta(guest.stats(), g0)
    tx_drops = {k: v for k, v in dstats.get("drops", {}).items() if k.startswith("tx_")}   # this direction's
    delivered, dt, drops, foreign, rx_cpu = arrivals.finish(count, t0, t0 + t_consumed,
                                                            {**tx_drops, "not_taken": count - sent})
    if rx_cpu:   # 64k super-frames are counted from the peer veth's bytes: no receiver thread
        cpu["peer_receiver"] = rx_cpu
    pps, gbps = rate(delivered, nbytes, dt, bits)
    pp, cpu_pp = per_packet(delivered, dstats, gstats, cpu, sleeps=dev_sleeps(meter))
    return RunResult(dev.datapath_name, "tx", nbytes, delivered, dt, pps, gbps, offered=count, per_packet=pp,
                     cpu_ns=cpu_pp, drops=drops,
                     options=self._options(guest.rings[spec.TX_QUEUE][0], guest.event_idx, dev.busyloop_us, size,
                                           packed=guest.packed,
                                           consumed_pps=round(sent * 1e9 / max(t_consumed, 1)),
                                           **({"foreign_drops": foreign} if foreign else {})))


def tx_pairs_run(self, dev: VirtioNet, guests: list[GuestDriver], size: int | str, count: int) -> RunResult:
    """TX on every queue pair at once: pair p's guest floods its share of the sequence numbers from a
    thread of its own, the peer counts them all (every byte checked). Interleaved shares put the
    other pair's numbers beyond the peer's 65536-frame window, where a duplicate is not told from a
    late frame: a duplicate across pairs would count as delivered, which per-pair TX counts (frames
    each pair's datapath took) would show as more taken than offered."""
    frame, flood, nbytes, bits = guest_frame(size, self.peer_mac, dev.link.mac, dict(tagged=True))
    n = len(guests)
    share = -(-count // n)
    arrivals = _Arrivals(self, dev.link, size, count)
    dev0, g0 = dev.stats(), [g.stats() for g in guests]
    sent, cpu_g, sleeps_g, errors = [0] * n, [0] * n, [0] * n, []

    def flood_pair(p: int) -> None:
        c0, s0 = time.thread_time_ns(), voluntary_switches(current_tid())
        try:
            sent[p] = flood_guest(guests[p], frame, max(min(share, count - p * share), 0),
                                  first_seq=p * share, **flood)
            guests[p].drain_tx()
        except Exception as e:   # raised by the caller once the peer's receiver is done
            errors.append(e)
        finally:
            cpu_g[p] = time.thread_time_ns() - c0
            sleeps_g[p] = voluntary_switches(current_tid()) - s0

    ths = [threading.Thread(target=flood_pair, args=(p,), name=f"vnetbe-guest-p{p}") for p in range(n)]
    meter = Meter(None, dev_threads({"datapath": dev}), [dev]).start()
    t0 = time.monotonic_ns()
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    t_consumed = time.monotonic_ns() - t0
    cpu = meter.stop()
    after = dev.stats()
    dstats = delta(after, dev0)
    gstats = functools.reduce(add, [delta(g.stats(), b) for g, b in zip(guests, g0)], {})
    tx_drops = {k: v for k, v in dstats.get("drops", {}).items() if k.startswith("tx_")}
    delivered, dt, drops, foreign, rx_cpu = arrivals.finish(count, t0, t0 + t_consumed,
                                                            {**tx_drops, "not_taken": count - sum(sent)})
    if errors:
        raise errors[0]
    for p in range(n):
        cpu["guest" if p == 0 else f"guest_p{p}"] = cpu_g[p]
    if rx_cpu:
        cpu["peer_receiver"] = rx_cpu
    pps, gbps = rate(delivered, nbytes, dt, bits)
    pp, cpu_pp = per_packet(delivered, dstats, gstats, cpu,
                            sleeps={"device": meter.sleeps["device"], "guest": sum(sleeps_g)})
    pair_tx = [a["tx_frames"] - b["tx_frames"] for a, b in zip(after["pairs"], dev0["pairs"])]
    opts = self._options(guests[0].rings[spec.TX_QUEUE][0], guests[0].event_idx, dev.busyloop_us, size,
                         packed=guests[0].packed, queues=n, pair_tx_frames=pair_tx,
                         consumed_pps=round(sum(sent) * 1e9 / max(t_consumed, 1)),
                         **({"foreign_drops": foreign} if foreign else {}))
    opts.pop("pin", None)   # guest_pairs pins nothing
    return RunResult(dev.datapath_name, "tx", nbytes, delivered, dt, pps, gbps, offered=count, per_packet=pp,
                     cpu_ns=cpu_pp, drops=drops, options=opts)


def tx(self, datapath: str, size: int | str, count: int, *, queue_size: int = 256, event_idx: bool = True,
       busyloop_us: int = 0, ring: str = "split", queues: int = 1) -> RunResult:
    if queues > 1:
        with self.guest_pairs(datapath, queues, queue_size=queue_size, event_idx=event_idx,
                              busyloop_us=busyloop_us, ring=ring) as (dev, gs):
            return self.tx_pairs_run(dev, gs, size, count)
    with self.guest(datapath, queue_size=queue_size, event_idx=event_idx, busyloop_us=busyloop_us,
                    ring=ring) as (dev, g):
        return self.tx_run(dev, g, size, count)


def raw_tx(self, size: int | str, count: int) -> RunResult:
    """Baseline: one thread write()s the frames straight to the macvtap fd (a zero vnet header; for
    64k the TSO header, so the kernel segments exactly as for the device), each tagged frame built
    fresh before its write as the device's guest builds it, towards the same receiver."""
    self.link.set_vnet_hdr_len(HDR)
    self.link.set_offload(0)
    frame, flood, nbytes, bits = guest_frame(size, self.peer_mac, self.link.mac, {})
    st = ffi.new("struct vnb_raw_stats *")
    arrivals = _Arrivals(self, self.link, size, count)
    meter = Meter("writer", {}).start()
    with pinned(self.cpu("device")):   # the loop stands where the device would
        t0 = time.monotonic_ns()
        if size == TSO_LABEL:
            buf = tso_hdr(flood["csum"]) + frame
            n = lib.vnb_raw_write_loop_ex(self.link.fd, buf, len(buf), count, st)
        else:
            buf = ffi.new("uint8_t[]", HDR + nbytes)
            n = lib.vnb_raw_write_tagged_ex(self.link.fd, buf, HDR, packet.mac(self.peer_mac),
                                            packet.mac(self.link.mac), nbytes, 0, count, st)
        cpu = meter.stop()
    n = max(n, 0)
    delivered, dt, drops, foreign, rx_cpu = arrivals.finish(count, t0, t0 + st.elapsed_ns, {"not_taken": count - n})
    if rx_cpu:   # 64k super-frames are counted from the peer veth's bytes: no receiver thread
        cpu["peer_receiver"] = rx_cpu
    pps, gbps = rate(delivered, nbytes, dt, bits)
    # Every EAGAIN costs the failed write() and a poll().
    pp, cpu_pp = per_packet(delivered, {"syscalls": n + 2 * st.eagain}, {}, cpu, sleeps=raw_sleeps(meter))
    opts = {"tso": True} if size == TSO_LABEL else {}
    if self.pin:
        opts["pin"] = dict(self.pin)
    opts["consumed_pps"] = round(n * 1e9 / max(st.elapsed_ns, 1))
    if foreign:
        opts["foreign_drops"] = foreign
    return RunResult("raw", "tx", nbytes, delivered, dt, pps, gbps, offered=count, per_packet=pp, cpu_ns=cpu_pp,
                     drops=drops, options=opts)
