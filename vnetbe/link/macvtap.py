"""macvtap: a macvlan interface on a parent, with a character device /dev/tap<ifindex> for its frames.

Mode facts (measured on 6.1 and 6.18, see docs/macvtap-modes.md): bridge delivers between macvtaps of one parent;
vepa and private send everything out of the parent and need a hairpin switch on the other side;
passthru hands the whole parent (and its MAC) to a single macvtap.
"""
from __future__ import annotations

import errno
import os
import stat
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..errors import ConfigError, KernelRefused, LinkError, NotRoot, SetupError
from .base import (
    DEFAULT_VNET_HDR_LEN,
    FD_FLAGS,
    NOT_ROOT_MSG,
    Link,
    check_ifname,
    find_link,
    link_kind,
    map_netlink_error,
    normalize_mac,
    random_mac,
    silence_host_stack,
)

MODES = ("vepa", "bridge", "private", "passthru")
ARPHRD_ETHER = 1
_MACV_KINDS = ("macvlan", "macvtap")


def _macv_children(ipr: IPRoute, parent_index: int) -> list[tuple[str, str | None]]:
    """(name, mode) of every macvlan/macvtap stacked on the parent in this namespace."""
    out = []
    for msg in ipr.link("dump"):
        if msg.get("link") != parent_index or msg.get_attr("IFLA_LINK_NETNSID") is not None:
            continue
        kind = link_kind(msg)
        if kind in _MACV_KINDS:
            mode = msg.get(("linkinfo", "data", f"{kind}_mode"))
            out.append((msg.get("ifname"), mode))
    return out


def _passthru_conflict(parent: str, mode: str, children: list[tuple[str, str | None]]) -> LinkError | None:
    """The kernel answers both passthru conflicts with a bare EINVAL; say which one it is."""
    if not children:
        return None
    holders = [n for n, m in children if m == "passthru"]
    if holders:
        return LinkError(
            f"parent {parent} already has a passthru macvtap ({holders[0]}): passthru gives one macvtap the whole"
            " parent; close it or use another parent"
        )
    if mode == "passthru":
        names = ", ".join(n for n, _ in children)
        return LinkError(
            f"parent {parent} already carries macvlan/macvtap devices ({names}): passthru needs the parent to"
            " itself; remove them, use another parent, or pick mode bridge/vepa/private"
        )
    return None


