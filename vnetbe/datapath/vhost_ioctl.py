"""The /dev/vhost-net ioctls, one function each (include/uapi/linux/vhost.h), with errors that say
which ioctl failed and what to do about it.

Only the process that issued SET_OWNER may use the fd afterwards (EPERM otherwise), and the kernel's
vhost worker reads guest memory through that process's address space: keep both in one process.
"""
from __future__ import annotations

import errno
import fcntl
import os
import struct

from .._native import lib
from ..errors import KernelRefused, SetupError

# ioctl numbers and feature bits from the kernel's <linux/vhost.h> (csrc/device/vnb_uapi.h).
VHOST_GET_FEATURES = lib.VHOST_GET_FEATURES
VHOST_SET_FEATURES = lib.VHOST_SET_FEATURES
VHOST_SET_OWNER = lib.VHOST_SET_OWNER
VHOST_SET_MEM_TABLE = lib.VHOST_SET_MEM_TABLE
VHOST_SET_VRING_NUM = lib.VHOST_SET_VRING_NUM
VHOST_SET_VRING_ADDR = lib.VHOST_SET_VRING_ADDR
VHOST_SET_VRING_BASE = lib.VHOST_SET_VRING_BASE
VHOST_GET_VRING_BASE = lib.VHOST_GET_VRING_BASE
VHOST_SET_VRING_KICK = lib.VHOST_SET_VRING_KICK
VHOST_SET_VRING_CALL = lib.VHOST_SET_VRING_CALL
VHOST_SET_VRING_ERR = lib.VHOST_SET_VRING_ERR
VHOST_SET_VRING_BUSYLOOP_TIMEOUT = lib.VHOST_SET_VRING_BUSYLOOP_TIMEOUT
VHOST_NET_SET_BACKEND = lib.VHOST_NET_SET_BACKEND

VHOST_SET_LOG_BASE = lib.VHOST_SET_LOG_BASE
VHOST_SET_LOG_FD = lib.VHOST_SET_LOG_FD
VHOST_VRING_F_LOG = lib.VHOST_VRING_F_LOG
VHOST_F_LOG_ALL = lib.VHOST_F_LOG_ALL
VHOST_NET_F_VIRTIO_NET_HDR = lib.VHOST_NET_F_VIRTIO_NET_HDR   # also ANY_LAYOUT: with it vhost strips offloads
DEV_PATH = "/dev/vhost-net"

_HINTS = {
    errno.EPERM: "only the process that called VHOST_SET_OWNER may use this fd; keep vhost in one process",
    errno.EBUSY: "a backend is attached: VRING_NUM/BASE can only change after NET_SET_BACKEND(-1)",
    errno.E2BIG: "too many memory regions for /sys/module/vhost/parameters/max_mem_regions; merge regions "
                 "or raise that parameter",
    errno.EFAULT: "the kernel could not access a ring or region: check ring addresses are mapped in this "
                  "process and inside the memory table",
    errno.EINVAL: "the kernel rejected the argument (queue size not a power of two, misaligned ring, bad fd)",
    errno.ENOTSOCK: "the backend fd is not a tap/macvtap (or AF_PACKET) socket",
    errno.EOPNOTSUPP: "the kernel's vhost-net lacks this feature or ioctl",
}


def _call(fd: int, name: str, req: int, arg=0, mutate: bool = False):
    try:
        if isinstance(arg, (bytes, bytearray)):
            buf = bytearray(arg) if mutate else bytes(arg)
            r = fcntl.ioctl(fd, req, buf, mutate) if mutate else fcntl.ioctl(fd, req, buf)
            return buf if mutate else r
        return fcntl.ioctl(fd, req, arg)
    except OSError as e:
        raise KernelRefused(name, e.errno or 0, _HINTS.get(e.errno or 0, "")) from None


