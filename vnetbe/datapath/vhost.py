"""The vhost-net datapath: the very same rings handed to the kernel's vhost worker.

Handoff order (tools/virtio/vhost_net_test.c, QEMU hw/virtio/vhost.c): SET_OWNER, GET_FEATURES,
SET_FEATURES, SET_MEM_TABLE, per queue VRING_NUM/BASE/ADDR/KICK/CALL/ERR, then NET_SET_BACKEND.
Stop: NET_SET_BACKEND(-1), then GET_VRING_BASE.

vhost names no fault on its ERR eventfd, so a watcher thread asks vnetbe's own validator
(csrc/device/vnb_virtq.c) which chain broke and why: a guest fault reaches Python as the same GuestFault
subclass on both datapaths. The watcher then detaches that queue, as the userspace path stops it.
"""
from __future__ import annotations

import errno
import os
import select
import struct
import threading
import time

from .. import spec
from .._native import ffi, lib
from ..cputime import thread_cpu_ns, voluntary_switches
from ..errors import ConfigError, GuestMemoryGone, KernelRefused, VhostFault
from ..faults import FAULT_NAMES
from ..link.watch import LinkWatch, link_alive
from ..queue import QueueConfig, QueueState
from . import vhost_ioctl as io
from .stats import DatapathStats, LinkCounters

# Net features the tap implements whatever vhost says: they live in the header and the config space.
_TAP_HANDLED = sum(spec.bit(b) for b in (
    spec.VIRTIO_NET_F_CSUM, spec.VIRTIO_NET_F_GUEST_CSUM, spec.VIRTIO_NET_F_MTU, spec.VIRTIO_NET_F_MAC,
    spec.VIRTIO_NET_F_GUEST_TSO4, spec.VIRTIO_NET_F_GUEST_TSO6, spec.VIRTIO_NET_F_HOST_TSO4,
    spec.VIRTIO_NET_F_HOST_TSO6, spec.VIRTIO_NET_F_STATUS))
_NEVER = spec.bit(io.VHOST_F_LOG_ALL) | spec.bit(io.VHOST_NET_F_VIRTIO_NET_HDR)
# What the kernel's worker does not report: the counts of a userspace thread's own work, and the
# reasons for drops (vhost drops short or refused frames without saying).
_NOT_COUNTED = ("tx_kicks", "rx_kicks", "tx_kick_wakeups", "rx_kick_wakeups", "tx_interrupts", "rx_interrupts",
                "tap_writes", "tap_reads", "tap_read_empty", "rx_stalls", "rx_merged", "tx_tap_full",
                "busy_polls", "drops")


def _vhost_workers() -> dict[int, str]:
    """tid -> where, for this process's vhost workers: kernel threads "vhost-<pid>" (before 6.4) or
    threads of this very process (6.4 and later)."""
    me = os.getpid()
    out: dict[int, str] = {}
    for tid in os.listdir(f"/proc/{me}/task"):
        try:
            with open(f"/proc/{me}/task/{tid}/comm") as f:
                if f.read().startswith(f"vhost-{me}"):
                    out[int(tid)] = "task"
        except OSError:
            continue
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == f"vhost-{me}":
                    out[int(pid)] = "kthread"
        except OSError:
            continue
    return out


# SET_OWNER creates the device's worker: taking the process's worker list around it, under this
# lock, tells which worker is this device's even when several devices live in one process.
_OWNER_LOCK = threading.Lock()
TALLY_MS = 20


def diagnose(mem, cfg: QueueConfig, q: int, features: int, last_avail_idx: int) -> int:
    """Fault code of the first bad chain from just before vhost's position up to avail->idx,
    found by vnetbe's own validator; VhostFault.code if none of them is bad by our rules."""
    flags = spec.ring_flags(features)
    vq = ffi.new("struct vnb_vq *")
    chain = ffi.new("struct vnb_chain *")
    if lib.vnb_vq_init(vq, mem.table, cfg.size, cfg.desc, cfg.avail, cfg.used, flags) < 0:
        return lib.VNB_FAULT_RING_ADDR
    # vhost consumes a chain before some checks (TX direction), so start one behind its position.
    lib.vnb_vq_set_base(vq, (last_avail_idx - 1) & 0xFFFF, 0)
    for _ in range(cfg.size + 1):
        r = lib.vnb_vq_pop_guarded(vq, chain)
        if r == -errno.EFAULT:
            return lib.VNB_FAULT_MEM_GONE   # the ring's memory went away under the mapping
        if r < 0:
            return -r
        if r == 0:
            break
        if q == spec.TX_QUEUE and chain.nin:
            return lib.VNB_FAULT_TX_WRITABLE
        if q == spec.RX_QUEUE and chain.nout:
            return lib.VNB_FAULT_RX_READABLE
    return VhostFault.code


