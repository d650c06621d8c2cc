"""The vhost-user wire format (QEMU docs/interop/vhost-user.rst): message header, request codes,
feature bits and the payloads a virtio-net back end accepts, parsed and checked.

Pure: bytes and fd counts in, typed messages or a ProtocolError out. Nothing here reads a socket or
maps memory, so every check can be driven by a property test or a fuzzer with any input.
"""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from ..errors import ProtocolError

HEADER = struct.Struct("<III")          # request, flags, size
HEADER_SIZE = HEADER.size
VERSION = 0x1                           # flags bits 0-1
FLAG_VERSION_MASK = 0x3
FLAG_REPLY = 1 << 2
FLAG_NEED_REPLY = 1 << 3
FLAGS_KNOWN = FLAG_VERSION_MASK | FLAG_REPLY | FLAG_NEED_REPLY

MAX_FDS = 8                             # VHOST_MEMORY_BASELINE_NREGIONS: the most fds one message carries
MEM_REGIONS_MAX = 8                     # regions in one SET_MEM_TABLE
MAX_MEM_SLOTS = 32                      # regions in all, with CONFIGURE_MEM_SLOTS (ADD/REM_MEM_REG)
VRING_IDX_MASK = 0xFF                   # SET_VRING_KICK/CALL/ERR payload: bits 0-7 the ring index
VRING_NOFD_MASK = 1 << 8                # ... bit 8: no fd is passed (polling / no interrupt)
VRING_F_LOG = 1 << 0                    # vhost_vring_addr.flags: log used-ring writes (migration)

# Feature bit of the device feature set that says protocol features may be negotiated.
VHOST_USER_F_PROTOCOL_FEATURES = 30
VHOST_F_LOG_ALL = 26


class Request(enum.IntEnum):
    """Front end -> back end requests (the spec's VHOST_USER_* numbers)."""
    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    SEND_RARP = 19
    NET_SET_MTU = 20
    SET_BACKEND_REQ_FD = 21
    IOTLB_MSG = 22
    SET_VRING_ENDIAN = 23
    GET_CONFIG = 24
    SET_CONFIG = 25
    CREATE_CRYPTO_SESSION = 26
    CLOSE_CRYPTO_SESSION = 27
    POSTCOPY_ADVISE = 28
    POSTCOPY_LISTEN = 29
    POSTCOPY_END = 30
    GET_INFLIGHT_FD = 31
    SET_INFLIGHT_FD = 32
    GPU_SET_SOCKET = 33
    RESET_DEVICE = 34
    VRING_KICK = 35
    GET_MAX_MEM_SLOTS = 36
    ADD_MEM_REG = 37
    REM_MEM_REG = 38
    SET_STATUS = 39
    GET_STATUS = 40


class ProtocolFeature(enum.IntEnum):
    """VHOST_USER_PROTOCOL_F_* bit numbers."""
    MQ = 0
    LOG_SHMFD = 1
    RARP = 2
    REPLY_ACK = 3
    NET_MTU = 4
    BACKEND_REQ = 5
    CROSS_ENDIAN = 6
    CRYPTO_SESSION = 7
    PAGEFAULT = 8
    CONFIG = 9
    BACKEND_SEND_FD = 10
    HOST_NOTIFIER = 11
    INFLIGHT_SHMFD = 12
    RESET_DEVICE = 13
    INBAND_NOTIFICATIONS = 14
    CONFIGURE_MEM_SLOTS = 15
    STATUS = 16


# What this back end implements: queue pairs (MQ), acks on request, the MTU message, memory slots
# added and removed one at a time, RESET_DEVICE, the device's config space (GET/SET_CONFIG) and its
# status (SET/GET_STATUS), and live migration: the dirty log in shared memory (LOG_SHMFD) and a RARP
# sent for a guest that cannot announce itself (RARP). Not post-copy (PAGEFAULT).
PROTOCOL_FEATURES = sum(1 << b for b in (ProtocolFeature.MQ, ProtocolFeature.REPLY_ACK,
                                          ProtocolFeature.NET_MTU, ProtocolFeature.CONFIGURE_MEM_SLOTS,
                                          ProtocolFeature.RESET_DEVICE, ProtocolFeature.CONFIG,
                                          ProtocolFeature.STATUS, ProtocolFeature.LOG_SHMFD, ProtocolFeature.RARP))

