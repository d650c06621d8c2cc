"""What every link (macvtap or tap) shares: an interface, an fd speaking the tun/tap ioctl set, cleanup.

The fd is what the datapaths use: the userspace datapath reads and writes frames (each prefixed by a
virtio-net header) on it, the vhost datapath hands it to the kernel with VHOST_NET_SET_BACKEND.
Interface configuration (MAC, MTU, up, delete) goes through netlink with pyroute2; the ioctls here are
the ones both drivers/net/tap.c (macvtap) and drivers/net/tun.c (tap) implement.
"""
from __future__ import annotations

import errno
import fcntl
import os
import random
import re
import socket
import struct
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .. import spec
from .._native import lib
from ..errors import ConfigError, KernelRefused, LinkError, NotRoot, SetupError, VnetError

# --- tun/tap ioctls and flags (include/uapi/linux/if_tun.h), values from the kernel's headers ---
TUNSETIFF = lib.TUNSETIFF
TUNSETPERSIST = lib.TUNSETPERSIST
TUNSETOFFLOAD = lib.TUNSETOFFLOAD
TUNGETIFF = lib.TUNGETIFF
TUNGETVNETHDRSZ = lib.TUNGETVNETHDRSZ
TUNSETVNETHDRSZ = lib.TUNSETVNETHDRSZ

IFF_TAP = lib.IFF_TAP
IFF_NO_PI = lib.IFF_NO_PI
IFF_VNET_HDR = lib.IFF_VNET_HDR
IFF_MULTI_QUEUE = lib.IFF_MULTI_QUEUE
IFF_ATTACH_QUEUE = lib.IFF_ATTACH_QUEUE
IFF_DETACH_QUEUE = lib.IFF_DETACH_QUEUE
TUNSETQUEUE = lib.TUNSETQUEUE
_IFREQ_FLAGS = struct.Struct("16xH22x")   # struct ifreq with only ifr_flags set (TUNSETQUEUE)

# TUNSETOFFLOAD flags: what the kernel may hand *up* the fd (i.e. what the guest can receive).
TUN_F_CSUM = lib.TUN_F_CSUM
TUN_F_TSO4 = lib.TUN_F_TSO4
TUN_F_TSO6 = lib.TUN_F_TSO6
TUN_F_TSO_ECN = lib.TUN_F_TSO_ECN
TUN_F_UFO = lib.TUN_F_UFO

IFNAMSIZ = lib.IFNAMSIZ  # including the NUL: names are at most 15 characters
FD_FLAGS = os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC
DEFAULT_VNET_HDR_LEN = spec.NET_HDR_LEN

NOT_ROOT_MSG = "not running as root: vnetbe needs CAP_NET_ADMIN to create interfaces; run with sudo"

_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_BAD_NAME_CHARS = re.compile(r"[\s/:]")


def tun_offload_from_virtio(acked_features: int) -> int:
    """TUNSETOFFLOAD flags for a negotiated virtio-net feature set (what QEMU's tap_fd_set_offload does).

    Only the GUEST_* bits matter: they say what the guest can *receive*, and the offload flags say what
    the kernel may pass up the fd. Segmentation offloads without GUEST_CSUM are meaningless (a GSO frame
    always needs a partial checksum), so they are dropped in that case, as the spec requires.
    """
    if not acked_features & (1 << spec.VIRTIO_NET_F_GUEST_CSUM):
        return 0
    flags = TUN_F_CSUM
    if acked_features & (1 << spec.VIRTIO_NET_F_GUEST_TSO4):
        flags |= TUN_F_TSO4
    if acked_features & (1 << spec.VIRTIO_NET_F_GUEST_TSO6):
        flags |= TUN_F_TSO6
    if flags & (TUN_F_TSO4 | TUN_F_TSO6) and acked_features & (1 << spec.VIRTIO_NET_F_GUEST_ECN):
        flags |= TUN_F_TSO_ECN
    if acked_features & (1 << spec.VIRTIO_NET_F_GUEST_UFO):
        flags |= TUN_F_UFO
    return flags


def check_ifname(name: str) -> None:
    """Reject names the kernel would refuse with a less helpful errno (ERANGE, EINVAL)."""
    if not isinstance(name, str) or not name or len(name.encode()) >= IFNAMSIZ or _BAD_NAME_CHARS.search(name):
        raise ConfigError(
            f"invalid interface name {name!r}: use 1-{IFNAMSIZ - 1} characters without spaces, '/' or ':'"
        )


