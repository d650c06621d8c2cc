"""Throwaway network topologies for tests, benchmarks and the CLI.

Everything here creates kernel objects on construction and removes them on ``close()`` / leaving the
``with`` block, even when the block raised. Names carry the ``vnb`` prefix so ``cleanup_stale`` can find
leftovers of a crashed run, and nothing here ever touches an interface it did not create.

The common case is ``Topology``::

    root namespace                          |  namespace vnb<tag>-ns
    macvtaps (Topology.macvtap) -> vnb<tag>p ==veth== vnb<tag>q  [port of bridge vnb<tag>b, hairpin on]

The hairpin bridge is the "external switch" that VEPA and private mode need to reach each other.
"""
from __future__ import annotations

import ctypes
import errno
import os
import re
import socket
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from pyroute2 import IPRoute, netns
from pyroute2.ethtool.ioctl import IoctlEthtool, NoSuchDevice, NotSupportedError
from pyroute2.netlink.exceptions import NetlinkError

from ..errors import ConfigError, KernelRefused, LinkError, NotRoot
from ..link import NOT_ROOT_MSG, Macvtap, check_ifname, find_link, link_kind, map_netlink_error, silence_host_stack

T = TypeVar("T")

PREFIX = "vnb"
ETH_P_ALL = 0x0003
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

# Link kinds vnetbe may create; a namespace is emptied of these (and only these) before it is removed,
# so physical devices someone moved in are left for the kernel to hand back to the root namespace.
_VIRTUAL_KINDS = {"veth", "bridge", "macvlan", "macvtap", "tun", "dummy"}


def _netns_name(ns: Namespace | str | None) -> str | None:
    return ns.name if isinstance(ns, Namespace) else ns


def _ipr(ns: str | None) -> IPRoute:
    """IPRoute in the root namespace or in ``ns``; flags=0 so a typo never creates a namespace."""
    if ns is None:
        return IPRoute()
    try:
        return IPRoute(netns=ns, flags=0)
    except FileNotFoundError:
        raise LinkError(f"network namespace {ns} does not exist: create it first (Namespace) or check the"
                        " name") from None