# --- payloads ---
U64 = struct.Struct("<Q")
VRING_STATE = struct.Struct("<II")        # index, num
VRING_ADDR = struct.Struct("<IIQQQQ")     # index, flags, desc, used, avail, log (front-end user addresses)
MEM_HDR = struct.Struct("<II")            # nregions, padding
MEM_REGION = struct.Struct("<QQQQ")       # guest_phys_addr, memory_size, userspace_addr, mmap_offset
MEM_SINGLE = struct.Struct("<Q")          # padding before the one region of ADD/REM_MEM_REG
CONFIG_HDR = struct.Struct("<III")        # offset, size, flags; then size bytes of config space
CONFIG_MAX = 256                          # the spec's largest config space a message carries
CONFIG_FLAGS = 0x1                        # VHOST_SET_CONFIG_TYPE_MIGRATION; 0 is FRONTEND
LOG = struct.Struct("<QQ")                # SET_LOG_BASE: mmap_size, mmap_offset (of the fd that comes with it)


@dataclass(frozen=True)
class MemRegion:
    guest_phys_addr: int
    memory_size: int
    userspace_addr: int
    mmap_offset: int

    @property
    def gpa_end(self) -> int:
        return self.guest_phys_addr + self.memory_size

    @property
    def uaddr_end(self) -> int:
        return self.userspace_addr + self.memory_size


@dataclass(frozen=True)
class VringAddr:
    index: int
    flags: int
    desc: int
    used: int
    avail: int
    log: int


@dataclass(frozen=True)
class Message:
    """One request: its code, flags, decoded payload and how many fds came with it."""
    request: Request
    flags: int
    payload: object      # int (u64), (index, num), VringAddr, tuple[MemRegion, ...], (offset, size, flags,
                         # bytes) of a config message, or None
    nfds: int

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & FLAG_NEED_REPLY)

    @property
    def name(self) -> str:
        return self.request.name


class _Size:
    """The payload sizes one request may have: ``min`` to ``max`` in steps of ``step``."""

    def __init__(self, lo: int, hi: int | None = None, step: int = 1):
        self.min, self.max, self.step = lo, lo if hi is None else hi, step

    def __call__(self, n: int) -> bool:
        return self.min <= n <= self.max and (n - self.min) % self.step == 0


def _fixed(size: int) -> _Size:
    return _Size(size)


# Payload size each request must have (a predicate on the header's size field), and how many fds.
_SIZE = {
    Request.GET_FEATURES: _fixed(0), Request.SET_FEATURES: _fixed(8),
    Request.SET_OWNER: _fixed(0), Request.RESET_OWNER: _fixed(0),
    Request.SET_MEM_TABLE: _Size(MEM_HDR.size, MEM_HDR.size + MEM_REGIONS_MAX * MEM_REGION.size, MEM_REGION.size),
    Request.SET_VRING_NUM: _fixed(8), Request.SET_VRING_ADDR: _fixed(VRING_ADDR.size),
    Request.SET_VRING_BASE: _fixed(8), Request.GET_VRING_BASE: _fixed(8),
    Request.SET_VRING_KICK: _fixed(8), Request.SET_VRING_CALL: _fixed(8), Request.SET_VRING_ERR: _fixed(8),
    Request.GET_PROTOCOL_FEATURES: _fixed(0), Request.SET_PROTOCOL_FEATURES: _fixed(8),
    Request.GET_QUEUE_NUM: _fixed(0), Request.SET_VRING_ENABLE: _fixed(8), Request.NET_SET_MTU: _fixed(8),
    Request.GET_MAX_MEM_SLOTS: _fixed(0), Request.RESET_DEVICE: _fixed(0),
    Request.ADD_MEM_REG: _fixed(MEM_SINGLE.size + MEM_REGION.size),
    Request.REM_MEM_REG: _fixed(MEM_SINGLE.size + MEM_REGION.size),
    Request.GET_CONFIG: _Size(CONFIG_HDR.size, CONFIG_HDR.size + CONFIG_MAX),
    Request.SET_CONFIG: _Size(CONFIG_HDR.size, CONFIG_HDR.size + CONFIG_MAX),
    Request.SET_STATUS: _fixed(8), Request.GET_STATUS: _fixed(0),
    Request.SET_LOG_BASE: _fixed(LOG.size), Request.SET_LOG_FD: _fixed(0), Request.SEND_RARP: _fixed(8),
}
# Requests known to the spec that this back end refuses by name (postcopy, other devices).
REFUSED = {
    Request.POSTCOPY_ADVISE: "postcopy migration is not supported",
    Request.POSTCOPY_LISTEN: "postcopy migration is not supported",
    Request.POSTCOPY_END: "postcopy migration is not supported",
}
# The largest payload any accepted request has (SET_MEM_TABLE's).
MAX_PAYLOAD = max(s.max for s in _SIZE.values())
# A request this back end does not take is still read whole, up to this (the spec's largest payload,
# GET_CONFIG's 12 + 256 bytes, fits), so it can be answered "no" under REPLY_ACK and the stream stays
# in step; beyond it the header is refused unread.
MAX_UNTAKEN_PAYLOAD = 4096
# Requests whose reply is their answer: REPLY_ACK adds no ack to these, and a failure cannot be
# answered in their place (the connection closes).
HAS_REPLY = frozenset({Request.GET_FEATURES, Request.GET_PROTOCOL_FEATURES, Request.GET_VRING_BASE,
                       Request.GET_QUEUE_NUM, Request.GET_MAX_MEM_SLOTS, Request.GET_CONFIG, Request.GET_STATUS,
                       Request.SET_LOG_BASE, Request.POSTCOPY_ADVISE, Request.POSTCOPY_END,
                       Request.GET_INFLIGHT_FD, Request.IOTLB_MSG, Request.CREATE_CRYPTO_SESSION})