def silence_host_stack(name: str) -> None:
    """Stop the host's own IPv6 from speaking on a guest's interface (router solicitations, MLD):
    those frames carry the guest's MAC, land in the interface's counters and reach the wire as if the
    guest had sent them. Call before the interface comes up."""
    try:
        with open(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6", "w") as f:
            f.write("1")
    except OSError:
        pass   # no IPv6 in this kernel: nothing to silence


def random_mac() -> str:
    """A random locally administered unicast MAC (first octet: bit 1 set, bit 0 clear)."""
    octets = [random.randrange(256) for _ in range(6)]
    octets[0] = (octets[0] & 0xFC) | 0x02
    return ":".join(f"{o:02x}" for o in octets)


def normalize_mac(mac: str) -> str:
    """Lower-case colon form; refuses multicast addresses, which no interface may own."""
    m = mac.strip().lower().replace("-", ":")
    if not _MAC_RE.match(m):
        raise ConfigError(f"invalid MAC address {mac!r}: expected six hex octets like 02:00:00:00:00:01")
    if int(m[:2], 16) & 1:
        raise ConfigError(f"MAC address {mac} is multicast: an interface needs a unicast address")
    if m == "00:00:00:00:00:00":
        raise ConfigError("MAC address 00:00:00:00:00:00 is not usable: pass a real unicast address")
    return m


def map_netlink_error(
    err: NetlinkError | OSError,
    *,
    action: str,
    name: str,
    kind: str | None = None,
    parent: str | None = None,
    attach_hint: str | None = None,
) -> VnetError:
    """Turn an errno from netlink or an ioctl into one of vnetbe's one-line errors.

    ``action`` is a short verb phrase ("create macvtap", "set mtu on") used when the errno has no
    better specific message; ``kind`` names the module to load when the kernel lacks the link type.
    """
    code = err.code if isinstance(err, NetlinkError) else err.errno
    if code in (errno.EPERM, errno.EACCES):
        return NotRoot(NOT_ROOT_MSG)
    if code == errno.EEXIST:
        msg = f"interface name {name} already in use: pick another name"
        if attach_hint:
            msg += f" or attach to it with {attach_hint}"
        return LinkError(msg)
    if code == errno.ENODEV:
        if parent is not None:
            return LinkError(
                f"parent interface {parent} does not exist: create it first or pass an existing one with --parent"
            )
        return LinkError(f"interface {name} does not exist: create it first or check the name")
    if code == errno.EOPNOTSUPP and kind is not None:
        return SetupError(f"{kind} is not available in this kernel (modprobe {kind})")
    if code == errno.EBUSY:
        what = parent if parent is not None else name
        return LinkError(
            f"{what} is busy (held by another device or process): {action} refused; free it or use another"
        )
    if code == errno.ERANGE:
        return ConfigError(f"invalid interface name {name!r}: names are at most {IFNAMSIZ - 1} characters")
    return KernelRefused(f"{action} {name}", code)


def find_link(ipr: IPRoute, name: str) -> Any | None:
    """The RTM_NEWLINK message for ``name``, or None when no such interface exists."""
    try:
        return ipr.link("get", ifname=name)[0]
    except NetlinkError as e:
        if e.code == errno.ENODEV:
            return None
        raise map_netlink_error(e, action="look up", name=name) from None


def link_kind(msg: Any) -> str | None:
    """IFLA_INFO_KIND of a link message ("macvtap", "tun", "veth", ...); None for physical devices."""
    info = msg.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info is not None else None


@dataclass(frozen=True)
class LinkStats:
    """Kernel interface counters (IFLA_STATS64), from the *interface's* point of view.

    Direction trap: on a tap, what userspace writes to the fd is *received* by the interface (rx_*);
    on a macvtap it is *transmitted* through the macvlan device towards the parent (tx_*).
    """

    rx_packets: int = 0
    rx_bytes: int = 0
    rx_dropped: int = 0
    rx_errors: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0
    tx_dropped: int = 0
    tx_errors: int = 0

    @classmethod
    def from_stats64(cls, stats: dict[str, int]) -> LinkStats:
        return cls(**{f.name: int(stats.get(f.name, 0)) for f in fields(cls)})

    def __sub__(self, other: LinkStats) -> LinkStats:
        return LinkStats(**{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)})

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class Link:
    """An interface plus an open fd on its tun/tap character device.

    Build one with ``Macvtap.create/attach`` or ``Tap.create/attach``; use it as a context manager or
    call ``close()``. ``owned`` links were created by vnetbe and are deleted on close; attached ones are
    only closed.
    """

    kind: ClassVar[str] = "link"

    def __init__(self, name: str, ifindex: int, fd: int, *, owned: bool, vnet_hdr_len: int | None = None):
        self.name = name
        self.ifindex = ifindex
        self.fd = fd
        self.owned = owned
        self.mac = ""
        self.mtu = 0
        self._closed = False
        self._offload = 0
        self._vnet_hdr_len: int | None = None
        self._queue_fds: list[int] = []      # queues 1.. of a multi-queue link (queue 0 is ``fd``)
        self._views: dict[int, LinkQueue] = {}
        self._detached: set[int] = set()
        self._multicast: set[bytes] = set()   # addresses set_multicast added
        try:
            self.refresh()
            if vnet_hdr_len is not None:
                self.set_vnet_hdr_len(vnet_hdr_len)
        except BaseException:
            self.close()
            raise

    # --- fd ---

    def fileno(self) -> int:
        """So a Link can be given to select/poll/epoll directly."""
        return self.fd

    def _ioctl_int_in(self, request: int, value: int, call: str, fd: int | None = None) -> None:
        self._check_open()
        try:
            fcntl.ioctl(self.fd if fd is None else fd, request, struct.pack("i", value))
        except OSError as e:
            raise KernelRefused(f"{call} on {self.name}", e.errno) from None

    def _ioctl_int_out(self, request: int, call: str, fd: int | None = None) -> int:
        self._check_open()
        buf = bytearray(4)
        try:
            fcntl.ioctl(self.fd if fd is None else fd, request, buf, True)
        except OSError as e:
            raise KernelRefused(f"{call} on {self.name}", e.errno) from None
        return struct.unpack("i", buf)[0]

    def set_vnet_hdr_len(self, n: int) -> None:
        """Size of the virtio-net header prefixed to every frame on the fd (10, or 12 with num_buffers).

        Read back with TUNGETVNETHDRSZ: a wrong length would shift every frame without any error, so
        one more syscall is cheap insurance.
        """
        if not isinstance(n, int) or n < 10:
            raise ConfigError(f"vnet header length {n!r} is too small: use 10, or 12 with VERSION_1/MRG_RXBUF")
        # macvtap keeps the length per queue, tun per device: set it on every queue's fd.
        for fd in self.queue_fds:
            self._ioctl_int_in(TUNSETVNETHDRSZ, n, "TUNSETVNETHDRSZ", fd)
            got = self._ioctl_int_out(TUNGETVNETHDRSZ, "TUNGETVNETHDRSZ", fd)
            if got != n:
                raise LinkError(f"{self.name}: vnet header length reads back {got} after setting {n}; kernel bug?")
        self._vnet_hdr_len = n

    def get_vnet_hdr_len(self) -> int:
        return self._ioctl_int_out(TUNGETVNETHDRSZ, "TUNGETVNETHDRSZ")

    def set_offload(self, tun_flags: int) -> None:
        """TUNSETOFFLOAD: which offloaded frames (partial checksum, GSO) the kernel may pass up the fd.

        The argument travels by value, not through a pointer (unlike TUNSETVNETHDRSZ).
        """
        self._check_open()
        allowed = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN | TUN_F_UFO
        if tun_flags & ~allowed:
            raise ConfigError(f"unknown TUN_F_* bits {tun_flags & ~allowed:#x} in offload flags {tun_flags:#x}")
        try:
            for fd in self.queue_fds:
                fcntl.ioctl(fd, TUNSETOFFLOAD, tun_flags)
        except OSError as e:
            raise KernelRefused(f"TUNSETOFFLOAD {tun_flags:#x} on {self.name}", e.errno) from None
        self._offload = tun_flags

    tun_offload_from_virtio = staticmethod(tun_offload_from_virtio)

    def _open_fd(self) -> int:
        """Open a fresh fd on the interface's character device; subclasses know which one."""
        raise NotImplementedError

    # --- queues (multiqueue: one fd per queue pair of the device) ---
    @property
    def queue_fds(self) -> list[int]:
        """One fd per queue: ``fd`` first, then those ``set_queues`` opened."""
        return [self.fd] + self._queue_fds

    def _open_queue_fd(self) -> int:
        """Another queue's fd on the same interface (macvtap: the device node again; tap: TUNSETIFF
        with IFF_MULTI_QUEUE)."""
        return self._open_fd()

    def set_queues(self, n: int) -> None:
        """Have exactly ``n`` queue fds, each with the header length and offloads of ``fd``."""
        self._check_open()
        if n < 1:
            raise ConfigError(f"a link has at least one queue, not {n}")
        while len(self.queue_fds) > n:
            i = len(self.queue_fds) - 1
            os.close(self._queue_fds.pop())
            self._views.pop(i, None)
            self._detached.discard(i)
        while len(self.queue_fds) < n:
            fd = self._open_queue_fd()
            self._queue_fds.append(fd)
            try:
                if self._vnet_hdr_len is not None:
                    self._ioctl_int_in(TUNSETVNETHDRSZ, self._vnet_hdr_len, "TUNSETVNETHDRSZ", fd)
                if self._offload:
                    fcntl.ioctl(fd, TUNSETOFFLOAD, self._offload)
            except OSError as e:
                raise KernelRefused(f"TUNSETOFFLOAD on {self.name}'s queue {len(self._queue_fds)}", e.errno) from None

    def set_queue_attached(self, i: int, attached: bool) -> None:
        """TUNSETQUEUE: a detached queue gets no frames from the kernel's steering (a queue pair nobody
        serves); its fd stays open. Queue 0 of a single-queue link is never detached."""
        self._check_open()
        if attached == (i not in self._detached):
            return
        flag = IFF_ATTACH_QUEUE if attached else IFF_DETACH_QUEUE
        try:
            fcntl.ioctl(self.queue_fds[i], TUNSETQUEUE, _IFREQ_FLAGS.pack(flag))
        except OSError as e:
            raise KernelRefused(f"TUNSETQUEUE {'attach' if attached else 'detach'} on {self.name} queue {i}",
                                e.errno) from None
        (self._detached.discard if attached else self._detached.add)(i)

    def queue(self, i: int) -> "Link | LinkQueue":
        """Queue ``i`` as a datapath sees a link: the link itself for queue 0, else a view whose
        ``fd`` is that queue's."""
        if i == 0:
            return self
        if i not in self._views:
            self._views[i] = LinkQueue(self, i)
        return self._views[i]

    def _swap_fd(self) -> None:
        """Open the new fd before closing the old one, so the interface never loses its last fd."""
        new = self._open_fd()
        old, self.fd = self.fd, new
        os.close(old)

    def reopen_fd(self) -> int:
        """Replace the fd with a new one on the same interface, keeping header length and offloads.

        Useful after a datapath (e.g. vhost) held the old fd, or to start from an empty queue.
        """
        self._check_open()
        self._swap_fd()
        if self._vnet_hdr_len is not None:
            self.set_vnet_hdr_len(self._vnet_hdr_len)
        if self._offload:
            self.set_offload(self._offload)
        return self.fd

    # --- interface (netlink) ---

    def refresh(self) -> None:
        """Reload ``mac`` and ``mtu`` from the kernel."""
        with IPRoute() as ipr:
            msg = self._get(ipr)
        self.mac = msg.get("address") or ""
        self.mtu = int(msg.get("mtu") or 0)

    def _get(self, ipr: IPRoute) -> Any:
        try:
            return ipr.link("get", index=self.ifindex)[0]
        except NetlinkError as e:
            raise map_netlink_error(e, action="look up", name=self.name) from None

    def _set(self, action: str, **attrs: Any) -> None:
        self._check_open()
        try:
            with IPRoute() as ipr:
                ipr.link("set", index=self.ifindex, **attrs)
        except NetlinkError as e:
            raise map_netlink_error(e, action=action, name=self.name) from None

    def set_mtu(self, n: int) -> None:
        if not isinstance(n, int) or n < 68:
            raise ConfigError(f"mtu {n!r} is too small: IPv4 needs at least 68")
        try:
            self._set("set mtu on", mtu=n)
        except KernelRefused as e:
            if e.errno == errno.EINVAL:
                raise LinkError(
                    f"mtu {n} refused for {self.name}: above the device maximum (a macvtap cannot exceed its parent)"
                ) from None
            raise
        self.refresh()

    def set_mac(self, mac: str) -> None:
        self._set("set address on", address=normalize_mac(mac))
        self.refresh()

    def set_up(self) -> None:
        self._set("bring up", state="up")

    # --- receive filters (what a driver's control queue asks: VIRTIO_NET_CTRL_RX, MAC_TABLE_SET) ---
    def rx_flags(self) -> tuple[bool, bool]:
        """(promiscuous, all-multicast) as the interface has them now."""
        with IPRoute() as ipr:
            flags = self._get(ipr)["flags"]
        return bool(flags & lib.IFF_PROMISC), bool(flags & lib.IFF_ALLMULTI)

    def set_promisc(self, on: bool) -> None:
        self._set("set promiscuity on", flags=lib.IFF_PROMISC if on else 0, change=lib.IFF_PROMISC)

    def set_allmulti(self, on: bool) -> None:
        self._set("set all-multicast on", flags=lib.IFF_ALLMULTI if on else 0, change=lib.IFF_ALLMULTI)

    def set_multicast(self, macs: list[bytes]) -> None:
        """The multicast addresses the interface takes (its filter: macvlan delivers a multicast frame
        to a macvtap only if it is in it), replacing those set before; SIOCADDMULTI/SIOCDELMULTI."""
        self._check_open()
        want = set(macs)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for mac, req in [(m, lib.SIOCDELMULTI) for m in self._multicast - want] + \
                            [(m, lib.SIOCADDMULTI) for m in want - self._multicast]:
                ifr = struct.pack("16sH6s8x", self.name.encode(), socket.AF_UNSPEC, mac)
                try:
                    fcntl.ioctl(s.fileno(), req, ifr)
                except OSError as e:
                    raise KernelRefused(f"{'SIOCADDMULTI' if req == lib.SIOCADDMULTI else 'SIOCDELMULTI'} "
                                        f"{mac.hex(':')} on {self.name}", e.errno) from None
                (self._multicast.add if req == lib.SIOCADDMULTI else self._multicast.discard)(mac)

    def set_master(self, bridge: str) -> None:
        """Enslave the interface to an existing Linux bridge (libvirt's <interface type='bridge'>)."""
        check_ifname(bridge)
        with IPRoute() as ipr:
            msg = find_link(ipr, bridge)
        if msg is None:
            raise LinkError(f"bridge {bridge} does not exist: create it first (ip link add {bridge} type bridge)")
        if link_kind(msg) != "bridge":
            raise LinkError(f"{bridge} is a {link_kind(msg) or 'physical device'}, not a bridge: name a Linux bridge")
        self._set(f"enslave to {bridge}", master=msg["index"])

    def stats(self) -> LinkStats:
        """Interface counters as the kernel keeps them (see LinkStats for the direction trap)."""
        self._check_open()
        with IPRoute() as ipr:
            msg = self._get(ipr)
        return LinkStats.from_stats64(msg.get_attr("IFLA_STATS64") or {})

    # --- lifetime ---

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise LinkError(f"{self.kind} {self.name} is closed: create or attach it again")

    def _delete_interface(self) -> None:
        """Delete the interface, but only if the index still carries our name (ifindexes can be reused)."""
        with IPRoute() as ipr:
            msg = find_link(ipr, self.name)
            if msg is None or msg["index"] != self.ifindex:
                return  # already gone, e.g. deleted together with its parent
            try:
                ipr.link("del", index=self.ifindex)
            except NetlinkError as e:
                if e.code != errno.ENODEV:
                    raise map_netlink_error(e, action="delete", name=self.name) from None

    def _release(self) -> None:
        """Subclass hook run after the fd is closed (and the interface deleted if owned)."""

    def close(self) -> None:
        """Close the fd and, if vnetbe created the interface, delete it. Safe to call twice.

        Every step is attempted even if an earlier one fails, so a failure never leaves more behind
        than necessary; the first error is raised at the end.
        """
        if self._closed:
            return
        self._closed = True
        first: BaseException | None = None
        for fd in self._queue_fds:
            try:
                os.close(fd)
            except OSError as e:
                first = first or e
        self._queue_fds = []
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError as e:
                first = first or e
            self.fd = -1
        steps = [self._delete_interface] if self.owned else []
        steps.append(self._release)
        for step in steps:
            try:
                step()
            except Exception as e:
                first = first or e
        if first is not None:
            raise first

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd={self.fd}"
        owned = "owned" if self.owned else "attached"
        return (f"<{type(self).__name__} {self.name} ifindex={self.ifindex} mac={self.mac} mtu={self.mtu}"
                f" {state} {owned}>")


class LinkQueue:
    """Queue ``index`` of a multi-queue link, for a datapath serving one queue pair: the link in all but
    ``fd``, which is that queue's."""

    def __init__(self, link: Link, index: int):
        self._link = link
        self.index = index

    @property
    def fd(self) -> int:
        return self._link.queue_fds[self.index]

    def fileno(self) -> int:
        return self.fd

    def __getattr__(self, name: str) -> Any:
        return getattr(self._link, name)
