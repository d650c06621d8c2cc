"""VM to VM: guest A -> a bridge-mode macvtap pair -> guest B, which checks every byte. A function of
``BenchTopology`` (its method ``vm2vm``)."""
from __future__ import annotations

import threading
import time

from ..results import TSO_LABEL
from .delivery import account
from .frames import flood_guest, guest_frame, receive_all
from .pinning import pinned
from .measure import Meter, RunResult, add, delta, dev_threads, per_packet, rate


def vm2vm(self, datapath: str, size: int | str, count: int, *, queue_size: int = 256, event_idx: bool = True,
          busyloop_us: int = 0, ring: str = "split") -> RunResult:
    kw = dict(queue_size=queue_size, event_idx=event_idx, busyloop_us=busyloop_us, ring=ring)
    link_b = self.link_b
    with self.guest(datapath, **kw) as (dev_a, ga), self.guest(datapath, link=link_b, **kw) as (dev_b, gb):
        tso = size == TSO_LABEL
        frame, flood, nbytes, bits = guest_frame(size, link_b.mac, self.link.mac, dict(tagged=True))
        links0 = (self.link.stats(), link_b.stats())
        s0 = [d.stats() for d in (dev_a, dev_b)] + [g.stats() for g in (ga, gb)]
        out: dict = {}
        ready = threading.Event()

        def receive() -> None:
            c0 = time.thread_time_ns()
            ready.set()
            try:
                # A super-frame is TCP, not a tagged frame: count it, check nothing.
                with pinned(self.cpu("guest")):
                    out["got"], out["ooo"], out["bad"], out["t_last"] = receive_all(
                        gb, count, seq_offset=0 if tso else 14, verify=not tso)
            except Exception as e:  # reported by the caller
                out["error"] = e
            finally:
                out["cpu_ns"] = time.thread_time_ns() - c0

        meter = Meter("guest_a", dev_threads({"datapath_a": dev_a, "datapath_b": dev_b}),
                       [dev_a, dev_b]).start()
        th = threading.Thread(target=receive, name="vnetbe-guest-b")
        th.start()
        ready.wait()
        t0 = time.perf_counter()
        try:
            sent = flood_guest(ga, frame, count, **flood)
            ga.drain_tx()
        finally:
            th.join()
        cpu = meter.stop()
        cpu["guest_b"] = out.get("cpu_ns", 0)
        if "error" in out:
            raise out["error"]
        s1 = [d.stats() for d in (dev_a, dev_b)] + [g.stats() for g in (ga, gb)]
        la, lb = self.link.stats() - links0[0], link_b.stats() - links0[1]
    got = out["got"] - out["bad"]
    dt = out["t_last"] - t0
    dstats = add(delta(s1[0], s0[0]), delta(s1[1], s0[1]))
    gstats = add(delta(s1[2], s0[2]), delta(s1[3], s0[3]))
    pps, gbps = rate(got, nbytes, dt, bits)
    pp, cpu_pp = per_packet(got, dstats, gstats, cpu)
    drops, foreign = account(count, got, {**dstats.get("drops", {}), "not_taken": count - sent, "damaged": out["bad"]},
                             {"macvtap_tx_queue": la.tx_dropped, "macvtap_rx_queue": lb.rx_dropped})
    return RunResult(datapath, "vm2vm", nbytes, got, dt, pps, gbps, offered=count, per_packet=pp, cpu_ns=cpu_pp,
                     drops=drops, options=self._options(queue_size, ga.event_idx, busyloop_us, size, packed=ga.packed,
                                                        out_of_order=out["ooo"],
                                                        **({"foreign_drops": foreign} if foreign else {})))
