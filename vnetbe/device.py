"""VirtioNet: the virtio-net device model (features, config space, status, queues) in front of a
link (macvtap/tap) and a datapath (``user`` or ``vhost``) that moves the frames.

Two kinds of callers drive it through the same door: ``GuestDriver`` (vnetbe's own front end for
tests and benchmarks) and a VMM that describes its guest's queues with ``set_queue``.
"""
from __future__ import annotations

import os
import select
import struct
import threading
import time

from . import snapshot, spec
from .ctrl import CTRL_ERRORS, ControlQueue, LinkFilters
from .datapath import make as make_datapath
from .errors import ConfigError, DatapathStalled, GuestFault, LinkGone, SnapshotRefused
from .faults import fault_from_code
from .link import tun_offload_from_virtio
from .queue import QueueConfig, QueueState


def _sum_stats(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict):
            out[k] = _sum_stats(out.get(k, {}), v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = out.get(k, 0) + v
        else:
            out[k] = v
    return out



STALL_POLL_S = 0.25           # wait_fault looks for a stalled datapath this often
MAX_BUSYLOOP_US = 10_000_000   # busy polling longer than 10 s is a mistake, not a setting

class VirtioNet:
    """A virtio-net device over ``link`` using guest memory ``mem``.

    ``mem`` may be None when the memory arrives later (``set_memory``, as a vhost-user front end sends it).
    Lifecycle follows the spec's status bits: the driver reads ``device_features``, calls
    ``set_driver_features`` (FEATURES_OK), ``set_queue`` for RX (0) and TX (1), then ``start``
    (DRIVER_OK). A guest fault stops its queue and sets DEVICE_NEEDS_RESET; ``check()`` raises it.

    With ``queues`` = N > 1 pairs the device offers MQ and has virtqueues rx0, tx0, rx1, tx1, ...,
    the link one queue fd per pair; only pair 0 runs until the driver's VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET
    says more. The control queue (CTRL_VQ, index 2N) is served by the device when the driver sets it
    up (vnetbe/ctrl.py); a VMM that keeps it to itself says what its driver asked with
    ``set_queue_pairs``.
    """

    def __init__(self, mem, link, datapath: str = "user", *, features: int | None = None,
                 mac: str | None = None, mtu: int | None = None, busyloop_us: int = 0, queues: int = 1):
        self.mem = mem
        self.link = link
        self.datapath_name = datapath
        # Busy polling, on either datapath: after the last work, poll this long before sleeping.
        self.busyloop_us = busyloop_us
        if not 0 <= self.busyloop_us <= MAX_BUSYLOOP_US:
            raise ConfigError(f"busyloop_us: 0 .. {MAX_BUSYLOOP_US} (10 s)")
        if not isinstance(queues, int) or not 1 <= queues <= spec.MAX_QUEUE_PAIRS:
            raise ConfigError(f"queues={queues!r}: a device has 1 .. {spec.MAX_QUEUE_PAIRS} queue pairs")
        self.max_queue_pairs = queues
        self.queue_pairs = 1      # pairs the driver runs (VQ_PAIRS_SET); only pair 0 until it says more
        if link.queue_fds != [link.fd] or queues > 1:
            link.set_queues(queues)
        self._datapath = make_datapath(datapath, queues)
        mq = spec.bit(spec.VIRTIO_NET_F_MQ) if queues > 1 else 0
        offered = (spec.DEVICE_FEATURES | spec.CTRL_FEATURES | spec.ANNOUNCE_FEATURES | mq) if features is None else features
        # MQ and the control queue's features are the device model's: every datapath serves pairs.
        self.device_features = offered & (self._datapath.supported_features | spec.MODEL_FEATURES)
        self.ctrl_index = 2 * queues
        self._ctrl: ControlQueue | None = None
        self._ctrl_faults: dict[int, int] = {}
        self.ctrl_commands = dict.fromkeys(CTRL_ERRORS, 0)   # by verdict: "none" = carried out
        self.ctrl_error: str | None = None      # why the control thread stopped, if not by a ring fault
        self._announce = False   # config status ANNOUNCE: set after a migration, cleared by the driver's ack
        self.link_filters = LinkFilters(link)   # what control commands changed on the link, to undo
        # set_queue_pairs runs on the control queue's thread as well as the caller's.
        self._lock = threading.RLock()
        self.mac = mac or link.mac
        self.mtu = mtu or link.mtu
        self.driver_features = 0
        self._status = spec.ACKNOWLEDGE | spec.DRIVER
        self.queues: dict[int, QueueConfig] = {}
        self.err_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._retired: dict = {}
        self._on_close: list = []   # resources of a driver bound to this device (GuestDriver's eventfds)
        self.running = False
        self.closed = False

    @property
    def status(self) -> int:
        """Device status (§2.1); DEVICE_NEEDS_RESET as soon as a datapath has stopped a queue or lost
        its link."""
        if self._datapath.faults() or self._ctrl_faults or self._datapath.link_down():
            self._status |= spec.DEVICE_NEEDS_RESET
        return self._status

    @status.setter
    def status(self, value: int) -> None:
        self._status = value

    # --- config space (§5.1.4) ---
    def config_space(self) -> bytes:
        """struct virtio_net_config (VIRTIO 1.2 §5.1.4), 24 bytes little-endian: mac[6], status,
        max_virtqueue_pairs, mtu, then speed (unknown: 0xffffffff) and duplex (unknown: 0xff), which a
        driver reads only with SPEED_DUPLEX, and zeros for the RSS fields (no VIRTIO_NET_F_RSS). A VMM
        reads any window of it (Cloud Hypervisor asks for the first 17 bytes). The link is up until
        the datapath has lost it."""
        link_status = 0 if self._datapath.link_down() else spec.VIRTIO_NET_S_LINK_UP
        if self._announce:
            link_status |= spec.VIRTIO_NET_S_ANNOUNCE
        return (bytes.fromhex(self.mac.replace(":", "")) + struct.pack("<HHH", link_status, self.max_queue_pairs,
                                                                     self.mtu)
                + struct.pack("<IBBHI", 0xFFFFFFFF, 0xFF, 0, 0, 0))

    # --- negotiation ---
    @property
    def hdr_len(self) -> int:
        f = self.driver_features
        modern = f & (spec.bit(spec.VIRTIO_F_VERSION_1) | spec.bit(spec.VIRTIO_NET_F_MRG_RXBUF))
        return spec.NET_HDR_LEN if modern else spec.NET_HDR_LEN_LEGACY

    def has(self, feature_bit: int) -> bool:
        return bool(self.driver_features & spec.bit(feature_bit))

    def set_driver_features(self, features: int) -> int:
        if self.running:
            raise ConfigError("features can only change before the device is started")
        extra = features & ~self.device_features
        if extra:
            raise ConfigError(f"driver asked for features the device does not offer: "
                              f"{', '.join(spec.features_to_names(extra)) or hex(extra)}")
        self.driver_features = features
        self.status |= spec.FEATURES_OK
        return features

    def set_queue(self, index: int, cfg: QueueConfig | None = None, **kw) -> None:
        """Describe queue ``index`` (2p = RX, 2p+1 = TX of pair p, 2N the control queue): a QueueConfig
        or its fields as keywords."""
        if index == self.ctrl_index and isinstance(index, int):
            if not self.has(spec.VIRTIO_NET_F_CTRL_VQ):
                raise ConfigError(f"queue {index} is the control queue: negotiate VIRTIO_NET_F_CTRL_VQ first")
        elif not isinstance(index, int) or not 0 <= index < 2 * self.max_queue_pairs:
            raise ConfigError(f"queue index {index}: this device has RX (0) and TX (1)" if self.max_queue_pairs == 1
                              else f"queue index {index}: this device has queues 0 .. {2 * self.max_queue_pairs - 1}"
                                   f" ({self.max_queue_pairs} pairs)")
        cfg = cfg or QueueConfig(**kw)
        if self.mem is None:
            raise ConfigError("set_queue() before the guest memory is known: call set_memory() first")
        cfg.validate(self.mem, self.has(spec.VIRTIO_RING_F_EVENT_IDX), self.has(spec.VIRTIO_F_RING_PACKED))
        self.queues[index] = cfg

    def remove_queue(self, index: int) -> None:
        """Forget queue ``index`` (a front end stopped that ring); only while the device is stopped."""
        if self.running:
            raise ConfigError("queues can only be removed while the device is stopped")
        self.queues.pop(index, None)

    def set_memory(self, mem) -> None:
        """The guest memory the queues live in (a vhost-user front end sends it after the device
        exists, and may replace it); only while the device is stopped."""
        if self.running:
            raise ConfigError("guest memory can only change while the device is stopped")
        self.mem = mem

    def set_queue_pairs(self, n: int) -> None:
        """How many queue pairs run (VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, §5.1.6.5.5): pairs 0 .. n-1. A
        running device stops and starts again over them, each ring from where it stood."""
        if not isinstance(n, int) or not 1 <= n <= self.max_queue_pairs:
            raise ConfigError(f"{n!r} queue pairs: this device has 1 .. {self.max_queue_pairs}")
        if n > 1 and self.driver_features and not self.has(spec.VIRTIO_NET_F_MQ):
            raise ConfigError(f"{n} queue pairs without VIRTIO_NET_F_MQ negotiated")
        with self._lock:
            if n == self.queue_pairs:
                return
            if not self.running:
                self.queue_pairs = n
                return
            old = self.queue_pairs
            self._datapath_stop()
            self.queue_pairs = n
            try:
                self._datapath_start()
            except BaseException:
                self.queue_pairs = old       # as it was: the pairs that ran go on
                self._datapath_start()
                raise

    def served_queues(self) -> dict[int, QueueConfig]:
        """The queues the datapath serves: those set up, of the pairs that run."""
        return {q: cfg for q, cfg in self.queues.items() if q // 2 < self.queue_pairs}

    # --- running ---
    def start(self) -> None:
        if not self.status & spec.FEATURES_OK:
            raise ConfigError("start() before set_driver_features(): negotiate features first")
        if self.mem is None:
            raise ConfigError("start() without guest memory: call set_memory() first")
        if not self.served_queues():
            raise ConfigError("start() with no queues: call set_queue for RX (0) and/or TX (1)")
        if self.running:
            raise ConfigError("start() on a running device: stop() it first")
        self._configure_link()
        with self._lock:
            ctrl = self._ctrl_make()
            try:
                self._datapath_start()
            except BaseException:
                if ctrl is not None:
                    ctrl.stop()
                raise
            self.status |= spec.DRIVER_OK
            self.running = True
            self._ctrl_run(ctrl)

    def _ctrl_make(self) -> ControlQueue | None:
        cfg = self.queues.get(self.ctrl_index)
        if cfg is None or self.ctrl_index in self._ctrl_faults:
            return None
        return ControlQueue(self, self.ctrl_index, cfg)

    def _ctrl_run(self, ctrl: ControlQueue | None) -> None:
        """Under the lock, so that a stop() sees the control queue it must stop."""
        self._ctrl = ctrl
        if ctrl is not None:
            ctrl.start()

    def _ctrl_stop(self) -> None:
        """Stop serving the control queue (before the datapath: a command may change the pairs). Its
        thread is joined outside the lock, which it may be waiting for."""
        with self._lock:
            ctrl, self._ctrl = self._ctrl, None
        if ctrl is None:
            return
        st = ctrl.stop()
        cfg = self.queues[self.ctrl_index]
        cfg.last_avail_idx, cfg.used_idx = st.last_avail_idx, st.used_idx

    def ctrl_counted(self, verdict: str) -> None:
        """A control command was answered: ``verdict`` is "none" (done) or why it was refused."""
        self.ctrl_commands[verdict] += 1

    def ctrl_fault(self, index: int, code: int) -> None:
        """The control queue's ring faulted: it stops, the device needs a reset, as for a data queue."""
        self._ctrl_faults[index] = code
        os.eventfd_write(self.err_fd, 1)

    def _configure_link(self) -> None:
        self.link.set_vnet_hdr_len(self.hdr_len)
        # The tap may hand the guest only what the guest said it can take (GUEST_CSUM/TSO).
        self.link.set_offload(tun_offload_from_virtio(self.driver_features))

    def _datapath_start(self) -> None:
        # The model's features (MQ, the control queue's) are not the datapath's: the kernel's vhost-net
        # does not know them, and a pair's datapath has nothing to do with them.
        self._datapath.start(self.mem, self.driver_features & ~spec.MODEL_FEATURES, self.hdr_len,
                             self.served_queues(), self.link, self.err_fd, self.busyloop_us)

    def _datapath_stop(self) -> dict[int, QueueState]:
        states = self._datapath.stop()
        for q, st in states.items():
            self.queues[q].last_avail_idx = st.last_avail_idx
            self.queues[q].used_idx = st.used_idx
        return states

    def stop(self) -> dict[int, QueueState]:
        """Stop the datapath; the rings keep their state (returned, and kept for a later start)."""
        if not self.running:
            return {}
        self._ctrl_stop()
        with self._lock:
            states = self._datapath_stop()
            self.running = False
            self.status &= ~spec.DRIVER_OK
        return states

    def switch_datapath(self, name: str) -> dict[int, QueueState]:
        """Hand the live rings to another datapath: stop, carry last_avail_idx/used_idx over, start."""
        if name == self.datapath_name:
            return {}
        new = make_datapath(name, self.max_queue_pairs)
        odd = [q for q, cfg in self.queues.items() if cfg.polled or cfg.discard]
        if odd and not new.ring_modes:
            new.close()
            raise ConfigError(f"the {name} datapath cannot take over ring {odd[0]}: it is polled (no kicks) or "
                              "started but disabled, which only user and uring serve")
        was_running = self.running
        states = self.stop()
        self._retired = _sum_stats(self._retired, self._datapath.stats().as_dict())
        self._datapath.close()
        self._datapath = new
        self.datapath_name = name
        if was_running:
            with self._lock:
                self._datapath_start()
                self.running = True
                self.status |= spec.DRIVER_OK
                self._ctrl_run(self._ctrl_make())
            self._nudge()
        return states

    # --- live migration ---
    def start_dirty_log(self, log) -> None:
        """Log every write the device makes to guest memory in ``log`` (a DirtyLog covering the memory),
        from now until ``stop_dirty_log``: a VMM's pre-copy harvests it (``log.dirty_pages()``) and
        copies those pages again. A running device pauses its datapath for the switch and goes on from
        where its rings stood; nothing it wrote before is in the log (the VMM copies all once first)."""
        self._switch_log(log)

    def stop_dirty_log(self) -> None:
        self._switch_log(None)

    @property
    def dirty_log(self):
        return self.mem.log if self.mem is not None else None

    def _switch_log(self, log) -> None:
        if self.mem is None:
            raise ConfigError("a dirty log needs the guest memory first: set_memory()")
        was_running = self.running
        if was_running:
            self._ctrl_stop()
        with self._lock:
            if was_running:
                self._datapath_stop()
            try:
                self.mem.set_log(log)
            finally:
                if was_running:
                    self._datapath_start()
                    self._ctrl_run(self._ctrl_make())

    def save(self) -> bytes:
        """The stopped device's state, versioned and checksummed (vnetbe/snapshot.py says what is in it):
        a VMM stops the device with its vCPUs, saves, and restores it with ``VirtioNet.restore`` in
        another process (after the migration copied the guest memory). Its rings do not move while
        stopped, so the positions saved are those the destination starts from."""
        if self.running:
            raise ConfigError("save() on a running device: stop() it first (its rings move while it runs)")
        if self.mem is None:
            raise ConfigError("save() before the device has guest memory: there is no state to save")
        faults = self.faults()
        if faults:
            q = min(faults)
            raise ConfigError(f"save() of a device that needs a reset ({fault_from_code(faults[q], q)}): reset it")
        packed = self.has(spec.VIRTIO_F_RING_PACKED)
        queues = []
        for index, cfg in sorted(self.queues.items()):
            last_avail, used = cfg.base(packed)
            queues.append({"index": index, "size": cfg.size, "desc": cfg.desc, "avail": cfg.avail, "used": cfg.used,
                           "last_avail_idx": last_avail, "used_idx": used, "polled": cfg.polled,
                           "enabled": not cfg.discard})
        return snapshot.encode({
            "max_queue_pairs": self.max_queue_pairs, "queue_pairs": self.queue_pairs,
            "device_features": self.device_features, "driver_features": self.driver_features,
            "mac": self.mac, "mtu": self.mtu, "announce": self._announce,
            "memory": [[r.gpa, r.size] for r in self.mem.regions], "queues": queues,
            "rx_filters": dict(self.link_filters.now)})

    @classmethod
    def restore(cls, data: bytes, mem, link, fds: dict[int, tuple[int, int]], datapath: str = "user", *,
                busyloop_us: int = 0) -> "VirtioNet":
        """A device from ``save()``'s snapshot over ``mem`` (the same guest memory, as the migration
        copied it) and ``link``; ``fds`` gives each saved queue its (kick_fd, call_fd). It offers what the
        saved device offered (less what ``datapath`` cannot do), has the saved features negotiated, its
        queues set where they stood, the driver's RX filters on ``link``; ``start()`` runs it.
        SnapshotRefused names what does not fit: a corrupt or newer snapshot, another memory
        layout, a used index in memory that is not the saved one, negotiated features this device does
        not offer, a ring outside the memory, a queue without fds."""
        body = snapshot.decode(data)
        snapshot.check_memory(body, mem)
        missing = sorted({q["index"] for q in body["queues"]} - set(fds))
        if missing:
            raise SnapshotRefused(f"restore: no (kick_fd, call_fd) for queue(s) {missing}")
        dev = cls(mem, link, datapath, features=body["device_features"], mac=body["mac"], mtu=body["mtu"],
                  busyloop_us=busyloop_us, queues=body["max_queue_pairs"])
        try:
            lost = body["driver_features"] & ~dev.device_features
            if lost:
                raise SnapshotRefused(
                    f"snapshot: the driver negotiated {', '.join(spec.features_to_names(lost)) or hex(lost)}, "
                    f"which the {datapath} datapath here does not offer")
            dev.set_driver_features(body["driver_features"])
            packed = dev.has(spec.VIRTIO_F_RING_PACKED)
            for q in body["queues"]:
                kick, call = fds[q["index"]]
                cfg = QueueConfig(q["size"], q["desc"], q["avail"], q["used"], kick, call,
                                  last_avail_idx=q["last_avail_idx"], used_idx=q["used_idx"], polled=q["polled"],
                                  discard=not q["enabled"])
                if (cfg.polled or cfg.discard) and not dev._datapath.ring_modes:
                    raise SnapshotRefused(f"snapshot: queue {q['index']} is polled or started but disabled, "
                                                   f"which the {datapath} datapath does not serve (user, uring do)")
                try:
                    dev.set_queue(q["index"], cfg)
                except ConfigError as e:
                    raise SnapshotRefused(f"snapshot: queue {q['index']}: {e}") from None
                snapshot.check_used_index(q["index"], cfg, mem, packed)
            dev.set_queue_pairs(body["queue_pairs"])
            dev._announce = body["announce"]
            dev.link_filters.apply(body["rx_filters"])
            dev.mac = body["rx_filters"].get("mac", body["mac"])
        except BaseException:
            dev.close()
            raise
        return dev

    def announce(self) -> bool:
        """After a migration: ask the driver to announce the guest (gratuitous ARPs), as QEMU's virtio-net
        does, by setting the config status ANNOUNCE bit; the VMM then signals a configuration change.
        The driver's VIRTIO_NET_CTRL_ANNOUNCE_ACK clears it. False (and nothing set) unless the driver
        negotiated GUEST_ANNOUNCE: then the VMM sends a RARP for it (as vhost-user's SEND_RARP)."""
        if not (self.has(spec.VIRTIO_NET_F_GUEST_ANNOUNCE) and self.has(spec.VIRTIO_NET_F_CTRL_VQ)):
            return False
        self._announce = True
        return True

    def announce_acked(self) -> None:
        """VIRTIO_NET_CTRL_ANNOUNCE_ACK: the driver has announced the guest."""
        self._announce = False

    def _nudge(self) -> None:
        """After a hand-over, one spurious kick and interrupt per queue. With EVENT_IDX the driver may
        have posted buffers without kicking (the old datapath was polling), and vhost only looks at a
        TX ring when kicked; the driver may be waiting for an interrupt the old datapath suppressed.
        Both sides treat a spurious notification as a cue to look at the ring, so this is always safe."""
        for cfg in self.served_queues().values():
            os.eventfd_write(cfg.kick_fd, 1)
            os.eventfd_write(cfg.call_fd, 1)

    def on_close(self, fn) -> None:
        """Call ``fn`` when the device closes, after its datapath stopped: for what a driver bound to
        it holds that the datapath uses until then (GuestDriver's kick and call eventfds)."""
        self._on_close.append(fn)

    def reset(self) -> None:
        """Device reset (status 0, §2.1.1): the datapath stops touching the rings, the queues and the
        negotiated features are forgotten, faults and DEVICE_NEEDS_RESET clear, and a fresh datapath
        of the same kind waits for the driver to negotiate again. Counters carry on."""
        self.stop()
        self._retired = _sum_stats(self._retired, self._datapath.stats().as_dict())
        self._datapath.close()
        self._datapath = make_datapath(self.datapath_name, self.max_queue_pairs)
        self.queues = {}
        self.queue_pairs = 1
        self._ctrl_faults = {}
        self.ctrl_error = None
        self._announce = False
        self.link_filters.restore()
        self.driver_features = 0
        self._status = 0
        try:
            os.eventfd_read(self.err_fd)   # a fault signalled before the reset is history
        except BlockingIOError:
            pass

    @property
    def datapath(self):
        return self._datapath

    # --- faults and counters ---
    def faults(self) -> dict[int, int]:
        f = {**self._datapath.faults(), **self._ctrl_faults}
        if f:
            self.status |= spec.DEVICE_NEEDS_RESET
        return f

    def check(self) -> None:
        """Raise what stopped the device, if anything: a LinkGone, or the GuestFault of a queue."""
        err = self._failure()
        if err is not None:
            raise err

    def _failure(self) -> LinkGone | GuestFault | DatapathStalled | None:
        stalled = self._datapath.stalled_for()
        if stalled is not None:
            tids = ", ".join(map(str, self._datapath.threads())) or "?"
            return DatapathStalled(f"the {self.datapath_name} datapath thread (tid {tids}) has not run its loop "
                                   f"for {stalled:.1f} s while the device runs (it wakes at least once a second "
                                   "when idle): it is stuck; close the device")
        bits = self._datapath.link_down()
        if bits:
            how = " and ".join(n for n, b in (("error", select.POLLERR), ("hang-up", select.POLLHUP)) if bits & b)
            return LinkGone(f"link {self.link.name} reported {how or hex(bits)} under the running "
                            f"{self.datapath_name} datapath (was its interface deleted?): the device "
                            "stopped moving frames; close it and attach a new link")
        for q, code in sorted(self.faults().items()):
            return fault_from_code(code, q)
        return None

    def wait_fault(self, timeout: float) -> LinkGone | GuestFault | DatapathStalled | None:
        """Wait up to ``timeout`` s for a datapath to report a guest fault or a lost link, or for its
        thread to stall; return it (not raised)."""
        deadline = time.monotonic() + timeout
        while True:
            # A stall signals nothing: look again every STALL_POLL_S.
            left = deadline - time.monotonic()
            r, _, _ = select.select([self.err_fd], [], [], max(min(left, STALL_POLL_S), 0))
            if r:
                try:
                    os.eventfd_read(self.err_fd)
                except BlockingIOError:
                    pass
            err = self._failure()
            if err is not None or left <= 0:
                return err

    def stats(self) -> dict:
        """The datapath's counters (DatapathStats, as a dict) summed over every datapath this device
        has had, with ``datapath``, ``status`` and the negotiated ``features``."""
        cur = self._datapath.stats().as_dict()
        out = _sum_stats(self._retired, cur) if self._retired else cur
        out["datapath"] = self.datapath_name
        out["status"] = self.status
        out["features"] = self.driver_features
        out["queue_pairs"] = self.queue_pairs
        out["ctrl_commands"] = dict(self.ctrl_commands)
        if self.ctrl_error:
            out["ctrl_error"] = self.ctrl_error
        # Per pair, this datapath's since it started (a hand-over's earlier datapaths are in the totals).
        out["pairs"] = self._datapath.pair_stats()
        return out

    def threads(self) -> list[int]:
        return self._datapath.threads()

    def pair_threads(self) -> dict[int, list[int]]:
        """pair -> its threads (datapath thread first; vhost: its worker), for the running pairs."""
        return self._datapath.pair_threads()

    # --- lifetime ---
    def close(self) -> None:
        if self.closed:
            return
        try:
            self.stop()
            self._datapath.close()
            self.link_filters.restore()
        finally:
            for fn in reversed(self._on_close):
                fn()
            os.close(self.err_fd)
            self.closed = True

    def __enter__(self) -> "VirtioNet":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
