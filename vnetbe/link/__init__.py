"""Links: the kernel interfaces vnetbe's datapaths read and write frames through.

``Macvtap`` (a macvlan on a parent, /dev/tapN) and ``Tap`` (/dev/net/tun) share the ``Link`` API:
``fd``, ``set_vnet_hdr_len``, ``set_offload``, ``stats``, ``set_mtu``, ``close``.
"""
from .base import (
    NOT_ROOT_MSG,
    TUN_F_CSUM,
    TUN_F_TSO4,
    TUN_F_TSO6,
    TUN_F_TSO_ECN,
    TUN_F_UFO,
    Link,
    LinkStats,
    check_ifname,
    find_link,
    link_kind,
    map_netlink_error,
    random_mac,
    silence_host_stack,
    tun_offload_from_virtio,
)
from .macvtap import MODES as MACVTAP_MODES
from .macvtap import Macvtap
from .tap import Tap

__all__ = [
    "Link", "LinkStats", "Macvtap", "Tap", "MACVTAP_MODES", "random_mac", "tun_offload_from_virtio",
    "TUN_F_CSUM", "TUN_F_TSO4", "TUN_F_TSO6", "TUN_F_TSO_ECN", "TUN_F_UFO",
    # for tools that make interfaces of their own (topologies): the same names, checks and errors
    "NOT_ROOT_MSG", "check_ifname", "find_link", "link_kind", "map_netlink_error", "silence_host_stack",
]
