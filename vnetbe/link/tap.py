"""tap: a tun/tap interface made through /dev/net/tun, with a virtio-net header on every frame.

vnetbe creates taps non-persistent: the interface lives exactly as long as its fd, so even a crashed
process leaves nothing behind.
"""
from __future__ import annotations

import errno
import fcntl
import os
import struct

from pyroute2 import IPRoute

from ..errors import KernelRefused, LinkError, NotRoot, SetupError
from .base import (
    DEFAULT_VNET_HDR_LEN,
    FD_FLAGS,
    IFF_MULTI_QUEUE,
    IFF_NO_PI,
    IFF_TAP,
    IFF_VNET_HDR,
    NOT_ROOT_MSG,
    TUNGETIFF,
    TUNSETIFF,
    TUNSETPERSIST,
    Link,
    check_ifname,
    find_link,
    link_kind,
    normalize_mac,
    random_mac,
    silence_host_stack,
)

TUN_PATH = "/dev/net/tun"
IFF_PERSIST = 0x0800
_IFREQ = struct.Struct("16sH22x")  # struct ifreq: name, then ifr_flags in the 24-byte union
_FLAGS = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR


def _tunsetiff(name: str, multi_queue: bool = False) -> int:
    """Open /dev/net/tun and bind it to tap ``name`` (creating the tap if it does not exist); with
    ``multi_queue``, as one more queue of a multi-queue tap."""
    try:
        fd = os.open(TUN_PATH, FD_FLAGS)
    except FileNotFoundError:
        raise SetupError(f"{TUN_PATH} is missing: tun/tap is not available (modprobe tun)") from None
    except PermissionError:
        raise NotRoot(NOT_ROOT_MSG) from None
    try:
        fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack(name.encode(), _FLAGS | (IFF_MULTI_QUEUE if multi_queue else 0)))
    except OSError as e:
        os.close(fd)
        if e.errno == errno.EPERM:
            raise NotRoot(NOT_ROOT_MSG) from None
        if e.errno == errno.EBUSY:
            raise LinkError(f"tap {name} is already open by another process: close it there or use another"
                            " name") from None
        if e.errno == errno.EINVAL:
            want = "multi-queue" if multi_queue else "single-queue"
            raise LinkError(f"interface {name} exists but is not a {want} tap: pick another name") from None
        raise KernelRefused(f"TUNSETIFF {name}", e.errno) from None
    return fd


def _tun_flags(fd: int) -> int:
    buf = bytearray(_IFREQ.size)
    fcntl.ioctl(fd, TUNGETIFF, buf, True)
    return _IFREQ.unpack(buf)[1]


class Tap(Link):
    kind = "tap"

    @classmethod
    def create(cls, name: str, mac: str | None = None, mtu: int | None = None,
               vnet_hdr_len: int = DEFAULT_VNET_HDR_LEN, queues: int = 1) -> Tap:
        """Create a non-persistent tap, give it a MAC (random locally administered if None), bring it up.
        With ``queues`` > 1 it is a multi-queue tap (IFF_MULTI_QUEUE) with that many queue fds."""
        check_ifname(name)
        mac = normalize_mac(mac) if mac is not None else random_mac()
        with IPRoute() as ipr:
            # TUNSETIFF would silently attach to an existing persistent tap of that name: refuse instead.
            if find_link(ipr, name) is not None:
                raise LinkError(f"interface name {name} already in use: pick another name or attach to it with"
                                " Tap.attach")
        fd = _tunsetiff(name, queues > 1)
        try:
            ifindex = _ifindex(name)
        except BaseException:
            os.close(fd)  # non-persistent: this removes the tap
            raise
        tap = cls(name, ifindex, fd, owned=True, vnet_hdr_len=vnet_hdr_len)
        try:
            tap.set_queues(queues)
            tap.set_mac(mac)
            if mtu is not None:
                tap.set_mtu(mtu)
            silence_host_stack(name)
            tap.set_up()
        except BaseException:
            tap.close()
            raise
        return tap

    @classmethod
    def attach(cls, name: str, vnet_hdr_len: int | None = DEFAULT_VNET_HDR_LEN) -> Tap:
        """Open an existing (persistent) tap; it is never deleted by vnetbe (owned=False)."""
        check_ifname(name)
        with IPRoute() as ipr:
            msg = find_link(ipr, name)
            if msg is None:
                raise LinkError(f"interface {name} does not exist: create it first (Tap.create) or check the name")
            if link_kind(msg) != "tun":
                raise LinkError(f"interface {name} is a {link_kind(msg) or 'physical device'}, not a tap: pass a"
                                " tap or create one with Tap.create")
        fd = _tunsetiff(name, _is_multi_queue(name))
        return cls(name, _ifindex(name), fd, owned=False, vnet_hdr_len=vnet_hdr_len)

    @property
    def multi_queue(self) -> bool:
        return _is_multi_queue(self.name)

    def _open_fd(self) -> int:
        return _tunsetiff(self.name, self.multi_queue)

    def _open_queue_fd(self) -> int:
        if not self.multi_queue:
            raise LinkError(f"tap {self.name} is single-queue: a device with several queue pairs needs a "
                            "multi-queue tap (Tap.create(..., queues=N), or ip tuntap add ... multi_queue)")
        return _tunsetiff(self.name, True)

    def _swap_fd(self) -> None:
        if self.multi_queue:   # the other queues, or the new fd opened first, keep the tap alive
            super()._swap_fd()
            return
        # A single-queue tap accepts one fd at a time, and a non-persistent one dies with its fd: keep it
        # alive across the swap with TUNSETPERSIST, then restore the old persistence.
        persistent = bool(_tun_flags(self.fd) & IFF_PERSIST)
        if not persistent:
            fcntl.ioctl(self.fd, TUNSETPERSIST, 1)
        os.close(self.fd)
        self.fd = -1
        self.fd = self._open_fd()  # on failure the tap stays persistent; close() deletes it if owned
        if not persistent:
            fcntl.ioctl(self.fd, TUNSETPERSIST, 0)


def _is_multi_queue(name: str) -> bool:
    try:
        with open(f"/sys/class/net/{name}/tun_flags") as f:
            return bool(int(f.read(), 16) & IFF_MULTI_QUEUE)
    except (OSError, ValueError):
        return False


def _ifindex(name: str) -> int:
    with IPRoute() as ipr:
        msg = find_link(ipr, name)
    if msg is None:
        raise LinkError(f"tap {name} vanished right after creation: another process deleted it; try again")
    return msg["index"]
