"""VhostUserFrontend: vnetbe's own vhost-user front end, what a VMM does on its side of the socket.

It has the device door GuestDriver drives (``mem``, ``device_features``, ``set_driver_features``,
``set_queue``, ``start``, ``check``, ``on_close``), so ``GuestDriver(VhostUserFrontend(path, mem))``
runs vnetbe's guest driver against any vhost-user back end: vnetbe's own server, or another. Every
request asks for an ack (REPLY_ACK), so when ``start`` returns the back end has the rings.
"""
from __future__ import annotations

import os
import select
import socket
import time

from .. import spec
from ..errors import ConfigError, VnetError
from ..vhost_user import channel
from ..vhost_user import protocol as P
from ..vhost_user.protocol import MemRegion, Request

_PROTO = 1 << P.VHOST_USER_F_PROTOCOL_FEATURES


class VhostUserFrontend:
    max_queue_pairs = 1   # GuestDriver's door: the pairs it may drive

    def __init__(self, path: str, mem, *, timeout: float = 5.0, connect_timeout: float = 5.0, slots: bool = False,
                 poll_rings: bool = False, status: bool = False):
        """``slots``: send the memory one region at a time (ADD_MEM_REG, CONFIGURE_MEM_SLOTS), as QEMU
        does when the back end offers it, instead of one SET_MEM_TABLE. ``poll_rings``: give no kick fds
        (SET_VRING_KICK with NOFD): the back end polls the rings; the driver's kicks reach no one.
        ``status``: negotiate PROTOCOL_F_STATUS and, as QEMU, send SET_STATUS with DRIVER_OK once the
        rings are set up (``stop_device`` clears it, as QEMU's vhost_dev_stop)."""
        self.path, self.mem, self.timeout, self.poll_rings = path, mem, timeout, poll_rings
        self.sock = self._connect(path, connect_timeout)
        self._on_close: list = []
        self.queues: dict = {}
        self.err_fd: dict[int, int] = {}
        self.driver_features = 0
        self.closed = False
        try:
            offered = self._get_u64(Request.GET_FEATURES)
            self.protocol = offered & _PROTO
            self.protocol_features = 0
            if self.protocol:
                want = (1 << P.ProtocolFeature.REPLY_ACK | 1 << P.ProtocolFeature.MQ
                        | 1 << P.ProtocolFeature.RESET_DEVICE | 1 << P.ProtocolFeature.LOG_SHMFD)
                if slots:
                    want |= 1 << P.ProtocolFeature.CONFIGURE_MEM_SLOTS
                if status:
                    want |= 1 << P.ProtocolFeature.STATUS
                self.protocol_features = self._get_u64(Request.GET_PROTOCOL_FEATURES) & want
                self.send(Request.SET_PROTOCOL_FEATURES, P.U64.pack(self.protocol_features))
            self.send(Request.SET_OWNER)
            self.device_features = offered & ~_PROTO & ~(1 << P.VHOST_F_LOG_ALL)
            self.offers_log = bool(offered & (1 << P.VHOST_F_LOG_ALL))
            self.logging = False
        except BaseException:
            self.sock.close()
            raise

    @staticmethod
    def _connect(path: str, timeout: float) -> socket.socket:
        deadline = time.monotonic() + timeout
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                s.connect(path)
                return s
            except OSError as e:
                s.close()
                if time.monotonic() > deadline:
                    raise VnetError(f"cannot connect to the vhost-user back end at {path}: {e.strerror}") from None
                time.sleep(0.05)

    # --- messages ---
    @property
    def acks(self) -> bool:
        return bool(self.protocol_features & (1 << P.ProtocolFeature.REPLY_ACK))

    def send(self, req: Request, payload: bytes = b"", fds: list[int] | None = None) -> None:
        """One request; with REPLY_ACK, wait for its ack and raise if the back end refused it."""
        channel.send_message(self.sock, P.request(req, payload, need_reply=self.acks), fds)
        if self.acks:
            if self._reply(req) != 0:
                raise VnetError(f"the back end refused {req.name}")

    def _get_u64(self, req: Request) -> int:
        channel.send_message(self.sock, P.request(req))
        return self._reply(req)

    def _reply(self, req: Request) -> int:
        r, _, _ = select.select([self.sock], [], [], self.timeout)
        if not r:
            raise VnetError(f"the back end did not answer {req.name} within {self.timeout:.0f} s")
        head = self.sock.recv(P.HEADER_SIZE, socket.MSG_WAITALL)
        if len(head) < P.HEADER_SIZE:
            raise VnetError(f"the back end closed the connection after {req.name}")
        code, flags, size = P.HEADER.unpack(head)
        body = self.sock.recv(size, socket.MSG_WAITALL) if size else b""
        if code != req or not flags & P.FLAG_REPLY or len(body) != size:
            raise VnetError(f"bad reply to {req.name}: request {code}, flags {flags:#x}, {len(body)} bytes")
        if size == P.VRING_STATE.size and req == Request.GET_VRING_BASE:
            return P.VRING_STATE.unpack(body)[1]
        if size == P.U64.size:
            return P.U64.unpack(body)[0]
        raise VnetError(f"bad reply to {req.name}: {size} bytes")

    # --- the device door GuestDriver uses ---
    @property
    def hdr_len(self) -> int:
        modern = self.driver_features & (spec.bit(spec.VIRTIO_F_VERSION_1) | spec.bit(spec.VIRTIO_NET_F_MRG_RXBUF))
        return spec.NET_HDR_LEN if modern else spec.NET_HDR_LEN_LEGACY

    def set_driver_features(self, features: int) -> int:
        extra = features & ~self.device_features
        if extra:
            raise ConfigError(f"the back end does not offer {', '.join(spec.features_to_names(extra)) or hex(extra)}")
        self.send(Request.SET_FEATURES, P.U64.pack(features | self.protocol | self._log_bit))
        self.driver_features = features
        return features

    # --- live migration, as QEMU starts and ends it (hw/virtio/vhost.c vhost_log_global_start/stop) ---
    @property
    def _log_bit(self) -> int:
        return 1 << P.VHOST_F_LOG_ALL if self.logging else 0

    def set_log_base(self, fd: int, size: int, offset: int = 0) -> int:
        """SET_LOG_BASE: the back end maps ``size`` bytes of ``fd`` from ``offset`` as the dirty log.
        Its reply is its answer (non-zero: refused)."""
        channel.send_message(self.sock, P.request(Request.SET_LOG_BASE, P.log_payload(size, offset)), [fd])
        return self._reply(Request.SET_LOG_BASE)

    def set_logging(self, on: bool) -> None:
        """LOG_ALL on or off (SET_FEATURES), then every ring's address again with VHOST_VRING_F_LOG and
        its used ring's guest-physical address as log_guest_addr (or without, when off)."""
        self.logging = on
        self.send(Request.SET_FEATURES, P.U64.pack(self.driver_features | self.protocol | self._log_bit))
        for q, cfg in sorted(self.queues.items()):
            self._set_vring_addr(q, cfg)

    def set_queue(self, index: int, cfg) -> None:
        self.queues[index] = cfg

    def on_close(self, fn) -> None:
        self._on_close.append(fn)

    def forget_on_close(self, fn) -> None:
        """Undo ``on_close(fn)``: a driver moving to another connection (a migration's destination)
        keeps its eventfds when this one closes."""
        self._on_close.remove(fn)

    def memory_regions(self) -> list[tuple[MemRegion, int]]:
        # The front end's user addresses are where this process mapped each region.
        return [(MemRegion(r.gpa, r.size, r.hva, r.offset), r.fd) for r in self.mem.regions]

    @property
    def slots(self) -> bool:
        return bool(self.protocol_features & (1 << P.ProtocolFeature.CONFIGURE_MEM_SLOTS))

    def start(self) -> None:
        regions = self.memory_regions()
        if self.slots:
            self.max_slots = self._get_u64(Request.GET_MAX_MEM_SLOTS)
            for r, fd in regions:
                self.send(Request.ADD_MEM_REG, P.mem_single_payload(r), [fd])
        else:
            self.send(Request.SET_MEM_TABLE, P.mem_table_payload([r for r, _ in regions]), [fd for _, fd in regions])
        for q, cfg in sorted(self.queues.items()):
            self.start_ring(q, cfg)
        self.set_status(spec.ACKNOWLEDGE | spec.DRIVER | spec.FEATURES_OK | spec.DRIVER_OK)

    def set_status(self, status: int) -> None:
        """SET_STATUS, when PROTOCOL_F_STATUS was negotiated (else nothing)."""
        if self.protocol_features & (1 << P.ProtocolFeature.STATUS):
            self.send(Request.SET_STATUS, P.U64.pack(status))

    def stop_device(self) -> dict[int, int]:
        """What QEMU's vhost_dev_stop sends: SET_STATUS 0, then GET_VRING_BASE ring by ring; each ring's
        last_avail_idx."""
        self.set_status(0)
        return {q: self.get_vring_base(q) for q in sorted(self.queues)}

    def start_ring(self, q: int, cfg) -> None:
        self.send(Request.SET_VRING_NUM, P.VRING_STATE.pack(q, cfg.size))
        packed = bool(self.driver_features & spec.bit(spec.VIRTIO_F_RING_PACKED))
        self.send(Request.SET_VRING_BASE, P.VRING_STATE.pack(q, cfg.base(packed)[0]))
        self._set_vring_addr(q, cfg)
        if q not in self.err_fd:
            self.err_fd[q] = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.send(Request.SET_VRING_ERR, P.U64.pack(q), [self.err_fd[q]])
        self.send(Request.SET_VRING_CALL, P.U64.pack(q), [cfg.call_fd])
        if self.poll_rings:
            self.send(Request.SET_VRING_KICK, P.U64.pack(q | P.VRING_NOFD_MASK))
        else:
            self.send(Request.SET_VRING_KICK, P.U64.pack(q), [cfg.kick_fd])
        if self.protocol:
            self.send(Request.SET_VRING_ENABLE, P.VRING_STATE.pack(q, 1))

    def _set_vring_addr(self, q: int, cfg) -> None:
        flags, log = (P.VRING_F_LOG, cfg.used) if self.logging else (0, 0)
        self.send(Request.SET_VRING_ADDR, P.VRING_ADDR.pack(q, flags, self.mem.hva(cfg.desc), self.mem.hva(cfg.used),
                                                            self.mem.hva(cfg.avail), log))

    def add_region(self, gpa: int) -> None:
        """ADD_MEM_REG of this memory's region at ``gpa`` (memory plugged in)."""
        for r, fd in self.memory_regions():
            if r.guest_phys_addr == gpa:
                self.send(Request.ADD_MEM_REG, P.mem_single_payload(r), [fd])
                return
        raise ConfigError(f"no region at {gpa:#x}")

    def remove_region(self, gpa: int) -> None:
        """REM_MEM_REG of the region at ``gpa`` (memory unplugged)."""
        for r, _ in self.memory_regions():
            if r.guest_phys_addr == gpa:
                self.send(Request.REM_MEM_REG, P.mem_single_payload(r))
                return
        raise ConfigError(f"no region at {gpa:#x}")

    def get_vring_base(self, q: int) -> int:
        """Stop ring ``q``; its last_avail_idx."""
        channel.send_message(self.sock, P.request(Request.GET_VRING_BASE, P.VRING_STATE.pack(q, 0)))
        return self._reply(Request.GET_VRING_BASE)

    def check(self) -> None:
        """Raise if the back end signalled a ring's ERR eventfd (it stopped that ring)."""
        for q, fd in self.err_fd.items():
            try:
                os.eventfd_read(fd)
            except BlockingIOError:
                continue
            raise VnetError(f"the back end stopped ring {q} and signalled its error eventfd")

    def close(self) -> None:
        if self.closed:
            return
        self.sock.close()
        for fd in self.err_fd.values():
            os.close(fd)
        for fn in reversed(self._on_close):
            fn()
        self.closed = True

    def __enter__(self) -> "VhostUserFrontend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
