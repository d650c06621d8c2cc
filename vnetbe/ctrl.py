"""The control virtqueue (VIRTIO 1.2 §5.1.6.5), served by the device itself for a driver that talks to
it directly (a Python VMM's guest, vnetbe's GuestDriver). Behind vhost-user the control queue is the
front end's, which tells the device what it decided (``VirtioNet.set_queue_pairs``), and none of this runs.

The C side pops each command, gathers it and judges it against the negotiated features and the
command's layout (csrc/device/vnb_ctrl.c, every guest access behind the SIGBUS guard); this file runs
the thread that waits for kicks and applies what is valid: VQ_PAIRS_SET runs that many pairs, RX
PROMISC/ALLMULTI set the link's flags, MAC_TABLE_SET's multicast entries become the link's multicast
filter (SIOCADDMULTI, as macvlan filters by them), MAC_ADDR_SET is the link's MAC. Every refusal
answers VIRTIO_NET_ERR and is counted by name (``ctrl_errors`` in the device's stats), and the device
goes on.
"""
from __future__ import annotations

import os
import select
import struct
import threading

from . import spec
from ._native import ffi, lib
from .errors import ConfigError
from .faults import enum_names
from .queue import QueueConfig, QueueState

CTRL_ERRORS = enum_names("vnb_ctrl_err", "VNB_CTRL_E_")   # [0] "none": a valid command

_UNSUPPORTED = lib.VNB_CTRL_E_UNSUPPORTED


def ctrl_flags(features: int) -> int:
    """The VNB_CTRL_F_* flags vnb_ctrl_check takes, from negotiated feature bits."""
    has = lambda b: bool(features & spec.bit(b))
    return ((lib.VNB_CTRL_F_RX if has(spec.VIRTIO_NET_F_CTRL_RX) else 0)
            | (lib.VNB_CTRL_F_RX_EXTRA if has(spec.VIRTIO_NET_F_CTRL_RX_EXTRA) else 0)
            | (lib.VNB_CTRL_F_MAC_ADDR if has(spec.VIRTIO_NET_F_CTRL_MAC_ADDR) else 0)
            | (lib.VNB_CTRL_F_ANNOUNCE if has(spec.VIRTIO_NET_F_GUEST_ANNOUNCE) else 0)
            | (lib.VNB_CTRL_F_MQ if has(spec.VIRTIO_NET_F_MQ) else 0))


def check(cls: int, cmd: int, data: bytes, features: int, max_pairs: int) -> str:
    """The name of why a command would be refused ("none": it is valid); for tests and the fuzzer."""
    return CTRL_ERRORS[lib.vnb_ctrl_check(cls, cmd, data, len(data), ctrl_flags(features), max_pairs)]


def mac_table(data: bytes) -> tuple[list[bytes], list[bytes]]:
    """MAC_TABLE_SET's (unicast, multicast) entries; ``data`` already passed vnb_ctrl_check."""
    out, at = [], 0
    for _ in range(2):
        n = struct.unpack_from("<I", data, at)[0]
        at += 4
        out.append([data[at + 6 * i:at + 6 * i + 6] for i in range(n)])
        at += 6 * n
    return out[0], out[1]