def max_payload(request: int) -> int:
    """The most payload bytes a request with this code may announce."""
    try:
        size = _SIZE.get(Request(request))
    except ValueError:
        size = None
    return size.max if size is not None else MAX_UNTAKEN_PAYLOAD


def parse_header(data: bytes) -> tuple[int, int, int]:
    """(request, flags, size) of a 12-byte header; refuses a wrong version, a reply bit or flags
    the spec does not define, and sizes no request of this back end has."""
    if len(data) != HEADER_SIZE:
        raise ProtocolError("header", "length", f"{len(data)} bytes, a header has {HEADER_SIZE}")
    request, flags, size = HEADER.unpack(data)
    name = _name(request)
    if flags & FLAG_VERSION_MASK != VERSION:
        raise ProtocolError(name, "flags", f"version {flags & FLAG_VERSION_MASK}, this back end speaks {VERSION}")
    if flags & FLAG_REPLY:
        raise ProtocolError(name, "flags", "the reply bit is set on a request")
    if flags & ~FLAGS_KNOWN:
        raise ProtocolError(name, "flags", f"undefined bits {flags & ~FLAGS_KNOWN:#x}")
    if size > max_payload(request):
        raise ProtocolError(name, "size", f"{size} bytes announced; this request has at most {max_payload(request)}")
    return request, flags, size


def _name(request: int) -> str:
    try:
        return Request(request).name
    except ValueError:
        return f"request {request}"


def parse(request: int, flags: int, payload: bytes, nfds: int) -> Message:
    """Decode and check one request's payload and fd count against what its type requires."""
    name = _name(request)
    try:
        req = Request(request)
    except ValueError:
        raise ProtocolError(name, "request", "unknown request code") from None
    if req in REFUSED:
        raise ProtocolError(name, "request", REFUSED[req])
    if req not in _SIZE:
        raise ProtocolError(name, "request", "not implemented by this back end (its protocol feature "
                                             "was not offered)")
    size = len(payload)
    if not _SIZE[req](size):
        raise ProtocolError(name, "size", f"{size} bytes is not a valid payload for this request")
    value: object = None
    want_fds = 0
    if req in (Request.SET_FEATURES, Request.SET_PROTOCOL_FEATURES, Request.NET_SET_MTU, Request.SET_STATUS,
               Request.SEND_RARP):
        value = U64.unpack(payload)[0]
    elif req in (Request.GET_CONFIG, Request.SET_CONFIG):
        offset, csize, cflags = CONFIG_HDR.unpack_from(payload)
        if csize != size - CONFIG_HDR.size:
            raise ProtocolError(name, "size", f"config size {csize}, the payload carries {size - CONFIG_HDR.size} "
                                              "bytes after its header")
        if cflags & ~CONFIG_FLAGS:
            raise ProtocolError(name, "flags", f"undefined config flags {cflags & ~CONFIG_FLAGS:#x}")
        value = (offset, csize, cflags, payload[CONFIG_HDR.size:])
    elif req in (Request.SET_VRING_KICK, Request.SET_VRING_CALL, Request.SET_VRING_ERR):
        value = U64.unpack(payload)[0]
        if value & ~(VRING_IDX_MASK | VRING_NOFD_MASK):
            raise ProtocolError(name, "payload", f"undefined bits {value & ~(VRING_IDX_MASK | VRING_NOFD_MASK):#x}")
        want_fds = 0 if value & VRING_NOFD_MASK else 1
    elif req in (Request.SET_VRING_NUM, Request.SET_VRING_BASE, Request.GET_VRING_BASE, Request.SET_VRING_ENABLE):
        value = VRING_STATE.unpack(payload)
    elif req == Request.SET_VRING_ADDR:
        value = VringAddr(*VRING_ADDR.unpack(payload))
    elif req == Request.SET_MEM_TABLE:
        nregions, _pad = MEM_HDR.unpack_from(payload)
        if nregions != (size - MEM_HDR.size) // MEM_REGION.size:
            raise ProtocolError(name, "nregions", f"{nregions} regions announced, the payload holds "
                                                  f"{(size - MEM_HDR.size) // MEM_REGION.size}")
        if not 1 <= nregions <= MEM_REGIONS_MAX:
            raise ProtocolError(name, "nregions", f"{nregions}; a table has 1 to {MEM_REGIONS_MAX} regions")
        value = tuple(MemRegion(*MEM_REGION.unpack_from(payload, MEM_HDR.size + i * MEM_REGION.size))
                      for i in range(nregions))
        for r in value:
            check_region(name, r)
        check_no_overlap(name, value)
        want_fds = nregions
    elif req == Request.SET_LOG_BASE:
        value = LOG.unpack(payload)       # (mmap_size, mmap_offset)
        want_fds = 1
    elif req == Request.SET_LOG_FD:
        # An eventfd to signal after logging, as the kernel's VHOST_SET_LOG_FD; none: no signal.
        want_fds = min(nfds, 1)
    elif req in (Request.ADD_MEM_REG, Request.REM_MEM_REG):
        value = MemRegion(*MEM_REGION.unpack_from(payload, MEM_SINGLE.size))
        check_region(name, value)
        # ADD carries the region's fd; REM names the region, and some front ends send its fd again.
        want_fds = 1 if req == Request.ADD_MEM_REG else min(nfds, 1)
    if nfds != want_fds:
        raise ProtocolError(name, "fds", f"{nfds} fds came with it, it takes {want_fds}")
    return Message(req, flags, value, nfds)


