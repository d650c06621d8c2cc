"""GuestDriver: vnetbe's own virtio-net front end, for tests and benchmarks.

It does what a guest kernel's virtio_net driver does, in C (csrc/tools/vnb_guest.c) for speed: lays the
queues out in the device's guest memory, negotiates features, posts TX chains and RX buffers, kicks
only when the device asks, and waits on the call eventfd (the interrupt, since there is no KVM here).
It talks to the device only through ``VirtioNet``'s public door, exactly as a VMM would.
"""
from __future__ import annotations

import errno
import os
import select
import struct
import time

from .. import spec
from ..errors import ConfigError, VnetError
from ..queue import QueueConfig
from ._native import ffi, lib

LAYOUTS = {"single": 0, "split_hdr": 1, "scatter": 2, "indirect": 3}
# What the guest asks for by default: everything but the packed ring layout, which it asks for with
# packed=True (as a Linux guest under QEMU does with packed=on).
DEFAULT_FEATURES = spec.DEVICE_FEATURES & ~spec.bit(spec.VIRTIO_F_RING_PACKED)


class GuestDriver:
    """A guest's virtio-net driver bound to ``dev``; starts the device.

    ``features``: what the guest wants (default everything the device offers). ``rx_buf_size``:
    bytes per RX buffer (default 2048 with mergeable buffers, else enough for the largest frame).
    ``tx_layout``: how a frame is laid out in descriptors (single, split_hdr, scatter, indirect).
    ``packed``: ask for packed rings (VIRTIO_F_RING_PACKED); ConfigError if the device does not offer them.
    ``pair``: the queue pair it drives (virtqueues 2*pair, 2*pair+1). The driver of pair 0 negotiates
    features (and asks for MQ when the device has several pairs); drivers of other pairs, made after it
    with ``start=False`` on all but the last, share what it negotiated.
    ``ctrl``: pair 0's driver also sets up the control queue (CTRL_VQ, CTRL_RX, CTRL_MAC_ADDR asked, and
    GUEST_ANNOUNCE unless ``features`` says what to ask);
    ``ctrl_command`` sends a command on it, ``set_queue_pairs`` the VQ_PAIRS_SET of ``ethtool -L``.
    """

    def __init__(self, dev, *, queue_size: int = 256, rx_queue_size: int | None = None,
                 features: int | None = None, rx_buf_size: int | None = None, rx_segs: int = 1,
                 tx_layout: str = "single", start: bool = True, packed: bool = False, pair: int = 0,
                 ctrl: bool = False):
        self.dev = dev
        self.pair = pair
        mem = dev.mem
        want = DEFAULT_FEATURES if features is None else features
        if features is None and dev.max_queue_pairs > 1:
            want |= spec.MQ_FEATURES
        if ctrl:
            if pair:
                raise ConfigError("the control queue is set up by pair 0's driver")
            want |= spec.CTRL_FEATURES | (spec.ANNOUNCE_FEATURES if features is None else 0)
        if packed:
            if not dev.device_features & spec.bit(spec.VIRTIO_F_RING_PACKED):
                raise ConfigError("this device does not offer packed rings (VIRTIO_F_RING_PACKED): the vhost "
                                  "datapath cannot serve them; use user or uring")
            want |= spec.bit(spec.VIRTIO_F_RING_PACKED)
        if pair:
            if not 0 < pair < dev.max_queue_pairs:
                raise ConfigError(f"pair {pair}: this device has {dev.max_queue_pairs} queue pairs")
            self.features = dev.driver_features   # pair 0's driver negotiated them
        else:
            self.features = dev.set_driver_features(want & dev.device_features)
        self.packed = bool(self.features & spec.bit(spec.VIRTIO_F_RING_PACKED))
        self.event_idx = bool(self.features & spec.bit(spec.VIRTIO_RING_F_EVENT_IDX))
        self.mrg_rxbuf = bool(self.features & spec.bit(spec.VIRTIO_NET_F_MRG_RXBUF))
        self.indirect = bool(self.features & spec.bit(spec.VIRTIO_RING_F_INDIRECT_DESC))
        self.hdr_len = dev.hdr_len
        self.tx_layout = self._layout(tx_layout)
        ntx = queue_size
        nrx = rx_queue_size or queue_size
        spec.check_queue_size(ntx, self.packed)
        spec.check_queue_size(nrx, self.packed)
        if rx_buf_size is None:
            rx_buf_size = 2048 if self.mrg_rxbuf else spec.MAX_FRAME + self.hdr_len
        if not self.mrg_rxbuf and rx_buf_size < 1514 + self.hdr_len:
            raise ConfigError("without MRG_RXBUF each RX buffer must hold a whole frame (>= 1526 bytes)")
        self.rx_buf_size = rx_buf_size
        self.tx_buf_size = spec.MAX_FRAME + 16 + 128  # header slot + frame + the scatter layout's gaps

        rings = {}
        for q, n in ((spec.RX_QUEUE, nrx), (spec.TX_QUEUE, ntx)):
            if self.packed:   # the descriptor ring, the driver's and the device's event suppression
                rings[q] = (n, mem.alloc(spec.desc_table_size(n), 16),
                            mem.alloc(spec.PACKED_EVENT_SIZE, 4), mem.alloc(spec.PACKED_EVENT_SIZE, 4))
            else:
                rings[q] = (n, mem.alloc(spec.desc_table_size(n), 16),
                            mem.alloc(spec.avail_ring_size(n), 2), mem.alloc(spec.used_ring_size(n), 4))
        self.tx_buf_gpa = mem.alloc(self.tx_buf_size * ntx, 64)
        self.tx_ind_gpa = mem.alloc(16 * lib.VNB_GUEST_MAX_SEGS * ntx, 16)
        self.rx_buf_gpa = mem.alloc(rx_buf_size * nrx, 64)

        self._fds: list[int] = []
        dev.on_close(self.close)   # the device's datapath polls these fds: they die with it
        self.kick_fd = {q: self._eventfd() for q in rings}
        self.call_fd = {q: self._eventfd() for q in rings}
        self.rings = rings
        for q, (n, d, a, u) in rings.items():
            dev.set_queue(2 * pair + q, QueueConfig(n, d, a, u, self.kick_fd[q], self.call_fd[q]))

        flags = spec.ring_flags(self.features)
        self._g = ffi.new("struct vnb_guest *")
        rc = lib.vnb_guest_init(
            self._g, mem.table, flags, self.hdr_len,
            *rings[spec.RX_QUEUE], *rings[spec.TX_QUEUE],
            self.tx_buf_gpa, self.tx_buf_size, self.tx_ind_gpa, self.rx_buf_gpa, rx_buf_size, rx_segs,
            self.kick_fd[0], self.call_fd[0], self.kick_fd[1], self.call_fd[1])
        if rc < 0:
            self.close()
            raise ConfigError(f"guest driver setup failed ({os.strerror(-rc)}): check queue and buffer sizes")
        self._ctrl = None
        if ctrl:
            self._ctrl_setup(dev, mem)
        self._rxbuf = ffi.new("uint8_t[]", spec.MAX_FRAME + 1)
        self._hdr = ffi.new("struct virtio_net_hdr_v1 *")
        # Post RX buffers before DRIVER_OK, as a real driver does: the device may start receiving at once.
        lib.vnb_guest_rx_fill(self._g)
        if start:
            dev.start()

    # --- the control queue (§5.1.6.5) ---
    CTRL_SIZE = 16

    def _ctrl_setup(self, dev, mem) -> None:
        if not self.features & spec.bit(spec.VIRTIO_NET_F_CTRL_VQ):
            raise ConfigError("this device does not offer a control queue (VIRTIO_NET_F_CTRL_VQ)")
        n = self.CTRL_SIZE
        if self.packed:
            d, a, u = (mem.alloc(spec.desc_table_size(n), 16), mem.alloc(spec.PACKED_EVENT_SIZE, 4),
                       mem.alloc(spec.PACKED_EVENT_SIZE, 4))
        else:
            d, a, u = (mem.alloc(spec.desc_table_size(n), 16), mem.alloc(spec.avail_ring_size(n), 2),
                       mem.alloc(spec.used_ring_size(n), 4))
        q = ffi.new("struct vnb_drv_vq *")
        if lib.vnb_drv_vq_init(q, mem.table, n, d, a, u, spec.ring_flags(self.features)) < 0:
            raise ConfigError("control queue setup failed")
        self._ctrl = q
        self._ctrl_buf = mem.alloc(4096 + 8, 8)     # class, command, data; the ack after it
        self.ctrl_kick, self.ctrl_call = self._eventfd(), self._eventfd()
        dev.set_queue(dev.ctrl_index, QueueConfig(n, d, a, u, self.ctrl_kick, self.ctrl_call))

    def ctrl_command(self, cls: int, cmd: int, data: bytes = b"", *, timeout: float = 2.0,
                     segs: list[tuple[int, int, bool]] | None = None) -> int | None:
        """Send one control command and wait for its ack (VIRTIO_NET_OK or VIRTIO_NET_ERR); None if the
        device used the chain without an ack byte, or did not answer within ``timeout``. ``segs`` lays
        the chain out by hand (gpa, len, writable) for tests of hostile layouts; the command bytes are
        at ``ctrl_buf`` and the ack slot right after them."""
        if self._ctrl is None:
            raise ConfigError("this driver has no control queue: GuestDriver(..., ctrl=True)")
        mem = self.dev.mem
        body = bytes([cls, cmd]) + data
        if len(body) > 4096:
            raise ConfigError("a control command of more than 4094 data bytes")
        mem.write(self._ctrl_buf, body)
        layout = segs if segs is not None else [(self._ctrl_buf, len(body), False), (self._ctrl_buf + len(body), 1, True)]
        ack_gpa = next((gpa for gpa, n, w in layout if w and n), None)
        if ack_gpa is not None:
            mem.write(ack_gpa, b"\xee")   # not an ack value: a device that wrote nothing shows
        cs = ffi.new("struct vnb_seg[]", len(layout))
        for k, (gpa, n, w) in enumerate(layout):
            cs[k].gpa, cs[k].len, cs[k].write = gpa, n, int(w)
        if lib.vnb_drv_add(self._ctrl, cs, len(layout), ffi.NULL, 0, 0) < 0:
            raise ConfigError("control queue full")
        lib.vnb_drv_publish(self._ctrl)
        if lib.vnb_drv_kick_prepare(self._ctrl):
            os.eventfd_write(self.ctrl_kick, 1)
        ln, tok = ffi.new("uint32_t *"), ffi.new("uint32_t *")
        deadline = time.monotonic() + timeout
        while True:
            r = lib.vnb_drv_get_used(self._ctrl, ln, tok)
            if r > 0:
                return mem.read(ack_gpa, 1)[0] if ln[0] >= 1 and ack_gpa is not None else None
            if r < 0 or time.monotonic() > deadline:
                return None
            select.select([self.ctrl_call], [], [], 0.01)
            try:
                os.eventfd_read(self.ctrl_call)
            except BlockingIOError:
                pass

    @property
    def ctrl_buf(self) -> int:
        return self._ctrl_buf

    def set_queue_pairs(self, n: int) -> int | None:
        """VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, what a Linux guest's ``ethtool -L eth0 combined n`` sends."""
        return self.ctrl_command(spec.VIRTIO_NET_CTRL_MQ, spec.VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, struct.pack("<H", n))

    def _eventfd(self) -> int:
        fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._fds.append(fd)
        return fd

    @staticmethod
    def _layout(name: str) -> int:
        if name not in LAYOUTS:
            raise ConfigError(f"unknown TX layout {name!r}; choose one of {', '.join(LAYOUTS)}")
        return LAYOUTS[name]

    # --- headers ---
    def _make_hdr(self, frame: bytes, csum, gso):
        h = ffi.new("struct virtio_net_hdr_v1 *")
        if gso is not None:
            kind, mss = gso
            if kind not in spec.GSO_TYPES:
                raise ConfigError(f"unknown gso type {kind!r}; choose one of {', '.join(spec.GSO_TYPES)}")
            h.gso_type = spec.GSO_TYPES[kind]
            h.gso_size = mss
            l3, l4 = _l4_offsets(frame)
            h.hdr_len = l4 + ((frame[l4 + 12] >> 4) * 4 if kind != "udp" else 8)
            if csum is None:
                csum = (l4, 16 if kind != "udp" else 6)
        if csum is not None:
            h.flags = spec.VIRTIO_NET_HDR_F_NEEDS_CSUM
            h.csum_start, h.csum_offset = csum
        return h

    # --- TX ---
    def send(self, frame: bytes, *, csum: tuple[int, int] | None = None, gso: tuple[str, int] | None = None,
             layout: str | None = None, timeout: float = 5.0) -> None:
        """Queue one Ethernet frame (no virtio-net header) for transmission."""
        if not 0 < len(frame) <= spec.MAX_FRAME:
            raise ConfigError(f"frame of {len(frame)} bytes: must be 1..{spec.MAX_FRAME}")
        lay = self.tx_layout if layout is None else self._layout(layout)
        rc = lib.vnb_guest_tx(self._g, frame, len(frame), self._make_hdr(frame, csum, gso), lay,
                              int(timeout * 1000))
        if rc < 0:
            self._raise(-rc, "send")

    def flood(self, frame: bytes, count: int, *, batch: int = 64, seq_offset: int = 0, tagged: bool = False,
              layout: str | None = None, timeout: float = 5.0, csum: tuple[int, int] | None = None,
              gso: tuple[str, int] | None = None, first_seq: int = 0) -> int:
        """Send ``count`` copies as fast as the ring allows: numbered at ``seq_offset``, or with
        ``tagged`` rebuilt as sequence-tagged frames first_seq..first_seq+count-1 (packet.tagged_frame)
        from the template's addresses, so the peer can check every byte."""
        lay = self.tx_layout if layout is None else self._layout(layout)
        hdr = self._make_hdr(frame, csum, gso)
        n = lib.vnb_guest_tx_flood(self._g, frame, len(frame), hdr, count, lay, batch, seq_offset, int(tagged),
                                   first_seq & 0xFFFFFFFF, int(timeout * 1000))
        if n < 0:
            self._raise(-n, "flood")
        return n

    def drain_tx(self, timeout: float = 5.0) -> None:
        """Wait until the device has consumed every TX chain."""
        rc = lib.vnb_guest_tx_drain(self._g, int(timeout * 1000))
        if rc < 0:
            self._raise(-rc, "drain_tx")

    # --- RX ---
    def echo(self, reply: bytes, *, stop, idle: float = 5.0, count: int = 1 << 62) -> int:
        """Answer rr requests in C (vnb_guest_echo) until ``count`` answers, ``stop[0]`` (a cffi
        ``int *``) becomes nonzero, or nothing came for ``idle`` s: each tagged frame received gets
        ``reply`` back with the request's sequence tag. Returns answers."""
        n = lib.vnb_guest_echo(self._g, reply, len(reply), 14, count, int(idle * 1000), stop)
        if n < 0:
            self._raise(-n, "echo")
        return n

    def receive(self, timeout: float = 1.0) -> bytes | None:
        """The next received frame (no virtio-net header), or None after ``timeout`` seconds."""
        r = self.receive_with_header(timeout)
        return None if r is None else r[1]

    def receive_with_header(self, timeout: float = 1.0) -> tuple[dict, bytes] | None:
        n = lib.vnb_guest_rx(self._g, self._rxbuf, spec.MAX_FRAME + 1, self._hdr, int(timeout * 1000))
        if n == 0:
            self.dev.check()
            return None
        if n < 0:
            self._raise(-n, "receive")
        h = self._hdr
        hdr = {"flags": h.flags, "gso_type": h.gso_type, "hdr_len": h.hdr_len, "gso_size": h.gso_size,
               "csum_start": h.csum_start, "csum_offset": h.csum_offset, "num_buffers": h.num_buffers}
        return hdr, bytes(ffi.buffer(self._rxbuf, n))

    def receive_count(self, count: int, timeout: float = 1.0, seq_offset: int = 0,
                      verify: bool = False) -> tuple[int, int, int]:
        """Receive up to ``count`` frames without handing them to Python: (frames, out-of-order
        breaks of the sequence at ``seq_offset``, frames that fail the tagged-frame check if ``verify``)."""
        ooo = ffi.new("uint64_t *")
        bad = ffi.new("uint64_t *")
        n = lib.vnb_guest_rx_count(self._g, count, int(timeout * 1000), seq_offset, int(verify), ooo, bad)
        return n, ooo[0], bad[0]

    # --- misc ---
    def _raise(self, err: int, what: str):
        self.dev.check()  # a guest fault explains a stall better than the errno
        if err == errno.EAGAIN:
            raise VnetError(f"{what}: the device did not consume buffers in time (TX ring full); "
                            "is the datapath running?")
        raise VnetError(f"{what} failed: {os.strerror(err)}")

    def stats(self) -> dict:
        s = self._g.st
        out = {k: getattr(s, k) for k in ("tx_frames", "tx_bytes", "tx_kicks", "tx_interrupts", "tx_full_waits",
                                          "rx_frames", "rx_bytes", "rx_kicks", "rx_interrupts", "rx_waits",
                                          "rx_buffers", "bad_used", "tx_syscalls", "rx_syscalls")}
        out["syscalls"] = out["tx_syscalls"] + out["rx_syscalls"]
        return out

    @property
    def raw(self):
        """The C struct vnb_guest (ring pointers and indices), for tests that tamper with rings."""
        return self._g

    def close(self) -> None:
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = []


def _l4_offsets(frame: bytes) -> tuple[int, int]:
    """Offsets of the L3 and L4 headers in an Ethernet frame (IPv4 or IPv6, one VLAN tag at most)."""
    off = 12
    ethertype = struct.unpack_from("!H", frame, off)[0]
    if ethertype == 0x8100:
        off += 4
        ethertype = struct.unpack_from("!H", frame, off)[0]
    l3 = off + 2
    if ethertype == 0x0800:
        return l3, l3 + (frame[l3] & 0xF) * 4
    if ethertype == 0x86DD:
        return l3, l3 + 40
    raise ConfigError("gso needs an IPv4 or IPv6 frame")