class ControlQueue:
    """Serves the control queue ``cfg`` of ``dev`` on a thread of its own while the device runs."""

    def __init__(self, dev, index: int, cfg: QueueConfig):
        self.dev, self.index, self.cfg = dev, index, cfg
        packed = dev.has(spec.VIRTIO_F_RING_PACKED)
        self._vq = ffi.new("struct vnb_vq *")
        if lib.vnb_vq_init(self._vq, dev.mem.table, cfg.size, cfg.desc, cfg.avail, cfg.used,
                           spec.ring_flags(dev.driver_features)) < 0:
            raise ConfigError(f"control queue {index}: its ring is not inside guest memory")
        if cfg.log_used is not None:
            lib.vnb_vq_set_log_addr(self._vq, cfg.log_used)
        last_avail, used = cfg.base(packed)
        if lib.vnb_vq_set_base(self._vq, last_avail & 0xFFFF, used & 0xFFFF) < 0:
            raise ConfigError(f"control queue {index}: base beyond the ring")
        self._req = ffi.new("struct vnb_ctrl_req *")
        self._flags = ctrl_flags(dev.driver_features)
        # Our own references to the driver's eventfds, as an epoll registration holds the C datapath's:
        # a VMM that closes its kick or call fd while the device runs then only goes unheard, and the fd
        # numbers it freed (maybe reused for something else) are never polled or written here.
        try:
            self._kick, self._call = os.dup(cfg.kick_fd), os.dup(cfg.call_fd)
        except OSError as e:
            raise ConfigError(f"control queue {index}: its kick or call fd is not open ({e.strerror})") from None
        self._stop = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._stopping = threading.Event()   # looked at between commands: a guest posting without end
        self._thread: threading.Thread | None = None
        self.fault = 0        # the ring fault (or VNB_FAULT_MEM_GONE) that stopped the queue

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="vnetbe-ctrl", daemon=True)
        self._thread.start()

    def stop(self) -> QueueState:
        """Stop the thread; where the ring stands (kept for a later start)."""
        if self._thread is not None:
            self._stopping.set()
            os.eventfd_write(self._stop, 1)
            self._thread.join()
            self._thread = None
        for fd in (self._stop, self._kick, self._call):
            os.close(fd)
        self._stop = self._kick = self._call = -1
        a, u = ffi.new("uint16_t *"), ffi.new("uint16_t *")
        lib.vnb_vq_get_base(self._vq, a, u)
        return QueueState(a[0], u[0], bool(self.fault), self.fault)

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as e:   # a bug here must not end the thread unseen: the queue stops, and says why
            self.dev.ctrl_error = f"control queue {self.index} stopped: {type(e).__name__}: {e}"
            self._failed(lib.VNB_FAULT_NONE)

    def _loop(self) -> None:
        poller = select.poll()
        poller.register(self._kick, select.POLLIN)
        poller.register(self._stop, select.POLLIN)
        while not self.fault and not self._stopping.is_set():
            self._serve()          # also at once: commands may have come before the device started
            if self.fault or self._stopping.is_set():
                return
            r = lib.vnb_ctrl_enable_notify(self._vq)
            if r < 0:
                self._failed(lib.VNB_FAULT_MEM_GONE)
                return
            if r > 0:
                continue           # a command came while notifications were off
            ready = dict(poller.poll())
            if self._stop in ready:
                return
            try:
                os.eventfd_read(self._kick)
            except BlockingIOError:
                pass

    def _serve(self) -> None:
        req = self._req
        while not self._stopping.is_set():
            r = lib.vnb_ctrl_pop(self._vq, req)
            if r == 0:
                return
            if r < 0:   # the ring itself is broken (or its memory gone): the queue stops, as a datapath's
                self._failed(self._vq.fault if self._vq.broken else lib.VNB_FAULT_MEM_GONE)
                return
            err = req.err or lib.vnb_ctrl_check(req.cls, req.cmd, req.data, req.len, self._flags,
                                                self.dev.max_queue_pairs)
            if not err:
                err = self._apply(req.cls, req.cmd, bytes(ffi.buffer(req.data, req.len)))
            self.dev.ctrl_counted(CTRL_ERRORS[err])
            n = lib.vnb_ctrl_complete(self._vq, req, spec.VIRTIO_NET_OK if not err else spec.VIRTIO_NET_ERR)
            if n < 0:
                self._failed(lib.VNB_FAULT_MEM_GONE)
                return
            if n:
                os.eventfd_write(self._call, 1)

    def _failed(self, fault: int) -> None:
        self.fault = fault
        self.dev.ctrl_fault(self.index, fault)

    def _apply(self, cls: int, cmd: int, data: bytes) -> int:
        """Carry a valid command out: 0, or VNB_CTRL_E_UNSUPPORTED when it cannot be (the link refused)."""
        dev, link = self.dev, self.dev.link
        try:
            if cls == spec.VIRTIO_NET_CTRL_MQ and cmd == spec.VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET:
                dev.set_queue_pairs(struct.unpack("<H", data)[0])
            elif cls == spec.VIRTIO_NET_CTRL_RX and cmd == spec.VIRTIO_NET_CTRL_RX_PROMISC:
                dev.link_filters.set_promisc(bool(data[0]))
            elif cls == spec.VIRTIO_NET_CTRL_RX and cmd == spec.VIRTIO_NET_CTRL_RX_ALLMULTI:
                dev.link_filters.set_allmulti(bool(data[0]))
            elif cls == spec.VIRTIO_NET_CTRL_MAC and cmd == spec.VIRTIO_NET_CTRL_MAC_ADDR_SET:
                # A macvtap's MAC is the guest's; a tap's is the host side's, which must differ from it.
                if getattr(link, "kind", "pair") == "tap":
                    return _UNSUPPORTED
                dev.link_filters.set_mac(":".join(f"{b:02x}" for b in data))
                dev.mac = link.mac
            elif cls == spec.VIRTIO_NET_CTRL_MAC and cmd == spec.VIRTIO_NET_CTRL_MAC_TABLE_SET:
                unicast, multicast = mac_table(data)
                # A tap or macvtap delivers only its own MAC's unicast: other unicast addresses would
                # need promiscuity, which the driver asks for itself when it wants it (CTRL_RX PROMISC).
                if any(m != bytes.fromhex(link.mac.replace(":", "")) for m in unicast):
                    return _UNSUPPORTED
                if any(not m[0] & 1 for m in multicast):
                    return lib.VNB_CTRL_E_MAC_TABLE
                dev.link_filters.set_multicast(multicast)
            elif cls == spec.VIRTIO_NET_CTRL_ANNOUNCE and cmd == spec.VIRTIO_NET_CTRL_ANNOUNCE_ACK:
                dev.announce_acked()
            else:
                return _UNSUPPORTED   # checked valid, yet nothing here does it (RX_EXTRA)
        except Exception:   # the link or the datapath refused: the guest hears ERR, the device goes on
            return _UNSUPPORTED
        return 0


