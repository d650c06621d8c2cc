"""vhost-user: the back end a VMM (QEMU, Cloud Hypervisor, crosvm) or DPDK's virtio-user drives over a
unix socket. protocol.py is the wire format (pure), channel.py the socket framing, session.py one
connection's state and device, server.py the listening and reconnecting."""
from __future__ import annotations

from .server import VhostUserServer
from .session import Session

__all__ = ["VhostUserServer", "Session"]