class VhostDatapath:
    name = "vhost"
    ring_modes = False   # the kernel needs kicks, and has no started-but-disabled ring
    # Counters read off the link, not off a pair's rings: every pair's /dev/vhost-net sees the same.
    link_wide = ("tx_bytes", "link_rx_dropped", "link_tx_dropped")

    def __init__(self) -> None:
        self.fd = io.open_vhost_net()
        try:
            with _OWNER_LOCK:
                before = set(_vhost_workers())
                io.set_owner(self.fd)
                self._own_workers = sorted(set(_vhost_workers()) - before)
            self.kernel_features = io.get_features(self.fd)
        except BaseException:
            os.close(self.fd)
            raise
        self.supported_features = (self.kernel_features | _TAP_HANDLED) & ~_NEVER
        self._queues: dict[int, QueueConfig] = {}
        self._err: dict[int, int] = {}
        self._faults: dict[int, int] = {}
        self._stop_fd = -1
        self._watcher: threading.Thread | None = None
        self._link = None
        self._mem = None
        self._features = 0
        self._link_counters: LinkCounters | None = None
        self._link_down = 0
        self._link_watch: LinkWatch | None = None
        self._final: DatapathStats | None = None
        self._workers0: dict[int, tuple[int, int]] = {}
        # Frames as the used rings show them (a cffi vnb_vq over each ring, and its tally), and those
        # of earlier starts. RX: the macvtap counts a frame when it is queued, not when it reaches the
        # guest, so at a hand-over its queue's frames would be counted by both datapaths or neither.
        # TX: the link's counters are the link's, shared by every queue pair's /dev/vhost-net.
        self._tallies: dict[int, tuple] = {}          # queue -> (vnb_vq, vnb_used_tally, hdr_len)
        self._done = {spec.RX_QUEUE: (0, 0), spec.TX_QUEUE: (0, 0)}   # (frames, bytes) of earlier starts
        self._tally_lock = threading.Lock()
        self._mem_gone = False      # the RX tally found guest memory gone (a shrunk memory file)
        self.running = False

    # --- start/stop ---
    def start(self, mem, features: int, hdr_len: int, queues: dict[int, QueueConfig], link, err_fd: int,
              busyloop_us: int = 0) -> None:
        missing = features & ~self.supported_features
        if missing & spec.bit(spec.VIRTIO_F_RING_PACKED):
            raise ConfigError("vhost-net has no packed rings (the driver negotiated VIRTIO_F_RING_PACKED): keep "
                              "this device on user or uring, or have the guest use split rings (QEMU: packed=off)")
        if missing:
            raise ConfigError("vhost-net here cannot serve features the driver negotiated: "
                              f"{', '.join(spec.features_to_names(missing)) or hex(missing)}")
        if len(mem.regions) > io.max_mem_regions():
            raise KernelRefused("VHOST_SET_MEM_TABLE", errno.E2BIG, f"{len(mem.regions)} regions exceed max_mem_regions "
                                f"({io.max_mem_regions()}): merge regions or raise that parameter")
        odd = [q for q, cfg in queues.items() if cfg.polled or cfg.discard]
        if odd:
            raise ConfigError(f"vhost-net cannot serve ring {odd[0]} as asked: the kernel needs a kick to look at a "
                              "ring (no polling) and has no disabled-but-started state; use the user or uring datapath")
        fd = self.fd
        log = mem.log
        if log is not None and not self.kernel_features & spec.bit(io.VHOST_F_LOG_ALL):
            raise ConfigError("this kernel's vhost-net does not offer VHOST_F_LOG_ALL: it cannot keep a dirty log")
        # The kernel's own logging, straight into the log: its base first (LOG_ALL fails with EFAULT
        # without one), then LOG_ALL, then each ring's used-ring log address. It logs by the GPAs of
        # the memory table, as the log is laid out.
        if log is not None:
            io.set_log_base(fd, log.hva)
        io.set_features(fd, (features & self.kernel_features & ~_NEVER)
                        | (spec.bit(io.VHOST_F_LOG_ALL) if log is not None else 0))
        io.set_mem_table(fd, [(r.gpa, r.size, r.hva) for r in mem.regions])
        for q, cfg in sorted(queues.items()):
            io.set_vring_num(fd, q, cfg.size)
            io.set_vring_base(fd, q, cfg.base(False)[0] & 0xFFFF)   # split only: vhost-net has no packed rings
            io.set_vring_addr(fd, q, mem.hva(cfg.desc), mem.hva(cfg.used), mem.hva(cfg.avail),
                              None if log is None else (cfg.used if cfg.log_used is None else cfg.log_used))
            io.set_vring_kick(fd, q, cfg.kick_fd)
            io.set_vring_call(fd, q, cfg.call_fd)
            self._err[q] = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            io.set_vring_err(fd, q, self._err[q])
            if busyloop_us:
                io.set_vring_busyloop_timeout(fd, q, busyloop_us)
        self._mem, self._queues, self._features, self._link = mem, dict(queues), features, link
        self._start_tallies(mem, features, hdr_len, queues)
        self._link_down = 0
        self._mem_gone = False
        # Counters run from the first start on, across stops and starts (a vhost-user front end stops
        # and restarts rings one at a time), as the userspace datapath's do.
        if self._link_counters is None or self._link_counters.link is not link:
            self._link_counters = LinkCounters(link)
        for q in sorted(queues):
            io.net_set_backend(fd, q, link.fd)
        self.running = True
        if not self._workers0:
            self._workers0 = {t: (thread_cpu_ns(t, t), voluntary_switches(t, t)) for t in self.threads()}
        self._stop_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._link_watch = LinkWatch(link.ifindex) if link.ifindex > 0 else None
        self._watcher = threading.Thread(target=self._watch, args=(err_fd,), name="vnetbe-vhost-err", daemon=True)
        self._watcher.start()

    def _start_tallies(self, mem, features: int, hdr_len: int, queues: dict[int, QueueConfig]) -> None:
        self._tallies = {}
        for q, cfg in queues.items():
            flags = spec.ring_flags(features)
            if q == spec.TX_QUEUE:   # a TX used entry is one frame, its length 0: no header to read
                flags &= ~lib.VNB_F_MRG_RXBUF
            vq = ffi.new("struct vnb_vq *")
            if lib.vnb_vq_init(vq, mem.table, cfg.size, cfg.desc, cfg.avail, cfg.used, flags) < 0:
                continue   # vhost refuses these addresses too: its ERR eventfd names the fault
            tally = ffi.new("struct vnb_used_tally *")
            # vhost takes up at the used index in memory (vhost_vq_init_access): so does the count.
            # (GuestMemoryGone here fails the start: the device reports it as the session's error.)
            tally.seen_idx = struct.unpack("<H", mem.read(cfg.used + 2, 2))[0]
            self._tallies[q] = (vq, tally, hdr_len if q == spec.RX_QUEUE else 0)

    def _counted(self, fold: bool = False) -> dict[int, tuple[int, int]]:
        """Per ring, (frames, bytes) so far, the used rings sampled now (TX bytes are not in the ring:
        0); with ``fold`` (at stop) this start's count joins the earlier ones. Under the lock: the
        watcher samples concurrently."""
        with self._tally_lock:
            out = dict(self._done)
            for q, (vq, t, hdr_len) in list(self._tallies.items()):
                if lib.vnb_vq_tally_used_guarded(vq, hdr_len, t) < 0:
                    self._mem_gone = True          # the watcher stops the rings; the count ends here
                    del self._tallies[q]
                    continue
                f, b = out[q]
                out[q] = (f + t.frames, b + t.bytes)
            if fold:
                self._done, self._tallies = out, {}
            return out

    def _watch(self, dev_err_fd: int) -> None:
        by_fd = {efd: q for q, efd in self._err.items()}
        poller = select.poll()
        for fd in (self._stop_fd, *by_fd):
            poller.register(fd, select.POLLIN)
        # Events 0: only POLLERR/POLLHUP, which a tap reports for good once its interface is gone
        # (vhost's worker then fails every frame and says nothing). The tun's wake-up on deletion is
        # keyed EPOLLIN and does not wake this poller, and a macvtap's fd says nothing at all: the
        # RTM_DELLINK on rtnetlink is what wakes it, for both.
        poller.register(self._link.fd, 0)
        watch = self._link_watch
        if watch is not None:
            poller.register(watch.fileno(), select.POLLIN)
        alive_checked = time.monotonic()
        while True:
            # The RX count is read off the used ring's 16-bit index: sampling every TALLY_MS keeps
            # fewer than 65536 entries between two samples up to 3 million frames/s per queue.
            ready = dict(poller.poll(TALLY_MS))
            self._counted()
            if self._stop_fd in ready:
                return
            if self._mem_gone and not self._faults:
                # As the userspace path's memory_gone: both rings stop, the device hears it once.
                for q in self._queues:
                    self._faults[q] = lib.VNB_FAULT_MEM_GONE
                    io.net_set_backend(self.fd, q, -1)
                os.eventfd_write(dev_err_fd, 1)
            bits = ready.pop(self._link.fd, 0) & (select.POLLERR | select.POLLHUP)
            if watch is not None and ready.pop(watch.fileno(), 0) and watch.deleted() and not link_alive(self._link.fd):
                bits |= select.POLLHUP
            # Once a heartbeat: a link moved to another namespace and deleted there sends nothing here.
            now = time.monotonic()
            if watch is not None and now - alive_checked >= lib.VNB_DP_HEARTBEAT_MS / 1000:
                alive_checked = now
                if not link_alive(self._link.fd):
                    bits |= select.POLLHUP
            if bits and not self._link_down:
                self._link_down = bits
                poller.unregister(self._link.fd)
                for q in self._queues:
                    io.net_set_backend(self.fd, q, -1)
                os.eventfd_write(dev_err_fd, 1)
            for efd in ready:
                try:
                    os.eventfd_read(efd)
                except BlockingIOError:
                    continue
                q = by_fd[efd]
                if q in self._faults:
                    continue
                base = io.get_vring_base(self.fd, q)
                self._faults[q] = diagnose(self._mem, self._queues[q], q, self._features, base)
                io.net_set_backend(self.fd, q, -1)   # stop the queue, as the userspace path does
                os.eventfd_write(dev_err_fd, 1)

    def stop(self) -> dict[int, QueueState]:
        if not self.running:
            return {}
        os.eventfd_write(self._stop_fd, 1)
        if self._watcher:
            self._watcher.join()
        states = {}
        for q, cfg in sorted(self._queues.items()):
            io.net_set_backend(self.fd, q, -1)
            last_avail = io.get_vring_base(self.fd, q)
            # After the backend is detached the worker has flushed: used->idx in memory is vhost's last_used_idx.
            try:
                used_idx = struct.unpack("<H", self._mem.read(cfg.used + 2, 2))[0]
            except GuestMemoryGone:
                used_idx = last_avail      # nothing to resume over: the memory is gone
                self._faults.setdefault(q, lib.VNB_FAULT_MEM_GONE)
            states[q] = QueueState(last_avail, used_idx, q in self._faults, self._faults.get(q, 0))
        self._counted(fold=True)   # the worker has flushed: the tallies' last sample
        self._final = self.stats()
        for efd in list(self._err.values()) + [self._stop_fd]:
            os.close(efd)
        if self._link_watch is not None:
            self._link_watch.close()
            self._link_watch = None
        self._err, self._stop_fd, self._watcher = {}, -1, None
        self.running = False
        return states

    def close(self) -> None:
        self.stop()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # --- observation ---
    def faults(self) -> dict[int, int]:
        return dict(self._faults)

    def link_down(self) -> int:
        return self._link_down

    def stalled_for(self) -> float | None:
        return None   # the kernel's worker shows no heartbeat; its stalls are the kernel's to report

    def threads(self) -> list[int]:
        """This device's vhost worker(s), still alive."""
        return [t for t in self._own_workers if os.path.exists(f"/proc/{t}")]

    def stats(self) -> DatapathStats:
        if not self.running:
            return self._final or DatapathStats(not_counted=_NOT_COUNTED)
        d = self._link_counters.delta()
        workers = self.threads()
        cpu = sum(thread_cpu_ns(t, t) - self._workers0.get(t, (0, 0))[0] for t in workers)
        wake = sum(voluntary_switches(t, t) - self._workers0.get(t, (0, 0))[1] for t in workers)
        faults: dict[str, int] = {}
        for code in self._faults.values():
            name = FAULT_NAMES[code] if 0 < code < len(FAULT_NAMES) else VhostFault.name
            faults[name] = faults.get(name, 0) + 1
        # The kernel keeps no per-vring counters: frames come from the used rings (TX: sent to the
        # link; RX: placed in guest buffers), TX bytes from the link's own counters (the ring does not
        # say them; with several queue pairs they are the link's, all pairs'), wake-ups from the
        # worker's context switches.
        counted = self._counted()
        rx_frames, rx_bytes = counted[spec.RX_QUEUE]
        return DatapathStats(tx_frames=counted[spec.TX_QUEUE][0], tx_bytes=d.tx_bytes, rx_frames=rx_frames,
                             rx_bytes=rx_bytes, syscalls=0, wakeups=wake, worker_cpu_ns=cpu,
                             link_rx_dropped=d.rx_dropped, link_tx_dropped=d.tx_dropped, faults=faults,
                             link_down=self._link_down, not_counted=_NOT_COUNTED)