class LinkFilters:
    """What control commands changed on the link (promiscuity, all-multicast, multicast list, MAC),
    with what it was before, so that a reset or close gives the link back as it was found."""

    def __init__(self, link):
        self.link = link
        self._was: dict = {}
        # What the driver asked for, as a snapshot carries it (MACs as text): a restored device sets it again.
        self.now: dict = {}

    def _remember(self, what: str, value, now) -> None:
        self._was.setdefault(what, value)
        self.now[what] = now

    def set_promisc(self, on: bool) -> None:
        self._remember("promisc", self.link.rx_flags()[0], bool(on))
        self.link.set_promisc(on)

    def set_allmulti(self, on: bool) -> None:
        self._remember("allmulti", self.link.rx_flags()[1], bool(on))
        self.link.set_allmulti(on)

    def set_multicast(self, macs: list[bytes]) -> None:
        self._remember("multicast", [], [":".join(f"{b:02x}" for b in m) for m in macs])
        self.link.set_multicast(macs)

    def set_mac(self, mac: str) -> None:
        self._remember("mac", self.link.mac, mac)
        self.link.set_mac(mac)

    def apply(self, now: dict) -> None:
        """Set what another device's driver had asked for (``now`` of a snapshot) on this link."""
        if "promisc" in now:
            self.set_promisc(now["promisc"])
        if "allmulti" in now:
            self.set_allmulti(now["allmulti"])
        if "multicast" in now:
            self.set_multicast([bytes.fromhex(m.replace(":", "")) for m in now["multicast"]])
        if "mac" in now:
            self.set_mac(now["mac"])

    def restore(self) -> None:
        """Undo every change, each attempted; the link may be gone already (then there is nothing to undo)."""
        was, self._was, self.now = self._was, {}, {}
        for what, value in was.items():
            try:
                {"promisc": self.link.set_promisc, "allmulti": self.link.set_allmulti,
                 "multicast": self.link.set_multicast, "mac": self.link.set_mac}[what](value)
            except Exception:   # a deleted or closed link: its filters went with it
                pass