class Macvtap(Link):
    kind = "macvtap"

    def __init__(self, name: str, ifindex: int, fd: int, *, owned: bool, devnode: str, devnode_created: bool,
                 vnet_hdr_len: int | None = DEFAULT_VNET_HDR_LEN, parent: str | None = None,
                 mode: str | None = None):
        # Set before Link.__init__: if it fails it calls close(), which needs them.
        self.devnode = devnode
        self._devnode_created = devnode_created
        self.parent = parent
        self.mode = mode
        super().__init__(name, ifindex, fd, owned=owned, vnet_hdr_len=vnet_hdr_len)

    @classmethod
    def create(cls, name: str, parent: str, mode: str = "bridge", mac: str | None = None,
               mtu: int | None = None, vnet_hdr_len: int = DEFAULT_VNET_HDR_LEN) -> Macvtap:
        """Create a macvtap on ``parent``, bring it up and open its character device.

        ``mac`` defaults to a random locally administered address, except in passthru mode where the
        macvtap keeps the parent's (setting one there would change the parent's own address).
        """
        check_ifname(name)
        if mode not in MODES:
            raise ConfigError(f"unknown macvtap mode {mode!r}: use one of {', '.join(MODES)}")
        if mac is not None and mode == "passthru":
            raise ConfigError("a passthru macvtap takes its parent's MAC (the kernel ignores another): "
                              "drop mac= or set the parent's address first")
        if mac is not None:
            mac = normalize_mac(mac)
        elif mode != "passthru":
            mac = random_mac()

        with IPRoute() as ipr:
            parent_msg = find_link(ipr, parent)
            if parent_msg is None:
                raise LinkError(
                    f"parent interface {parent} does not exist: create it first or pass an existing one with --parent"
                )
            if find_link(ipr, name) is not None:
                raise LinkError(f"interface name {name} already in use: pick another name or attach to it with"
                                " Macvtap.attach")
            if parent_msg["ifi_type"] != ARPHRD_ETHER:
                # The kernel's answer would be a bare EINVAL.
                raise LinkError(f"parent {parent} is not an Ethernet device: macvtap needs an Ethernet parent"
                                " (a NIC, veth, bond, tap...)")
            parent_index = parent_msg["index"]
            conflict = _passthru_conflict(parent, mode, _macv_children(ipr, parent_index))
            if conflict is not None:
                raise conflict

            attrs: dict[str, Any] = {"ifname": name, "kind": "macvtap", "link": parent_index, "macvtap_mode": mode}
            if mac is not None:
                attrs["address"] = mac
            if mtu is not None:
                attrs["mtu"] = mtu
            try:
                ipr.link("add", **attrs)
            except NetlinkError as e:
                if e.code == errno.EINVAL:
                    # Lost a race with another creator, or an MTU above the parent's.
                    conflict = _passthru_conflict(parent, mode, _macv_children(ipr, parent_index))
                    if conflict is not None:
                        raise conflict from None
                    if mtu is not None and mtu > int(parent_msg.get("mtu") or 0):
                        raise LinkError(f"mtu {mtu} is above parent {parent}'s mtu {parent_msg.get('mtu')}:"
                                        " raise the parent's mtu first or pick a smaller one") from None
                raise map_netlink_error(e, action="create macvtap", name=name, kind="macvtap", parent=parent,
                                        attach_hint="Macvtap.attach") from None
            # From here on the interface exists: any failure must delete it again.
            try:
                ifindex = ipr.link("get", ifname=name)[0]["index"]
                silence_host_stack(name)
                ipr.link("set", index=ifindex, state="up")
            except BaseException:
                _delete_quietly(ipr, name)
                raise
        try:
            fd, devnode, created = _open_devnode(name, ifindex)
        except BaseException:
            with IPRoute() as ipr:
                _delete_quietly(ipr, name)
            raise
        return cls(name, ifindex, fd, owned=True, devnode=devnode, devnode_created=created,
                   vnet_hdr_len=vnet_hdr_len, parent=parent, mode=mode)

    @classmethod
    def attach(cls, name: str, vnet_hdr_len: int | None = DEFAULT_VNET_HDR_LEN) -> Macvtap:
        """Open an existing macvtap. It is never deleted by vnetbe (owned=False).

        Each open of /dev/tapN is its own queue, so attaching does not disturb other users of it.
        """
        check_ifname(name)
        with IPRoute() as ipr:
            msg = find_link(ipr, name)
            if msg is None:
                raise LinkError(f"interface {name} does not exist: create it first (Macvtap.create) or check the name")
            kind = link_kind(msg)
            if kind != "macvtap":
                raise LinkError(f"interface {name} is a {kind or 'physical device'}, not a macvtap: pass a macvtap"
                                " or create one on it with Macvtap.create")
            ifindex = msg["index"]
            parent_msg = ipr.link("get", index=msg.get("link"))[0] if msg.get("link") else None
            parent = parent_msg.get("ifname") if parent_msg is not None else None
            mode = msg.get(("linkinfo", "data", "macvtap_mode"))
        fd, devnode, created = _open_devnode(name, ifindex)
        return cls(name, ifindex, fd, owned=False, devnode=devnode, devnode_created=created,
                   vnet_hdr_len=vnet_hdr_len, parent=parent, mode=mode)

    def _open_fd(self) -> int:
        return _open_path(self.devnode)

    def _release(self) -> None:
        if self._devnode_created:
            self._devnode_created = False
            try:
                os.unlink(self.devnode)
            except FileNotFoundError:
                pass


def _delete_quietly(ipr: IPRoute, name: str) -> None:
    """Undo a half-finished create; the original error is the one worth reporting."""
    try:
        ipr.link("del", ifname=name)
    except NetlinkError:
        pass


def _open_path(path: str) -> int:
    try:
        return os.open(path, FD_FLAGS)
    except PermissionError:
        raise NotRoot(NOT_ROOT_MSG) from None
    except OSError as e:
        raise KernelRefused(f"open {path}", e.errno) from None


def _open_devnode(name: str, ifindex: int) -> tuple[int, str, bool]:
    """Open /dev/tap<ifindex>, making the node from sysfs when no devtmpfs/udev made it.

    Returns (fd, path, created) so the node is removed on close only if vnetbe made it.
    """
    path = f"/dev/tap{ifindex}"
    created = False
    if not os.path.exists(path):
        sysdev = f"/sys/class/net/{name}/macvtap/tap{ifindex}/dev"
        try:
            with open(sysdev) as f:
                major, minor = (int(x) for x in f.read().strip().split(":"))
        except FileNotFoundError:
            raise SetupError(f"{sysdev} is missing: macvtap {name} has no character device; is /sys mounted"
                             " from this network namespace?") from None
        try:
            os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(major, minor))
            created = True
        except FileExistsError:
            pass  # udev got there first
        except PermissionError:
            raise NotRoot(NOT_ROOT_MSG) from None
    try:
        fd = _open_path(path)
    except BaseException:
        if created:
            os.unlink(path)
        raise
    return fd, path, created
