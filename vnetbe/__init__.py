"""vnetbe: a userspace virtio-net device backend with vhost-net offload.

    with vnetbe.GuestMemory(64 << 20) as mem, \\
         vnetbe.Macvtap.create("vnb-m0", parent="vnb-p0", mode="bridge") as link, \\
         vnetbe.VirtioNet(mem, link, datapath="user") as dev:
        guest = vnetbe.GuestDriver(dev)
        guest.send(frame)
        got = guest.receive(timeout=1.0)
"""
from __future__ import annotations

from .datapath import DATAPATHS
from .datapath.vhost_ioctl import DEV_PATH as VHOST_NET_PATH
from .device import VirtioNet
from .errors import (
    ConfigError,
    DatapathStalled,
    GuestFault,
    KernelRefused,
    LabError,
    LinkError,
    LinkGone,
    NotRoot,
    ProtocolError,
    SetupError,
    VnetError,
)
from .link import Link, Macvtap, Tap
from .memory import GuestMemory
from .queue import QueueConfig, QueueState
from .vhost_user import VhostUserServer

__version__ = "0.1.0"


def __getattr__(name: str):
    # vnetbe.GuestDriver is vnetbe's own front end, part of the tooling (vnetbe.tools.guest), which
    # imports this package: resolving it on first use keeps the library free of imports from above.
    if name == "GuestDriver":
        from .tools.guest import GuestDriver
        return GuestDriver
    raise AttributeError(f"module 'vnetbe' has no attribute {name!r}")


__all__ = [
    "GuestMemory", "VirtioNet", "DATAPATHS", "VHOST_NET_PATH", "GuestDriver", "QueueConfig", "QueueState", "Link", "Macvtap", "Tap",
    "VnetError", "SetupError", "NotRoot", "LinkError", "KernelRefused", "ConfigError", "GuestFault",
    "LinkGone", "DatapathStalled", "LabError", "ProtocolError", "VhostUserServer",
]
