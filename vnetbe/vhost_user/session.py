"""One vhost-user connection's back end: the state a front end builds with its messages (features,
memory table, rings) and the VirtioNet device it drives.

No sockets here: ``handle`` takes a parsed Message and the fds that came with it and returns the reply
bytes (or None). The session owns every fd it was given and every mapping it made, and ``close``
releases all of them, whatever state the front end left it in.

A ring is serviced once it is *ready*: its size, addresses and kick fd are known, the memory table and
the features are set, and it is enabled (rings start disabled when VHOST_USER_F_PROTOCOL_FEATURES was
negotiated). Any change to a serviced ring, or to the memory, first stops the device, which keeps the
ring positions, and starts it again over the rings that are ready afterwards.
"""
from __future__ import annotations

import logging
import os
import stat
import struct
from dataclasses import dataclass

from .. import spec
from .._native import lib
from ..device import VirtioNet
from ..dirtylog import DirtyLog
from ..errors import ConfigError, GuestMemoryGone, ProtocolError, VnetError
from ..memory import GuestMemory
from ..queue import QueueConfig
from . import protocol as P
from .protocol import MemRegion, Message, Request

log = logging.getLogger("vnetbe.vhost_user")



def rarp_frame(mac: bytes) -> bytes:
    """The RARP a migrated guest's new place sends for it (QEMU's announce_self_create, DPDK's
    make_rarp_packet): broadcast, ethertype 0x8035, a reverse request for ``mac``, padded to 60 bytes."""
    body = struct.pack(">HHBBH", 1, 0x0800, 6, 4, 3) + mac + bytes(4) + mac + bytes(4)
    return (b"\xff" * 6 + mac + b"\x80\x35" + body).ljust(60, b"\0")


def queue_num(pairs: int) -> int:
    """GET_QUEUE_NUM's answer for a device of ``pairs`` queue pairs. Front ends read it differently:
    QEMU (net/vhost-user.c) compares its queues= (pairs) with it, Cloud Hypervisor
    (virtio-devices/src/vhost_user/net.rs) its num_queues (virtqueues, 2 per pair) and refuses a back
    end that answers less; DPDK's virtio-user reads pairs. The virtqueue count satisfies all of them;
    a front end that then sets up a ring beyond 2 x pairs is refused by name (the ring index check)."""
    return 2 * pairs

# What a front end may ask before SET_OWNER: the negotiation QEMU does before it claims the device.
_BEFORE_OWNER = frozenset({Request.GET_FEATURES, Request.GET_PROTOCOL_FEATURES, Request.SET_PROTOCOL_FEATURES,
                           Request.GET_QUEUE_NUM, Request.GET_MAX_MEM_SLOTS, Request.SET_OWNER})


def _region_key(r: MemRegion) -> tuple[int, int, int, int]:
    return (r.guest_phys_addr, r.memory_size, r.userspace_addr, r.mmap_offset)


@dataclass
class Vring:
    num: int = 0
    last_avail_idx: int | None = None   # None: a fresh ring's (0; packed: position 0, wrap counter 1)
    used_idx: int | None = None       # None: split, read it from the used ring when the ring starts;
                                      # packed, the same as last_avail_idx (a stopped ring has used all)
    addr: P.VringAddr | None = None
    kick_fd: int = -1
    call_fd: int = -1
    err_fd: int = -1
    enabled: bool | None = None       # None: not said; then enabled unless protocol features were acked
    started: bool = False             # SET_VRING_KICK starts a ring, GET_VRING_BASE stops it
    polled: bool = False              # the kick came with NOFD: the front end never kicks, we poll


