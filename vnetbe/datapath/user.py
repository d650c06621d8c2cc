"""The userspace datapath: vnetbe's C thread (csrc/device/vnb_datapath.c, its tap I/O in vnb_dp_plain.c) servicing the rings."""
from __future__ import annotations

import os
import time

from .. import spec
from .._native import check, ffi, lib
from ..errors import ConfigError
from ..faults import DROP_REASONS, FAULT_NAMES
from ..queue import QueueConfig, QueueState
from .stats import DatapathStats, LinkCounters

# A running thread passes through its loop at least once a heartbeat (VNB_DP_HEARTBEAT_MS, idle or
# not; a pass is bounded by its budgets): three missed beats mean it is stuck, not idle.
STALL_S = 3 * lib.VNB_DP_HEARTBEAT_MS / 1000

# The C counters (struct vnb_dp_stats) by the names DatapathStats gives them.
_C_COUNTERS = [n for n in DatapathStats.__dataclass_fields__ if n in dir(ffi.new("struct vnb_dp_stats *"))]

class UserDatapath:
    name = "user"
    uring_batch = 0          # 0: plain system calls on epoll; see UringDatapath
    sqpoll_idle_ms = 0
    uring_nowait = True      # False: as on a tap without FMODE_NOWAIT (writes wait, reads stay posted)

    def __init__(self) -> None:
        self._dp = ffi.gc(lib.vnb_dp_new(), lib.vnb_dp_free)
        if self._dp == ffi.NULL:
            raise MemoryError("vnb_dp_new")
        self._mem = None   # keep the GuestMemory alive while the thread uses its mappings
        self._queues: dict[int, QueueConfig] = {}
        self._link_counters: LinkCounters | None = None
        self._final: DatapathStats | None = None

    supported_features = spec.DEVICE_FEATURES   # everything the device model offers
    ring_modes = True
    link_wide = ("link_rx_dropped", "link_tx_dropped")   # the link's counters: one link for every pair

    def start(self, mem, features, hdr_len, queues, link, err_fd, busyloop_us: int = 0) -> None:
        dp = self._dp
        check(lib.vnb_dp_set_mem(dp, mem.table), "vnb_dp_set_mem")
        check(lib.vnb_dp_set_features(dp, spec.ring_flags(features), hdr_len), "vnb_dp_set_features")
        packed = bool(features & spec.bit(spec.VIRTIO_F_RING_PACKED))
        for q, cfg in queues.items():
            last_avail, used = cfg.base(packed)
            rc = lib.vnb_dp_set_queue(dp, q, cfg.size, cfg.desc, cfg.avail, cfg.used, cfg.kick_fd,
                                      cfg.call_fd, last_avail & 0xFFFF, used & 0xFFFF)
            if rc < 0:
                raise ConfigError(f"queue {q} rejected by the datapath (errno {-rc}): check its addresses")
            if cfg.log_used is not None:
                check(lib.vnb_dp_set_log_addr(dp, q, cfg.log_used), "vnb_dp_set_log_addr")
            mode = (lib.VNB_RING_POLLED if cfg.polled else 0) | (lib.VNB_RING_DISCARD if cfg.discard else 0)
            rc = lib.vnb_dp_set_ring_mode(dp, q, mode)
            if rc < 0:
                raise ConfigError(f"queue {q}: ring mode {mode} refused (errno {-rc}); only TX discards")
        check(lib.vnb_dp_set_tap(dp, link.fd), "vnb_dp_set_tap")
        check(lib.vnb_dp_set_err_fd(dp, err_fd), "vnb_dp_set_err_fd")
        check(lib.vnb_dp_set_link_ifindex(dp, link.ifindex), "vnb_dp_set_link_ifindex")
        check(lib.vnb_dp_set_busyloop(dp, busyloop_us), "vnb_dp_set_busyloop")
        check(lib.vnb_dp_set_uring(dp, self.uring_batch, self.sqpoll_idle_ms,
                                   0 if self.uring_nowait else lib.VNB_DP_URING_NO_NOWAIT), "vnb_dp_set_uring")
        if self._link_counters is None or self._link_counters.link is not link:
            self._link_counters = LinkCounters(link)   # C counters run from vnb_dp_new on: so do these
        self._final = None
        rc = lib.vnb_dp_start(dp)
        if rc < 0 and self.uring_batch:
            raise ConfigError(f"datapath {self.name!r}: io_uring could not be set up ({os.strerror(-rc)}); "
                              "is io_uring disabled (sysctl kernel.io_uring_disabled) or the kernel older than 5.11? "
                              "use --datapath user")
        check(rc, "vnb_dp_start (epoll/eventfd/pthread_create)")
        self._mem = mem
        self._queues = dict(queues)

    def stop(self) -> dict[int, QueueState]:
        was_running = lib.vnb_dp_running(self._dp)
        lib.vnb_dp_stop(self._dp)
        if was_running:
            self._final = self.stats()   # the link's counters are read while the link is still ours
        return {q: self._qstate(q) for q in self._queues}

    def close(self) -> None:
        lib.vnb_dp_stop(self._dp)

    def _qstate(self, q: int) -> QueueState:
        st = ffi.new("struct vnb_dp_qstate *")
        lib.vnb_dp_get_qstate(self._dp, q, st)
        return QueueState(st.last_avail_idx, st.used_idx, bool(st.broken), st.fault)

    def faults(self) -> dict[int, int]:
        out = {}
        for q in self._queues:
            s = self._qstate(q)
            if s.broken:
                out[q] = s.fault
        return out

    def link_down(self) -> int:
        return lib.vnb_dp_link_down(self._dp)

    def threads(self) -> list[int]:
        tid = lib.vnb_dp_tid(self._dp)
        return [tid] if tid > 0 and lib.vnb_dp_running(self._dp) else []

    def stalled_for(self) -> float | None:
        if not lib.vnb_dp_running(self._dp):
            return None
        age = (time.monotonic_ns() - lib.vnb_dp_heartbeat(self._dp)) / 1e9
        return age if age > STALL_S else None

    def stats(self) -> DatapathStats:
        if self._final is not None:
            return self._final
        st = ffi.new("struct vnb_dp_stats *")
        lib.vnb_dp_get_stats(self._dp, st)
        out = DatapathStats(**{k: getattr(st, k) for k in _C_COUNTERS})
        out.drops = {DROP_REASONS[i]: st.drops[i] for i in range(len(DROP_REASONS))}
        out.faults = {FAULT_NAMES[i]: st.faults[i] for i in range(1, len(FAULT_NAMES)) if st.faults[i]}
        out.link_down = self.link_down()
        if self._link_counters is not None:
            d = self._link_counters.delta()
            out.link_rx_dropped, out.link_tx_dropped = d.rx_dropped, d.tx_dropped
        out.not_counted = ("worker_cpu_ns",)   # no kernel worker: the thread's CPU is measured by its tid
        return out