_PAGE = 4096
_U64_END = 1 << 64


def check_region(name: str, r: MemRegion) -> None:
    """A region must be non-empty, page-aligned where mmap needs it, and not wrap around 2^64 in
    any of its three address spaces."""
    if r.memory_size == 0:
        raise ProtocolError(name, "memory_size", f"empty region at guest address {r.guest_phys_addr:#x}")
    for field, start in (("guest_phys_addr", r.guest_phys_addr), ("userspace_addr", r.userspace_addr),
                         ("mmap_offset", r.mmap_offset)):
        if start + r.memory_size > _U64_END:
            raise ProtocolError(name, field, f"{start:#x} + size {r.memory_size:#x} wraps around")
    if r.mmap_offset % _PAGE:
        raise ProtocolError(name, "mmap_offset", f"{r.mmap_offset:#x} is not page aligned")


def check_no_overlap(name: str, regions) -> None:
    """No two regions share a guest-physical or a front-end user address."""
    for field, start, end in (("guest_phys_addr", "guest_phys_addr", "gpa_end"),
                              ("userspace_addr", "userspace_addr", "uaddr_end")):
        spans = sorted((getattr(r, start), getattr(r, end)) for r in regions)
        for (a0, a1), (b0, b1) in zip(spans, spans[1:]):
            if b0 < a1:
                raise ProtocolError(name, field, f"regions [{a0:#x}, {a1:#x}) and [{b0:#x}, {b1:#x}) overlap")


# --- replies ---
def reply(request: int, payload: bytes) -> bytes:
    return HEADER.pack(int(request), VERSION | FLAG_REPLY, len(payload)) + payload


def reply_u64(request: int, value: int) -> bytes:
    return reply(request, U64.pack(value))


def reply_vring_state(request: Request, index: int, num: int) -> bytes:
    return reply(request, VRING_STATE.pack(index, num))


def reply_config(request: Request, offset: int, flags: int, data: bytes) -> bytes:
    return reply(request, CONFIG_HDR.pack(offset, len(data), flags) + data)


def config_payload(offset: int, size: int, flags: int = 0, data: bytes | None = None) -> bytes:
    return CONFIG_HDR.pack(offset, size, flags) + (bytes(size) if data is None else data)


# --- requests (what a front end sends: vnetbe's own front end and the tests use these) ---
def request(req: Request, payload: bytes = b"", *, need_reply: bool = False) -> bytes:
    return HEADER.pack(int(req), VERSION | (FLAG_NEED_REPLY if need_reply else 0), len(payload)) + payload


def mem_table_payload(regions) -> bytes:
    return MEM_HDR.pack(len(regions), 0) + b"".join(
        MEM_REGION.pack(r.guest_phys_addr, r.memory_size, r.userspace_addr, r.mmap_offset) for r in regions)


def log_payload(size: int, offset: int = 0) -> bytes:
    return LOG.pack(size, offset)


def mem_single_payload(r: MemRegion) -> bytes:
    return MEM_SINGLE.pack(0) + MEM_REGION.pack(r.guest_phys_addr, r.memory_size, r.userspace_addr, r.mmap_offset)