def in_netns(ns: str | None, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` in a short-lived thread that joined network namespace ``ns`` (None: run it here).

    setns(CLONE_NEWNET) changes only the calling thread, so the rest of the process stays put; sockets
    ``fn`` creates stay bound to ``ns`` for their whole life, whichever thread later uses them.
    Returns ``fn``'s result or re-raises its exception.
    """
    if ns is None:
        return fn(*args, **kwargs)
    path = os.path.join(netns.NETNS_RUN_DIR, ns)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            box["error"] = LinkError(f"network namespace {ns} does not exist: create it first (Namespace)")
            return
        try:
            if _libc.setns(fd, _CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                box["error"] = NotRoot(NOT_ROOT_MSG) if err == errno.EPERM else KernelRefused(f"setns {ns}", err)
                return
        finally:
            os.close(fd)
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as e:  # handed to the caller's thread below
            box["error"] = e

    t = threading.Thread(target=target, name=f"netns-{ns}", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


class Namespace:
    """A named network namespace (under /var/run/netns), created now and removed on close."""

    def __init__(self, name: str):
        if not name or "/" in name or name in (".", ".."):
            raise ConfigError(f"invalid namespace name {name!r}: use a plain name like vnb0-ns")
        self.name = name
        self._closed = True
        if name in netns.listnetns():
            raise LinkError(f"network namespace {name} already exists: pick another name or remove it"
                            " (cleanup_stale / ip netns del)")
        try:
            netns.create(name)
        except BaseException as e:
            # A failure after the mount point was made leaves an empty file that would block the name.
            try:
                netns.remove(name)
            except OSError:
                pass
            if isinstance(e, PermissionError):
                raise NotRoot(NOT_ROOT_MSG) from None
            raise
        self._closed = False

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``fn(*args, **kwargs)`` inside this namespace (see ``in_netns``)."""
        return in_netns(self.name, fn, *args, **kwargs)

    def ipr(self) -> IPRoute:
        """An IPRoute bound to this namespace; the caller closes it (use it in a ``with``)."""
        return _ipr(self.name)

    def close(self) -> None:
        """Delete the virtual interfaces inside, then the namespace. Safe to call twice.

        Deleting them explicitly makes cleanup synchronous: namespace teardown in the kernel is
        asynchronous, and a veth whose other end is in the root namespace would linger until it runs.
        """
        if self._closed:
            return
        self._closed = True
        try:
            with self.ipr() as ipr:
                _delete_links(ipr, lambda msg: link_kind(msg) in _VIRTUAL_KINDS)
        finally:
            netns.remove(self.name)

    def __enter__(self) -> Namespace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Namespace {self.name}{' closed' if self._closed else ''}>"


def _delete_links(ipr: IPRoute, chosen_by: Callable[[Any], bool]) -> list[str]:
    """Delete the links ``chosen_by`` selects, macvlan/macvtap first (they die with their parent anyway)."""
    chosen = [m for m in ipr.link("dump") if chosen_by(m)]
    chosen.sort(key=lambda m: link_kind(m) not in ("macvlan", "macvtap"))
    gone = []
    for msg in chosen:
        try:
            ipr.link("del", index=msg["index"])
        except NetlinkError as e:
            if e.code != errno.ENODEV:  # ENODEV: went with its parent or veth peer
                raise map_netlink_error(e, action="delete", name=msg.get("ifname")) from None
        gone.append(msg.get("ifname"))
    return gone


# --- ethtool (SIOCETHTOOL through pyroute2's ioctl layer; the netlink one adds nothing here) ---

# Everything that lets the kernel pass GSO or CHECKSUM_PARTIAL frames along, on either direction.
_OFFLOAD_FEATURES = re.compile(
    r"^(tx-checksum-.*|tx-scatter-gather.*|tx-.*segmentation|tx-gso-.*|rx-gro.*|rx-lro|rx-checksum|"
    r"rx-udp-gro-forwarding)$"
)


def _ethtool(ifname: str) -> IoctlEthtool:
    # IoctlEthtool's socket is what binds the ioctls to a namespace: create it in the target thread.
    return IoctlEthtool(ifname)


def _ethtool_error(e: Exception, ifname: str, action: str) -> Exception:
    if isinstance(e, NoSuchDevice):
        return LinkError(f"interface {ifname} does not exist (in that namespace): create it first or check the name")
    if isinstance(e, NotSupportedError):
        return LinkError(f"{ifname} does not support ethtool features ({action}): use a veth or a real NIC")
    if isinstance(e, OSError):
        return map_netlink_error(e, action=action, name=ifname)
    return e


def _features_here(ifname: str) -> dict[str, tuple[bool, bool]]:
    eth = _ethtool(ifname)
    try:
        feats = eth.get_features()
        return {name: (active, available) for name, active, available, *_ in feats}
    finally:
        eth.close()


def get_features(ifname: str, netns: Namespace | str | None = None) -> dict[str, bool]:
    """Active state of every netdev feature of ``ifname`` (ETHTOOL_GFEATURES), by kernel name."""
    try:
        feats = in_netns(_netns_name(netns), _features_here, ifname)
    except (OSError, NoSuchDevice, NotSupportedError) as e:
        raise _ethtool_error(e, ifname, "read features of") from None
    return {name: active for name, (active, _) in feats.items()}


def _set_offloads_here(ifname: str, enabled: bool) -> list[str]:
    eth = _ethtool(ifname)
    try:
        feats = eth.get_features()
        for name, active, available, *_ in feats:
            if available and _OFFLOAD_FEATURES.match(name) and active != enabled:
                feats[name] = enabled
        eth.set_features(feats)
        after = eth.get_features()
        return [n for n, active, *_ in after if _OFFLOAD_FEATURES.match(n) and active != enabled]
    finally:
        eth.close()


def set_offloads(ifname: str, enabled: bool, netns: Namespace | str | None = None) -> None:
    """Turn TSO/GSO/GRO, tx/rx checksumming and scatter-gather on or off (like ``ethtool -K``).

    Off is what a capture needs to see finished segments with real checksums. Features the driver
    cannot change are left alone but reported if they end up in the wrong state.
    """
    try:
        stuck = in_netns(_netns_name(netns), _set_offloads_here, ifname, enabled)
    except (OSError, NoSuchDevice, NotSupportedError) as e:
        raise _ethtool_error(e, ifname, "set offloads on") from None
    if stuck:
        state = "on" if enabled else "off"
        raise LinkError(f"{ifname}: could not turn {state} {', '.join(stuck)}: the driver fixes them; use a"
                        " veth or another device")


def packet_socket(ifname: str, ethertype: int = ETH_P_ALL) -> socket.socket:
    """An AF_PACKET raw socket bound to ``ifname`` in the calling thread's namespace.

    Run it through ``Namespace.run`` to capture or inject inside a namespace.
    """
    # Protocol 0 until bind: a socket opened with ETH_P_ALL queues frames from every interface
    # (eth0 included) in the moment before bind() narrows it to ifname.
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        s.bind((ifname, ethertype))
    except OSError as e:
        s.close()
        raise map_netlink_error(e, action="bind packet socket to", name=ifname) from None
    return s


# --- veth, bridge ---


class VethPair:
    """A veth pair: ``name`` in the root namespace, ``peer_name`` in ``peer_netns`` (or root), both up."""

    def __init__(self, name: str, peer_name: str, peer_netns: Namespace | str | None = None,
                 mtu: int | None = None, offloads: bool = True):
        check_ifname(name)
        check_ifname(peer_name)
        self.name = name
        self.peer_name = peer_name
        self.netns = _netns_name(peer_netns)
        self._closed = True
        with IPRoute() as ipr:
            if find_link(ipr, name) is not None:
                raise LinkError(f"interface name {name} already in use: pick another name or remove it first")
            if self.netns is None and find_link(ipr, peer_name) is not None:
                raise LinkError(f"interface name {peer_name} already in use: pick another name or remove it first")
            peer: dict[str, Any] = {"ifname": peer_name}
            if self.netns is not None:
                peer["net_ns_fd"] = self.netns
            if mtu is not None:
                peer["mtu"] = mtu
            extra = {"mtu": mtu} if mtu is not None else {}
            try:
                ipr.link("add", ifname=name, kind="veth", peer=peer, **extra)
            except FileNotFoundError:
                raise LinkError(f"network namespace {self.netns} does not exist: create it first") from None
            except NetlinkError as e:
                if e.code == errno.EEXIST:
                    raise LinkError(f"interface name {name} or {peer_name} already in use: pick other names") from None
                raise map_netlink_error(e, action="create veth", name=name, kind="veth") from None
            self._closed = False
            try:
                self.index = ipr.link("get", ifname=name)[0]["index"]
                # Both ends speak IPv6 (MLD, DAD, router solicitations) for seconds after coming up, and
                # that multicast reaches every macvtap on the parent: frames a test did not send.
                silence_host_stack(name)
                in_netns(self.netns, silence_host_stack, peer_name)
                ipr.link("set", index=self.index, state="up")
                with _ipr(self.netns) as pipr:
                    pipr.link("set", index=pipr.link("get", ifname=peer_name)[0]["index"], state="up")
                if not offloads:
                    set_offloads(name, False)
                    set_offloads(peer_name, False, self.netns)
            except BaseException:
                self.close()
                raise

    def close(self) -> None:
        """Delete the pair (deleting one end takes the other with it). Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        with IPRoute() as ipr:
            msg = find_link(ipr, self.name)
            if msg is not None and msg["index"] == self.index and link_kind(msg) == "veth":
                try:
                    ipr.link("del", index=self.index)
                except NetlinkError as e:
                    if e.code != errno.ENODEV:
                        raise map_netlink_error(e, action="delete", name=self.name) from None

    def __enter__(self) -> VethPair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def veth_pair(name: str, peer_name: str, peer_netns: Namespace | str | None = None, mtu: int | None = None,
              offloads: bool = True) -> VethPair:
    """Create a veth pair now; use the result in a ``with`` (or call ``close()``)."""
    return VethPair(name, peer_name, peer_netns, mtu=mtu, offloads=offloads)


class Bridge:
    """A Linux bridge in the root namespace or in ``netns``, up, STP off (ports forward at once), no
    multicast snooping (multicast floods to every port, as on a plain switch)."""

    def __init__(self, name: str, netns: Namespace | str | None = None):
        check_ifname(name)
        self.name = name
        self.netns = _netns_name(netns)
        self._closed = True
        with _ipr(self.netns) as ipr:
            if find_link(ipr, name) is not None:
                raise LinkError(f"interface name {name} already in use: pick another name or remove it first")
            try:
                # Snooping off: a snooping bridge joins 224.0.0.106 and sends IGMP reports of its own.
                ipr.link("add", ifname=name, kind="bridge", br_stp_state=0, br_forward_delay=0,
                         br_mcast_snooping=0)
            except NetlinkError as e:
                raise map_netlink_error(e, action="create bridge", name=name, kind="bridge") from None
            self._closed = False
            try:
                self.index = ipr.link("get", ifname=name)[0]["index"]
                in_netns(self.netns, silence_host_stack, name)   # as the veth ends: no chatter of its own
                ipr.link("set", index=self.index, state="up")
            except BaseException:
                self.close()
                raise

    def add_port(self, ifname: str, hairpin: bool = False) -> None:
        """Enslave ``ifname`` (same namespace) and bring it up; ``hairpin`` reflects frames back out of it."""
        with _ipr(self.netns) as ipr:
            msg = find_link(ipr, ifname)
            if msg is None:
                raise LinkError(f"interface {ifname} does not exist in {self.netns or 'the root namespace'}:"
                                " a bridge port must live in the bridge's namespace")
            try:
                ipr.link("set", index=msg["index"], master=self.index)
                if hairpin:
                    ipr.brport("set", index=msg["index"], mode=1)  # IFLA_BRPORT_MODE = BRIDGE_MODE_HAIRPIN
                ipr.link("set", index=msg["index"], state="up")
            except NetlinkError as e:
                raise map_netlink_error(e, action=f"add to bridge {self.name}:", name=ifname) from None

    def close(self) -> None:
        """Delete the bridge; its ports are released, not deleted. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        with _ipr(self.netns) as ipr:
            msg = find_link(ipr, self.name)
            if msg is not None and msg["index"] == self.index and link_kind(msg) == "bridge":
                try:
                    ipr.link("del", index=self.index)
                except NetlinkError as e:
                    if e.code != errno.ENODEV:
                        raise map_netlink_error(e, action="delete", name=self.name) from None

    def __enter__(self) -> Bridge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- the common case ---


class Topology:
    """Namespace ``vnb<tag>-ns``; veth ``vnb<tag>p`` (root, the macvtap parent) to ``vnb<tag>q`` (inside).

    ``hairpin=True`` makes ``vnb<tag>q`` a hairpin port of bridge ``vnb<tag>b`` inside the namespace (the
    external switch VEPA/private need). ``offloads=False`` turns TSO/GSO/GRO/checksum/SG off on both veth
    ends, so the peer sees real segments and checksums. Macvtaps made with ``macvtap()`` are closed with
    the topology, before the rest, in reverse creation order.
    """

    _TAG = re.compile(r"^[A-Za-z0-9]{1,9}$")  # vnb + tag + "m" + two digits fits IFNAMSIZ

    def __init__(self, tag: str = "0", *, hairpin: bool = False, mtu: int | None = None, offloads: bool = True):
        if not self._TAG.match(tag):
            raise ConfigError(f"invalid topology tag {tag!r}: use 1-9 letters or digits")
        self.tag = tag
        self.netns = f"{PREFIX}{tag}-ns"
        self.parent = f"{PREFIX}{tag}p"
        self.peer = f"{PREFIX}{tag}q"
        self.bridge: str | None = f"{PREFIX}{tag}b" if hairpin else None
        self._objects: list[Any] = []
        self._count = 0
        try:
            self.ns = self._own(Namespace(self.netns))
            self.veth = self._own(VethPair(self.parent, self.peer, self.ns, mtu=mtu, offloads=offloads))
            if self.bridge is not None:
                br = self._own(Bridge(self.bridge, self.ns))
                br.add_port(self.peer, hairpin=True)
        except BaseException:
            self.close()
            raise

    def _own(self, obj: T) -> T:
        self._objects.append(obj)
        return obj

    def macvtap(self, mode: str = "bridge", mac: str | None = None, name: str | None = None,
                **kwargs: Any) -> Macvtap:
        """A macvtap on the parent (default name ``vnb<tag>m<n>``), closed with the topology."""
        if name is None:
            name = f"{PREFIX}{self.tag}m{self._count}"
            self._count += 1
        return self._own(Macvtap.create(name, self.parent, mode=mode, mac=mac, **kwargs))

    def peer_socket(self, ethertype: int = ETH_P_ALL) -> socket.socket:
        """An AF_PACKET socket on the peer end inside the namespace: capture or inject "the network"."""
        return self.ns.run(packet_socket, self.peer, ethertype)

    def close(self) -> None:
        """Undo everything in reverse order; every step runs even if one fails, the first error is raised."""
        first: BaseException | None = None
        while self._objects:
            try:
                self._objects.pop().close()
            except Exception as e:
                first = first or e
        if first is not None:
            raise first

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        br = f" bridge={self.bridge} (hairpin)" if self.bridge else ""
        return f"<Topology netns={self.netns} parent={self.parent} peer={self.peer}{br}>"


def cleanup_stale(prefix: str = PREFIX) -> list[str]:
    """Remove interfaces and namespaces whose names start with ``prefix`` (and nothing else).

    For the start of a test session after a crashed run. The prefix must start with "vnb" so a typo can
    never reach the host's own interfaces. Returns what was removed.
    """
    if not prefix.startswith(PREFIX):
        raise ConfigError(f"cleanup prefix {prefix!r} must start with {PREFIX!r}: only vnetbe's objects may go")
    removed: list[str] = []
    for name in sorted(netns.listnetns()):
        if not name.startswith(prefix):
            continue
        try:
            with _ipr(name) as ipr:
                removed += _delete_links(ipr, lambda m: str(m.get("ifname") or "").startswith(prefix))
        except LinkError:
            pass  # a stale mount point without a namespace behind it: removing it below is all there is
        netns.remove(name)
        removed.append(name)
    with IPRoute() as ipr:
        removed += _delete_links(ipr, lambda m: str(m.get("ifname") or "").startswith(prefix))
    return removed