def _io_uring_threads(tid: int) -> list[int]:
    """The kernel's threads working for the io_uring that thread tid made: its SQPOLL thread
    ("iou-sqp-<tid>") and io-wq workers ("iou-wrk-<tid>"), both tasks of this process."""
    names = {f"iou-sqp-{tid}", f"iou-wrk-{tid}"}
    out = []
    for t in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{t}/comm") as f:
                if f.read().strip() in names:
                    out.append(int(t))
        except OSError:
            continue   # gone meanwhile: an io-wq worker exits when idle
    return out


class UringDatapath(UserDatapath):
    """The userspace datapath with its tap I/O through io_uring (csrc/device/vnb_dp_uring.c): a batch
    of frames costs one io_uring_enter. ``sqpoll_idle_ms`` > 0 adds the kernel's SQPOLL thread."""
    name = "uring"
    uring_batch = 32         # frames per io_uring_enter: TX_FLUSH_MAX, the used ring's flush cadence
    sqpoll_idle_ms = 0

    def threads(self) -> list[int]:
        own = super().threads()
        return own + _io_uring_threads(own[0]) if own else own


class UringSqpollDatapath(UringDatapath):
    """``uring`` with IORING_SETUP_SQPOLL: a kernel thread takes the submissions, idling after 10 ms."""
    name = "uring-sqpoll"
    sqpoll_idle_ms = 10