class Session:
    """The back end for one front end. ``link`` and ``datapath`` as for VirtioNet; ``mtu`` and ``mac``
    override the link's in the device's config."""

    def __init__(self, link, datapath: str = "user", *, busyloop_us: int = 0, mac: str | None = None,
                 queues: int = 1):
        self.link = link
        # MQ and CTRL_VQ offered whatever the pair count: the control queue is the front end's (QEMU, DPDK
        # and Cloud Hypervisor keep it), and Cloud Hypervisor gives its guest only what the back end offers.
        # GUEST_ANNOUNCE: QEMU passes it to its guest only when the back end offers it, and then has the
        # guest announce itself after a migration (else it asks the back end for a RARP: SEND_RARP).
        self.dev = VirtioNet(None, link, datapath, busyloop_us=busyloop_us, mac=mac, queues=queues,
                             features=spec.DEVICE_FEATURES | spec.MQ_FEATURES | spec.ANNOUNCE_FEATURES)
        # Which pairs run is the front end's to say, ring by ring (SET_VRING_ENABLE).
        self.dev.set_queue_pairs(queues)
        self.pairs = queues
        self.num_queues = 2 * queues
        self.features_acked: int | None = None
        self.protocol_acked = 0
        self.protocol_set = False         # SET_PROTOCOL_FEATURES came: the front end saw bit 30 offered
        self.owner = False
        self.status = 0                   # SET_STATUS's device status byte
        self.paused = False               # DRIVER_OK cleared after it was set: no ring runs until it is again
        self.rings = [Vring() for _ in range(self.num_queues)]
        self.regions: list[tuple[MemRegion, int]] = []    # with the fd each came with (ours to close)
        # ADD_MEM_REGs of the same region beyond its first: QEMU runs a vhost device per queue pair on one
        # socket and each adds (and removes) the regions itself, as libvhost-user expects (it ignores a
        # duplicate). Keyed by the region's identity; a REM_MEM_REG unmaps only the last reference.
        self._region_refs: dict[tuple[int, int, int, int], int] = {}
        self.mem: GuestMemory | None = None
        # Live migration: the front end's dirty log (SET_LOG_BASE) and whether SET_FEATURES acked
        # VHOST_F_LOG_ALL; the device logs while both are there.
        self.log: DirtyLog | None = None
        self.log_all = False
        self.log_fd = -1                                 # SET_LOG_FD's eventfd (kept; nothing reads it)
        self.rarps_sent = 0
        self._own_fds: set[int] = set()                  # eventfds made for rings given no call fd
        self.messages = 0
        self.memory_gone = False          # the datapath found guest memory gone (signal_faults)
        self.closed = False

    # --- the door ---
    @property
    def offered_features(self) -> int:
        # LOG_ALL: every datapath keeps a dirty log (user and uring their own, vhost the kernel's).
        return (self.dev.device_features | spec.bit(P.VHOST_USER_F_PROTOCOL_FEATURES)
                | spec.bit(P.VHOST_F_LOG_ALL))

    def handle(self, msg: Message, fds: list[int]) -> bytes | None:
        """Apply one message. Its fds become the session's (kept or closed) whatever happens; a refused
        message raises ProtocolError. Returns the reply to send, if any."""
        self.messages += 1
        taken: list[int] = []
        try:
            if not self.owner and msg.request not in _BEFORE_OWNER:
                raise ProtocolError(msg.name, "order", "sent before SET_OWNER")
            out = getattr(self, "_" + msg.request.name.lower())(msg, fds, taken)
        except ConfigError as e:   # a device-level refusal of what the message asked
            raise ProtocolError(msg.name, "payload", str(e)) from None
        finally:
            for fd in fds:
                if fd not in taken:
                    os.close(fd)
        if out is None and msg.need_reply and self._acks and msg.request not in P.HAS_REPLY:
            out = P.reply_u64(msg.request, 0)
        return out

    @property
    def _acks(self) -> bool:
        return bool(self.protocol_acked & (1 << P.ProtocolFeature.REPLY_ACK))

    def nack(self, request: int, flags: int) -> bytes | None:
        """The non-zero ack a refused request gets when REPLY_ACK is negotiated and it asked for one
        (the spec: the back end MUST reply, non-zero on failure); None when it cannot be answered.
        GET_CONFIG has an error answer of its own: a reply with no payload."""
        if request == Request.GET_CONFIG and self.protocol_acked & (1 << P.ProtocolFeature.CONFIG):
            return P.reply(request, b"")
        if not (flags & P.FLAG_NEED_REPLY and self._acks) or request in P.HAS_REPLY:
            return None
        return P.reply_u64(request, 1)

    # --- negotiation ---
    def _get_features(self, msg, fds, taken):
        return P.reply_u64(msg.request, self.offered_features)

    def _set_features(self, msg, fds, taken):
        value = msg.payload
        extra = value & ~self.offered_features
        if extra:
            raise ProtocolError(msg.name, "features", f"bits {extra:#x} were not offered")
        virtio = value & ~spec.bit(P.VHOST_USER_F_PROTOCOL_FEATURES) & ~spec.bit(P.VHOST_F_LOG_ALL)
        if value & spec.bit(P.VHOST_F_LOG_ALL) and self.log is None:
            # As the kernel's vhost (EFAULT): logging with no log would lose every write, silently.
            raise ProtocolError(msg.name, "features", "VHOST_F_LOG_ALL before any SET_LOG_BASE: no dirty log to write")
        if self.dev.running and virtio != self.dev.driver_features:
            raise ProtocolError(msg.name, "features", "changed while rings are running")
        self.features_acked = value
        if not self.dev.running:
            self.dev.set_driver_features(virtio)
        # LOG_ALL comes and goes on a running device (QEMU's migration start and end): the datapath
        # pauses for the switch and goes on from where its rings stood.
        self.log_all = bool(value & spec.bit(P.VHOST_F_LOG_ALL))
        self._update_log(msg.name)
        self._apply()

    # --- live migration: the dirty log ---
    def _set_log_base(self, msg, fds, taken):
        if not self.protocol_acked & (1 << P.ProtocolFeature.LOG_SHMFD):
            raise ProtocolError(msg.name, "order", "LOG_SHMFD protocol feature not negotiated")
        size, offset = msg.payload
        try:
            log = DirtyLog.from_fd(fds[0], size, offset)   # the fd is closed by handle(): the mapping stays
        except (ConfigError, VnetError) as e:
            raise ProtocolError(msg.name, "log", str(e)) from None
        if self.mem is not None and self.mem.log_size_needed() > size:
            log.close()
            raise ProtocolError(msg.name, "mmap_size", f"{size} bytes of log cover guest memory up to "
                                f"{size * 8 * lib.VNB_LOG_PAGE:#x}; the memory table needs {self.mem.log_size_needed()}")
        old, self.log = self.log, log
        try:
            self._update_log(msg.name)
        finally:
            if old is not None and old is not self.log:
                old.close()          # after the device moved to the new log: nothing writes the old one
        return P.reply_u64(msg.request, 0)

    def _send_rarp(self, msg, fds, taken):
        """After a migration, for a guest that cannot announce itself: a broadcast RARP from its MAC (the
        first 6 bytes of the payload) out of the link, so that switches learn where it is now."""
        if not self.protocol_acked & (1 << P.ProtocolFeature.RARP):
            raise ProtocolError(msg.name, "order", "RARP protocol feature not negotiated")
        mac = P.U64.pack(msg.payload)[:6]
        try:
            hdr_len = self.link.get_vnet_hdr_len()
            os.write(self.link.fd, bytes(hdr_len) + rarp_frame(mac))
        except OSError as e:
            raise ProtocolError(msg.name, "link", f"the RARP could not be sent on {self.link.name}: "
                                                  f"{e.strerror or e}") from None
        self.rarps_sent += 1

    def _set_log_fd(self, msg, fds, taken):
        if self.log_fd >= 0:
            os.close(self.log_fd)
        self.log_fd = fds[0] if fds else -1
        taken.extend(fds)

    def _wanted_log(self) -> DirtyLog | None:
        return self.log if self.log_all else None

    def _update_log(self, name: str) -> None:
        """Point the device's logging at the log the front end asked for (or none)."""
        if self.mem is None or self.dev.dirty_log is self._wanted_log():
            return
        try:
            if self._wanted_log() is None:
                self.dev.stop_dirty_log()
            else:
                self.dev.start_dirty_log(self._wanted_log())
        except ConfigError as e:
            raise ProtocolError(name, "log", str(e)) from None

    def _check_log_covers(self, name: str, regions) -> None:
        """A memory table the current log does not cover is refused (QEMU sends a larger log first)."""
        log = self._wanted_log()
        if log is None:
            return
        need = max(lib.vnb_log_size_for(r.gpa_end) for r in regions)
        if need > log.size:
            raise ProtocolError(name, "log", f"the dirty log ({log.size} bytes) does not cover guest memory up to "
                                f"{max(r.gpa_end for r in regions):#x}: send SET_LOG_BASE with {need} bytes first")

    def _get_protocol_features(self, msg, fds, taken):
        return P.reply_u64(msg.request, P.PROTOCOL_FEATURES)

    def _set_protocol_features(self, msg, fds, taken):
        extra = msg.payload & ~P.PROTOCOL_FEATURES
        if extra:
            raise ProtocolError(msg.name, "features", f"protocol feature bits {extra:#x} were not offered")
        self.protocol_acked = msg.payload
        self.protocol_set = True

    def _get_queue_num(self, msg, fds, taken):
        return P.reply_u64(msg.request, queue_num(self.pairs))

    def _get_max_mem_slots(self, msg, fds, taken):
        return P.reply_u64(msg.request, P.MAX_MEM_SLOTS)

    def _set_owner(self, msg, fds, taken):
        self.owner = True

    def _reset_owner(self, msg, fds, taken):
        # Deprecated; the spec recommends ignoring it or disabling all rings (discarding the session's
        # state "would lead to bugs"): every ring stops, as after GET_VRING_BASE, and keeps its position.
        self._stop_device()
        for ring in self.rings:
            ring.started = False
        self._apply()

    def _reset_device(self, msg, fds, taken):
        if not self.protocol_acked & (1 << P.ProtocolFeature.RESET_DEVICE):
            raise ProtocolError(msg.name, "order", "RESET_DEVICE protocol feature not negotiated")
        self.reset()

    def _net_set_mtu(self, msg, fds, taken):
        if not self.protocol_acked & (1 << P.ProtocolFeature.NET_MTU):
            raise ProtocolError(msg.name, "order", "NET_MTU protocol feature not negotiated")
        # "Only once VIRTIO_NET_F_MTU is negotiated": QEMU sends it when the device starts, before
        # SET_FEATURES, having seen the bit offered; a SET_FEATURES that left the bit out settles it.
        acked = self.features_acked if self.features_acked is not None else self.offered_features
        if not acked & spec.bit(spec.VIRTIO_NET_F_MTU):
            raise ProtocolError(msg.name, "order", "VIRTIO_NET_F_MTU was not negotiated (SET_FEATURES)")
        if not 68 <= msg.payload <= 65535:
            raise ProtocolError(msg.name, "mtu", f"{msg.payload} is outside 68..65535")
        if msg.payload > self.link.mtu:
            log.warning("front end set MTU %d, above link %s's %d: larger frames will be dropped",
                        msg.payload, self.link.name, self.link.mtu)
        self.dev.mtu = msg.payload

    # --- config space and status ---
    def _config_request(self, msg):
        if not self.protocol_acked & (1 << P.ProtocolFeature.CONFIG):
            raise ProtocolError(msg.name, "order", "CONFIG protocol feature not negotiated")
        offset, size, flags, data = msg.payload
        space = self.dev.config_space()
        if offset > len(space) or size > len(space) - offset:
            raise ProtocolError(msg.name, "offset", f"{offset} + size {size} is past the {len(space)}-byte "
                                                    "virtio-net config space")
        return offset, size, flags, data, space

    def _get_config(self, msg, fds, taken):
        offset, size, flags, _, space = self._config_request(msg)
        return P.reply_config(msg.request, offset, flags, space[offset:offset + size])

    def _set_config(self, msg, fds, taken):
        offset, size, _, data, space = self._config_request(msg)
        # A VIRTIO 1.x driver writes no field of virtio-net's config space (mac, status,
        # max_virtqueue_pairs and mtu are the device's): accept a write that changes nothing.
        if data != space[offset:offset + size]:
            raise ProtocolError(msg.name, "payload", "the virtio-net config space is read-only (the MAC is "
                                                     "the link's: vnetbe serve --mac)")

    def _set_status(self, msg, fds, taken):
        if not self.protocol_acked & (1 << P.ProtocolFeature.STATUS):
            raise ProtocolError(msg.name, "order", "STATUS protocol feature not negotiated")
        if msg.payload > 0xFF:
            raise ProtocolError(msg.name, "payload", f"{msg.payload:#x}: the device status is one byte")
        # Recorded, and reported back with what the device adds (DEVICE_NEEDS_RESET after a fault). The
        # rings follow their own messages: 0 here is no reset (RESET_DEVICE is), as QEMU and DPDK expect.
        # But a driver that was running and clears DRIVER_OK is stopping the device: QEMU's
        # vhost_dev_stop sends SET_STATUS 0, then GET_VRING_BASE ring by ring (a VM stopping, the last
        # step of a migration). Every ring stops here at once, as it stands, until DRIVER_OK is set
        # again; each GET_VRING_BASE then finds its ring stopped. One stop instead of one per ring,
        # each waiting for the datapath thread to be scheduled on busy CPUs: the migration's downtime.
        was_running = bool(self.status & spec.DRIVER_OK)
        self.status = msg.payload
        if self.status & spec.DRIVER_OK:
            self.paused = False
        elif was_running:
            self.paused = True
        self._apply()

    def _get_status(self, msg, fds, taken):
        if not self.protocol_acked & (1 << P.ProtocolFeature.STATUS):
            raise ProtocolError(msg.name, "order", "STATUS protocol feature not negotiated")
        return P.reply_u64(msg.request, self.status | (self.dev.status & spec.DEVICE_NEEDS_RESET))

    # --- memory ---
    def _set_mem_table(self, msg, fds, taken):
        regions = list(zip(msg.payload, fds))
        self._check_fds(msg.name, regions)
        self._check_log_covers(msg.name, msg.payload)
        self._replace_memory(msg.name, regions, fds, taken)

    def _add_mem_reg(self, msg, fds, taken):
        if not self.protocol_acked & (1 << P.ProtocolFeature.CONFIGURE_MEM_SLOTS):
            raise ProtocolError(msg.name, "order", "CONFIGURE_MEM_SLOTS protocol feature not negotiated")
        new = (msg.payload, fds[0])
        key = _region_key(msg.payload)
        if any(_region_key(x) == key for x, _ in self.regions):
            self._region_refs[key] = self._region_refs.get(key, 1) + 1
            return                                  # already mapped: the fd is closed by handle()
        if len(self.regions) >= P.MAX_MEM_SLOTS:
            raise ProtocolError(msg.name, "slots", f"all {P.MAX_MEM_SLOTS} memory slots are in use")
        self._check_fds(msg.name, [new])
        P.check_no_overlap(msg.name, [r for r, _ in self.regions] + [msg.payload])
        self._check_log_covers(msg.name, [r for r, _ in self.regions] + [msg.payload])
        if self.mem is None:
            self._replace_memory(msg.name, [new], fds, taken)
            return
        # Memory hot-plug: map only the new region; the datapath pauses while its table changes (it
        # holds a copy) and goes on from where its rings stood. The other regions are not touched.
        r = msg.payload
        self._stop_device()
        try:
            self.mem.map_region(r.guest_phys_addr, r.memory_size, fds[0], r.mmap_offset)
        except VnetError as e:
            self._apply()
            raise ProtocolError(msg.name, "regions", str(e)) from None
        taken.append(fds[0])
        self.regions.append(new)
        self.dev.set_memory(self.mem)
        if self.mem.log is not None:
            self.mem.set_log(self.mem.log)   # checked above: the log covers the new region too
        self._apply()

    def _rem_mem_reg(self, msg, fds, taken):
        if not self.protocol_acked & (1 << P.ProtocolFeature.CONFIGURE_MEM_SLOTS):
            raise ProtocolError(msg.name, "order", "CONFIGURE_MEM_SLOTS protocol feature not negotiated")
        r = msg.payload
        key = (r.guest_phys_addr, r.memory_size, r.userspace_addr)
        same = [x for x, _ in self.regions if _region_key(x)[:3] == key]
        if same and self._region_refs.get(_region_key(same[0]), 1) > 1:
            self._region_refs[_region_key(same[0])] -= 1   # another of the front end's devices still has it
            return
        if same:
            self._region_refs.pop(_region_key(same[0]), None)
        keep = [(x, fd) for x, fd in self.regions
                if (x.guest_phys_addr, x.memory_size, x.userspace_addr) != (r.guest_phys_addr, r.memory_size,
                                                                            r.userspace_addr)]
        if len(keep) == len(self.regions):
            raise ProtocolError(msg.name, "region", f"no region at guest address {r.guest_phys_addr:#x} "
                                                    f"of size {r.memory_size:#x}")
        # Only this region is unmapped, once the datapath stopped using it; the rest stay mapped.
        gone = [fd for x, fd in self.regions if (x, fd) not in keep]
        self._stop_device()
        self.mem.unmap_region(r.guest_phys_addr)
        self.regions = keep
        for fd in gone:
            os.close(fd)
        self.dev.set_memory(self.mem)
        self._apply()

    @staticmethod
    def _check_fds(name: str, regions) -> None:
        """Each region must lie inside its fd: mapping past a file's end would fault (SIGBUS) on the
        first access from the datapath."""
        for r, fd in regions:
            try:
                st = os.fstat(fd)
            except OSError as e:
                raise ProtocolError(name, "fd", f"region at {r.guest_phys_addr:#x}: fstat failed ({e.strerror})") from None
            if not stat.S_ISREG(st.st_mode):
                raise ProtocolError(name, "fd", f"region at {r.guest_phys_addr:#x}: the fd is not a memory file "
                                                "(memfd, tmpfs or hugetlbfs)")
            if r.mmap_offset + r.memory_size > st.st_size:
                raise ProtocolError(name, "memory_size", f"region at {r.guest_phys_addr:#x}: offset "
                                    f"{r.mmap_offset:#x} + size {r.memory_size:#x} is past the end of its fd "
                                    f"({st.st_size:#x} bytes)")

    def _replace_memory(self, name: str, regions, new_fds: list[int], taken: list[int]) -> None:
        """Map the new table, then stop the device and swap it in: the old mappings go only after no
        datapath uses them. From the swap on, ``new_fds`` are the session's and the fds of regions the
        new table dropped are closed, whether or not the device then starts again."""
        try:
            mem = GuestMemory.from_fds([(r.guest_phys_addr, r.memory_size, fd, r.mmap_offset) for r, fd in regions])
        except VnetError as e:
            raise ProtocolError(name, "regions", str(e)) from None
        self._stop_device()
        old_mem, kept = self.mem, {fd for _, fd in regions}
        dropped = [fd for _, fd in self.regions if fd not in kept]
        self.mem, self.regions = mem, list(regions)
        self._region_refs = {}
        taken.extend(new_fds)
        self.dev.set_memory(mem)
        if self._wanted_log() is not None:
            mem.set_log(self._wanted_log())  # the new table is logged as the old one was (checked above)
        if old_mem is not None:
            old_mem.close()
        for fd in dropped:
            os.close(fd)
        self._apply()

    def uaddr_to_gpa(self, uaddr: int, size: int) -> int | None:
        """A front-end user address (ring addresses come as those) to a guest-physical one."""
        for r, _ in self.regions:
            if r.userspace_addr <= uaddr and uaddr + size <= r.uaddr_end:
                return r.guest_phys_addr + (uaddr - r.userspace_addr)
        return None

    # --- rings ---
    def _ring(self, name: str, index: int) -> Vring:
        if not 0 <= index < self.num_queues:
            which = "0 (RX) and 1 (TX)" if self.pairs == 1 else f"0 .. {self.num_queues - 1} ({self.pairs} pairs)"
            raise ProtocolError(name, "index", f"ring {index}; this device has rings {which}")
        return self.rings[index]

    def _set_vring_num(self, msg, fds, taken):
        index, num = msg.payload
        ring = self._ring(msg.name, index)
        if self._packed():
            if not 1 <= num <= spec.MAX_QUEUE_SIZE:
                raise ProtocolError(msg.name, "num", f"{num} is not between 1 and {spec.MAX_QUEUE_SIZE}")
        elif num < 1 or num > spec.MAX_QUEUE_SIZE or num & (num - 1):
            raise ProtocolError(msg.name, "num", f"{num} is not a power of two between 1 and {spec.MAX_QUEUE_SIZE}")
        self._quiesce(index)
        ring.num = num
        self._apply()

    def _set_vring_base(self, msg, fds, taken):
        index, num = msg.payload
        ring = self._ring(msg.name, index)
        if self._packed():
            # Bits 0-14 the position, 15 its wrap counter; QEMU puts the used side in bits 16-31, DPDK
            # leaves them 0: a ring stopped by GET_VRING_BASE has used all it took, so use the avail side.
            num &= 0xFFFF
        elif num > 0xFFFF:
            raise ProtocolError(msg.name, "num", f"{num:#x}: a split ring's index is 16 bits")
        self._quiesce(index)
        ring.last_avail_idx, ring.used_idx = num, None
        self._apply()

    def _get_vring_base(self, msg, fds, taken):
        index, _ = msg.payload
        ring = self._ring(msg.name, index)
        self._quiesce(index)
        ring.started = False
        self._apply()
        if self._packed():   # position | wrap << 15, both sides, as QEMU and DPDK read it
            avail = spec.PACKED_START if ring.last_avail_idx is None else ring.last_avail_idx
            used = avail if ring.used_idx is None else ring.used_idx
            return P.reply_vring_state(msg.request, index, avail | used << 16)
        return P.reply_vring_state(msg.request, index, ring.last_avail_idx or 0)

    def _set_vring_addr(self, msg, fds, taken):
        a: P.VringAddr = msg.payload
        ring = self._ring(msg.name, a.index)
        if a.flags & ~P.VRING_F_LOG:
            raise ProtocolError(msg.name, "flags", f"undefined bits {a.flags & ~P.VRING_F_LOG:#x}")
        if self.mem is None:
            raise ProtocolError(msg.name, "order", "ring addresses before SET_MEM_TABLE")
        if a.flags & P.VRING_F_LOG:
            # Used-ring writes are logged at log_guest_addr, a guest-physical address: it must be memory.
            try:
                self.mem.region_of(a.log)
            except ConfigError:
                raise ProtocolError(msg.name, "log", f"ring {a.index}: log_guest_addr {a.log:#x} is not guest "
                                                     "memory") from None
        self._quiesce(a.index)
        ring.addr, ring.used_idx = a, None
        if ring.num:
            self._queue_config(msg.name, a.index)   # refuse bad addresses now, with this message's name
        self._apply()

    def _set_vring_kick(self, msg, fds, taken):
        index = msg.payload & P.VRING_IDX_MASK
        ring = self._ring(msg.name, index)
        polled = bool(msg.payload & P.VRING_NOFD_MASK)
        if polled and not self.dev.datapath.ring_modes:
            raise ProtocolError(msg.name, "payload", f"no kick fd (polling mode): the {self.dev.datapath_name} "
                                                     "datapath cannot poll a ring; serve with --datapath user or uring")
        self._quiesce(index)
        if polled:
            # The datapath waits on a kick fd all the same: one nobody writes, and it polls the ring.
            fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._own_fds.add(fd)
            self._swap_fd(ring, "kick_fd", fd, [fd])
        else:
            self._swap_fd(ring, "kick_fd", fds[0], taken)
        ring.polled = polled
        ring.started = True
        self._apply()

    def _set_vring_call(self, msg, fds, taken):
        index = msg.payload & P.VRING_IDX_MASK
        ring = self._ring(msg.name, index)
        self._quiesce(index)
        if msg.payload & P.VRING_NOFD_MASK:
            # No interrupts wanted: the datapath still signals something, an eventfd nobody reads.
            fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._own_fds.add(fd)
            self._swap_fd(ring, "call_fd", fd, [fd])
        else:
            self._swap_fd(ring, "call_fd", fds[0], taken)
        self._apply()

    def _set_vring_err(self, msg, fds, taken):
        index = msg.payload & P.VRING_IDX_MASK
        ring = self._ring(msg.name, index)
        self._swap_fd(ring, "err_fd", fds[0] if fds else -1, taken)

    def _set_vring_enable(self, msg, fds, taken):
        index, num = msg.payload
        ring = self._ring(msg.name, index)
        if num not in (0, 1):
            raise ProtocolError(msg.name, "num", f"{num}; enable is 0 or 1")
        if not self._protocol_features_negotiated:
            # Without it rings are enabled from the start and stay so (the spec's "Ring states").
            raise ProtocolError(msg.name, "order", "VHOST_USER_F_PROTOCOL_FEATURES was not negotiated "
                                                   "(neither SET_PROTOCOL_FEATURES nor SET_FEATURES with bit 30)")
        self._quiesce(index)
        ring.enabled = bool(num)
        self._apply()

    def _swap_fd(self, ring: Vring, field: str, fd: int, taken: list[int]) -> None:
        old = getattr(ring, field)
        setattr(ring, field, fd)
        if fd >= 0:
            taken.append(fd)
        if old >= 0:
            self._own_fds.discard(old)
            os.close(old)

    # --- servicing ---
    @property
    def _protocol_features_negotiated(self) -> bool:
        """Bit 30 as SET_FEATURES acked it; before SET_FEATURES, whether the front end sent
        SET_PROTOCOL_FEATURES, which it may only after seeing bit 30 offered: QEMU sends
        SET_VRING_ENABLE before SET_FEATURES (it checks the bit in GET_FEATURES' answer)."""
        if self.features_acked is not None:
            return bool(self.features_acked & spec.bit(P.VHOST_USER_F_PROTOCOL_FEATURES))
        return self.protocol_set

    def _enabled(self, ring: Vring) -> bool:
        if ring.enabled is not None:
            return ring.enabled
        return not self._protocol_features_negotiated

    def _ready(self, index: int) -> bool:
        """Whether the ring is serviced: set up and started, and enabled, or (the spec's ring states) a TX
        ring started but disabled, which is processed and its frames discarded, where the datapath can."""
        ring = self.rings[index]
        if self.paused or not (ring.started and ring.num > 0 and ring.addr is not None and ring.kick_fd >= 0
                and self.mem is not None and self.features_acked is not None):
            return False
        return self._enabled(ring) or self._discards(index)

    def _packed(self) -> bool:
        """Whether SET_FEATURES acked the packed ring layout (front ends send it before the rings)."""
        return bool(self.dev.driver_features & spec.bit(spec.VIRTIO_F_RING_PACKED))

    def _discards(self, index: int) -> bool:
        return (spec.is_tx_queue(index) and not self._enabled(self.rings[index])
                and self.dev.datapath.ring_modes)

    def _queue_config(self, name: str, index: int) -> QueueConfig:
        ring = self.rings[index]
        a = ring.addr
        event_idx = bool(self.dev.driver_features & spec.bit(spec.VIRTIO_RING_F_EVENT_IDX))
        extra = 2 if event_idx or self.features_acked is None else 0
        packed = self._packed()
        parts = {}
        for what, uaddr, size in (("desc", a.desc, spec.desc_table_size(ring.num)),
                                  ("avail", a.avail, spec.PACKED_EVENT_SIZE if packed
                                   else spec.avail_ring_size(ring.num) - 2 + extra),
                                  ("used", a.used, spec.PACKED_EVENT_SIZE if packed
                                   else spec.used_ring_size(ring.num) - 2 + extra)):
            gpa = self.uaddr_to_gpa(uaddr, size)
            if gpa is None:
                raise ProtocolError(name, what, f"ring {index}: {uaddr:#x} (+{size:#x}) is not inside one "
                                                "memory region")
            parts[what] = gpa
        cfg = QueueConfig(ring.num, parts["desc"], parts["avail"], parts["used"], ring.kick_fd, ring.call_fd,
                          ring.last_avail_idx, None, polled=ring.polled, discard=self._discards(index),
                          log_used=a.log if a.flags & P.VRING_F_LOG else None)
        try:
            cfg.check_addresses(self.mem, event_idx, packed)
        except ConfigError as e:
            raise ProtocolError(name, "addresses", f"ring {index}: {e}") from None
        if packed:
            try:
                cfg.check_packed_base()
            except ConfigError as e:
                raise ProtocolError(name, "base", f"ring {index}: {e}") from None
        return cfg

    def _stop_device(self) -> None:
        """Stop the datapath and keep each serviced ring's position for its next start."""
        if not self.dev.running:
            return
        self.dev.stop()
        for q, cfg in self.dev.queues.items():
            self.rings[q].last_avail_idx = cfg.last_avail_idx & 0xFFFF
            self.rings[q].used_idx = cfg.used_idx & 0xFFFF

    def _quiesce(self, index: int) -> None:
        if index in self.dev.queues:
            self._stop_device()

    def _apply(self) -> None:
        """Run the device over exactly the rings that are ready (stopping it first if that set changed)."""
        ready = [q for q in range(self.num_queues) if self._ready(q)]
        if self.dev.running:
            if set(ready) == set(self.dev.queues):
                return
            self._stop_device()
        for q in range(self.num_queues):
            self.dev.remove_queue(q)
        if not ready:
            return
        for q in ready:
            ring = self.rings[q]
            if ring.call_fd < 0:
                # A ring starts on its kick fd (the spec), call fd or not: until SET_VRING_CALL gives
                # one, the datapath signals an eventfd nobody reads.
                fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
                self._own_fds.add(fd)
                ring.call_fd = fd
            cfg = self._queue_config("ring start", q)
            # The used index is the ring's in guest memory (a front end that reconnects, or was handed
            # a ring by another back end, never tells it): read it when the ring starts fresh.
            if ring.used_idx is not None:
                cfg.used_idx = ring.used_idx
            elif self._packed():
                cfg.used_idx = cfg.last_avail_idx
            else:
                cfg.used_idx = struct.unpack("<H", self.mem.read(cfg.used + 2, 2))[0]
            self.dev.set_queue(q, cfg)
        self.dev.start()

    # --- faults, reset, lifetime ---
    def signal_faults(self) -> list[str]:
        """After the device's err_fd fired: one line per stopped ring (or the lost link), and the ring's
        ERR eventfd written so the front end hears it too. ``memory_gone`` is set when the front end
        took its memory away: then the connection has nothing left to serve."""
        failure = self.dev.wait_fault(0)
        if failure is None:
            return []
        self.memory_gone = isinstance(failure, GuestMemoryGone) or self._memory_shrunk()
        lines = [str(failure)]
        if self.memory_gone and not isinstance(failure, GuestMemoryGone):
            lines.append("a memory file is smaller than its region now: the front end took its memory away")
        queue = getattr(failure, "queue", None)
        for q in ([queue] if queue is not None else range(self.num_queues)):
            if 0 <= q < self.num_queues and self.rings[q].err_fd >= 0:
                os.eventfd_write(self.rings[q].err_fd, 1)
        return lines

    def _memory_shrunk(self) -> bool:
        """Whether a region's file is now shorter than the region: the kernel's vhost worker meets such
        memory with EFAULT and reports a plain ring error, which this tells apart."""
        for r, fd in self.regions:
            try:
                if os.fstat(fd).st_size < r.mmap_offset + r.memory_size:
                    return True
            except OSError:
                return True
        return False

    def reset(self) -> None:
        """RESET_DEVICE: rings, memory and features back to their initial state, ready to be set up
        again. Ownership stays (the spec) and so do the protocol features: they belong to the
        connection, and QEMU negotiates them once per connection, not after a device reset."""
        self._stop_device()
        self.dev.reset()
        self._release()
        self.features_acked = None
        self.status = 0
        self.paused = False
        self.rings = [Vring() for _ in range(self.num_queues)]
        self.dev.set_queue_pairs(self.pairs)

    def _release(self) -> None:
        for ring in self.rings:
            for field in ("kick_fd", "call_fd", "err_fd"):
                fd = getattr(ring, field)
                if fd >= 0:
                    os.close(fd)
                    setattr(ring, field, -1)
        self._own_fds.clear()
        if self.mem is not None:
            self.dev.set_memory(None)
            self.mem.close()
            self.mem = None
        if self.log is not None:
            self.log.close()
            self.log = None
        self.log_all = False
        if self.log_fd >= 0:
            os.close(self.log_fd)
            self.log_fd = -1
        for _, fd in self.regions:
            os.close(fd)
        self.regions = []
        self._region_refs = {}

    def stats(self) -> dict:
        return {**self.dev.stats(), "rarps_sent": self.rarps_sent}

    def close(self) -> None:
        """Stop the device and release every fd and mapping, in that order."""
        if self.closed:
            return
        try:
            self.dev.close()
        finally:
            self.dev.mem = None
            self._release()
            self.closed = True
