"""vnetbe: a userspace virtio-net device backend with vhost-net offload.

    with vnetbe.GuestMemory(64 << 20) as mem, \\
         vnetbe.Macvtap.create("vnb-m0", parent="vnb-p0", mode="bridge") as link, \\
         vnetbe.VirtioNet(mem, link, datapath="user") as dev:
        guest = vnetbe.GuestDriver(dev)
        guest.send(frame)
        got = guest.receive(timeout=1.0)
"""
from __future__ import annotations

from .errors import (ConfigError, GuestFault, KernelRefused, LabError, LinkError, NotRoot, SetupError,
                     VnetError)
from .memory import GuestMemory
from .queue import QueueConfig, QueueState
from .device import VirtioNet
from .guest import GuestDriver
from .link import Link, Macvtap, Tap

__version__ = "0.1.0"

__all__ = [
    "GuestMemory", "VirtioNet", "GuestDriver", "QueueConfig", "QueueState", "Link", "Macvtap", "Tap",
    "VnetError", "SetupError", "NotRoot", "LinkError", "KernelRefused", "ConfigError", "GuestFault",
    "LabError",
]