def open_vhost_net() -> int:
    try:
        return os.open(DEV_PATH, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SetupError(f"{DEV_PATH} does not exist: this kernel has no vhost_net (modprobe vhost_net), or, on "
                         "a host without it, run inside the kernel lab: vnetbe lab -- <command>") from None
    except PermissionError:
        raise SetupError(f"cannot open {DEV_PATH}: permission denied; run as root") from None


def set_owner(fd: int) -> None:
    _call(fd, "VHOST_SET_OWNER", VHOST_SET_OWNER)


def get_features(fd: int) -> int:
    buf = _call(fd, "VHOST_GET_FEATURES", VHOST_GET_FEATURES, bytes(8), mutate=True)
    return struct.unpack("=Q", buf)[0]


def set_features(fd: int, features: int) -> None:
    _call(fd, "VHOST_SET_FEATURES", VHOST_SET_FEATURES, struct.pack("=Q", features))


def set_mem_table(fd: int, regions: list[tuple[int, int, int]]) -> None:
    """regions: (guest_phys_addr, memory_size, userspace_addr)."""
    buf = struct.pack("=II", len(regions), 0) + b"".join(
        struct.pack("=QQQQ", gpa, size, hva, 0) for gpa, size, hva in regions)
    _call(fd, "VHOST_SET_MEM_TABLE", VHOST_SET_MEM_TABLE, buf)


def set_vring_num(fd: int, index: int, num: int) -> None:
    _call(fd, "VHOST_SET_VRING_NUM", VHOST_SET_VRING_NUM, struct.pack("=II", index, num))


def set_vring_base(fd: int, index: int, base: int) -> None:
    _call(fd, "VHOST_SET_VRING_BASE", VHOST_SET_VRING_BASE, struct.pack("=II", index, base))


def get_vring_base(fd: int, index: int) -> int:
    buf = _call(fd, "VHOST_GET_VRING_BASE", VHOST_GET_VRING_BASE, struct.pack("=II", index, 0), mutate=True)
    return struct.unpack("=II", buf)[1]


def set_vring_addr(fd: int, index: int, desc_hva: int, used_hva: int, avail_hva: int,
                   log_guest_addr: int | None = None) -> None:
    # Ring addresses are host virtual addresses in the owner process (unlike descriptors, which are GPAs).
    # With log_guest_addr (a GPA) the kernel logs its used-ring writes there (VHOST_VRING_F_LOG).
    flags = 0 if log_guest_addr is None else 1 << VHOST_VRING_F_LOG
    _call(fd, "VHOST_SET_VRING_ADDR", VHOST_SET_VRING_ADDR,
          struct.pack("=IIQQQQ", index, flags, desc_hva, used_hva, avail_hva, log_guest_addr or 0))


def set_log_base(fd: int, log_hva: int) -> None:
    """The dirty log's address in this process: before SET_FEATURES with LOG_ALL (EFAULT otherwise)."""
    _call(fd, "VHOST_SET_LOG_BASE", VHOST_SET_LOG_BASE, struct.pack("=Q", log_hva))


def set_log_fd(fd: int, efd: int) -> None:
    """An eventfd the kernel signals after it logged (-1: none)."""
    _call(fd, "VHOST_SET_LOG_FD", VHOST_SET_LOG_FD, struct.pack("=i", efd))


def _set_file(fd: int, name: str, req: int, index: int, efd: int) -> None:
    _call(fd, name, req, struct.pack("=Ii", index, efd))


def set_vring_kick(fd: int, index: int, efd: int) -> None:
    _set_file(fd, "VHOST_SET_VRING_KICK", VHOST_SET_VRING_KICK, index, efd)


def set_vring_call(fd: int, index: int, efd: int) -> None:
    _set_file(fd, "VHOST_SET_VRING_CALL", VHOST_SET_VRING_CALL, index, efd)


def set_vring_err(fd: int, index: int, efd: int) -> None:
    _set_file(fd, "VHOST_SET_VRING_ERR", VHOST_SET_VRING_ERR, index, efd)


def set_vring_busyloop_timeout(fd: int, index: int, usecs: int) -> None:
    _call(fd, "VHOST_SET_VRING_BUSYLOOP_TIMEOUT", VHOST_SET_VRING_BUSYLOOP_TIMEOUT,
          struct.pack("=II", index, usecs))


def net_set_backend(fd: int, index: int, backend_fd: int) -> None:
    """Attach the tap/macvtap fd to queue ``index`` (-1 detaches)."""
    _set_file(fd, "VHOST_NET_SET_BACKEND", VHOST_NET_SET_BACKEND, index, backend_fd)


def max_mem_regions() -> int:
    try:
        with open("/sys/module/vhost/parameters/max_mem_regions") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 64   # the kernel's default
