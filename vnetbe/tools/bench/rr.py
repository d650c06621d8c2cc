"""Request/response, peer -> guest -> peer, one frame at a time, with C loops on both ends; baseline
``raw_rr``, a thread answering on the macvtap fd. Functions of ``BenchTopology`` (``rr``, ``raw_rr``)."""
from __future__ import annotations

import errno
import os
import statistics
import threading
import time

from ...errors import ConfigError, VnetError
from .. import packet
from .._native import ffi, lib
from ..results import TSO_LABEL, nearest_rank
from .frames import HDR, RR_FLOW, RR_IDLE_S
from .measure import Meter, RunResult, delta, dev_threads, per_packet, rate


def _rr_peer(self, size: int, count: int, warmup: int, dst: bytes, timeout: float = 1.0
             ) -> tuple[list[int], int, int]:
    """The peer's side, on the calling thread, in C (vnb_peer_rr): returns (round-trip ns of the
    measured ones, syscalls, CPU ns of this thread)."""
    req = packet.tagged_frame(0, size, dst, self.peer_mac, flow=RR_FLOW)
    total = warmup + count
    rtt = ffi.new("int64_t[]", max(total, 1))
    st = ffi.new("struct vnb_rr_stats *")
    c0 = time.thread_time_ns()
    n = lib.vnb_peer_rr(self.peer.sock.fileno(), req, len(req), 0, 14, total, int(timeout * 1000), rtt, st)
    cpu = time.thread_time_ns() - c0
    if n < 0:
        raise VnetError(f"rr: the peer's loop refused its arguments (errno {-n})")
    if n < total:
        why = "no reply" if st.err == errno.ETIMEDOUT else os.strerror(st.err)
        raise VnetError(f"rr: {why} for request {n} within {timeout:g} s "
                        f"({max(n - warmup, 0)} round trips measured)")
    return [rtt[i] for i in range(warmup, total)], int(st.syscalls), cpu

@staticmethod
def _latency(rtts: list[int]) -> dict:
    xs = sorted(rtts)
    return {"p50_us": nearest_rank(xs, 50) / 1e3, "p99_us": nearest_rank(xs, 99) / 1e3, "min_us": xs[0] / 1e3,
            "max_us": xs[-1] / 1e3, "mean_us": statistics.fmean(xs) / 1e3, "round_trips": len(xs)}

def _rr_measure(self, responder, size: int, count: int, warmup: int, meter: Meter) -> tuple:
    """Run ``responder(stop, out)`` in a thread while this thread is the peer. Returns
    (rtts, peer syscalls, cpu dict, seconds, responder's out)."""
    self.peer.flush()   # frames queued on the peer socket by earlier scenarios
    stop = ffi.new("int *")   # the responder's C loop polls it: 1 = stop
    out: dict = {}
    th = threading.Thread(target=responder, args=(stop, out), name="vnetbe-rr-responder")
    meter.start()
    th.start()
    try:
        t0 = time.perf_counter()
        rtts, syscalls, peer_cpu = self._rr_peer(size, count, warmup, self.link.mac)
        dt = time.perf_counter() - t0
    except BaseException:
        stop[0] = 1
        th.join()
        if "error" in out:
            raise out["error"] from None
        raise
    stop[0] = 1
    th.join()
    cpu = meter.stop()
    cpu["peer"] = peer_cpu
    if "error" in out:
        raise out["error"]
    # Warm-up round trips are in dt and in the counters: scale them out evenly.
    return rtts, syscalls, cpu, dt, out

def rr(self, datapath: str, size: int, count: int, *, queue_size: int = 256, event_idx: bool = True,
       busyloop_us: int = 0, ring: str = "split", warmup: int = 50) -> RunResult:
    if size == TSO_LABEL:
        raise ConfigError("rr at 64k: the peer (an AF_PACKET socket) cannot send frames above its MTU")
    with self.guest(datapath, queue_size=queue_size, event_idx=event_idx, busyloop_us=busyloop_us,
                    ring=ring) as (dev, g):
        reply = packet.tagged_frame(0, size, self.peer_mac, dev.link.mac, flow=RR_FLOW)

        def respond(stop, out: dict) -> None:
            c0 = time.thread_time_ns()
            try:
                g.echo(reply, stop=stop, idle=RR_IDLE_S)   # answers every request until stop
            except Exception as e:  # reported by the caller
                out["error"] = e
            finally:
                out["cpu_ns"] = time.thread_time_ns() - c0

        dev0, g0 = dev.stats(), g.stats()
        meter = Meter(None, dev_threads({"datapath": dev}), [dev])
        rtts, psys, cpu, dt, out = self._rr_measure(respond, size, count, warmup, meter)
        cpu["guest"] = out["cpu_ns"]
        dstats, gstats = delta(dev.stats(), dev0), delta(g.stats(), g0)
    return self._rr_result(datapath, size, count, warmup, rtts, psys, cpu, dt, dstats, gstats,
                           self._options(queue_size, event_idx, busyloop_us, size, packed=g.packed))

def raw_rr(self, size: int, count: int, warmup: int = 50) -> RunResult:
    """Baseline: a thread answers straight on the macvtap fd (poll, read, write): what rr costs
    without a virtio device in the way, with the same C loops on both ends as the device's rr."""
    if size == TSO_LABEL:
        raise ConfigError("rr at 64k: the peer (an AF_PACKET socket) cannot send frames above its MTU")
    self.link.set_vnet_hdr_len(HDR)
    self.link.set_offload(0)
    fd = self.link.fd
    reply = bytes(HDR) + packet.tagged_frame(0, size, self.peer_mac, self.link.mac, flow=RR_FLOW)

    def respond(stop, out: dict) -> None:
        c0 = time.thread_time_ns()
        st = ffi.new("struct vnb_rr_stats *")
        try:
            n = lib.vnb_raw_echo(fd, reply, len(reply), HDR, HDR + 14, 1 << 62, int(RR_IDLE_S * 1000),
                                 stop, st)
            if n < 0 or st.err:
                raise VnetError(f"rr: the raw responder stopped: {os.strerror(st.err or -n)}")
        except Exception as e:  # reported by the caller
            out["error"] = e
        finally:
            out.update(syscalls=int(st.syscalls), cpu_ns=time.thread_time_ns() - c0)

    rtts, psys, cpu, dt, out = self._rr_measure(respond, size, count, warmup, Meter(None, {}))
    cpu["responder"] = out["cpu_ns"]
    return self._rr_result("raw", size, count, warmup, rtts, psys, cpu, dt, {"syscalls": out["syscalls"]}, {},
                           {})

def _rr_result(self, datapath, size, count, warmup, rtts, psys, cpu, dt, dstats, gstats, options) -> RunResult:
    total = count + warmup
    scale = count / total   # counters and time include the warm-up round trips
    cpu = {k: v * scale for k, v in cpu.items()}
    dstats = {k: v * scale for k, v in dstats.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    gstats = {k: v * scale for k, v in gstats.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    secs = dt * scale
    pps, gbps = rate(len(rtts), size, secs, 2 * size * 8)
    pp, cpu_pp = per_packet(len(rtts), dstats, gstats, cpu, peer_syscalls=psys * scale)
    return RunResult(datapath, "rr", size, len(rtts), secs, pps, gbps, offered=count, per_packet=pp,
                     cpu_ns=cpu_pp, options={**options, "per": "round trip"}, latency=self._latency(rtts))
