"""A stand-in for a tap that needs no root: one end of a SOCK_SEQPACKET socketpair.

Message boundaries make it behave like a tap fd for the datapath (one writev = one frame, one readv
= one frame); the test holds the other end and sees exactly what a tap would, vnet header included.
"""
from __future__ import annotations

import socket

from vnetbe.link import LinkStats


class PairLink:
    name = "pair"
    ifindex = 0
    mac = "02:00:00:00:00:01"
    mtu = 1500
    owned = True

    def __init__(self, sndbuf: int = 4 << 20):
        self.a, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for s in (self.a, self.peer):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sndbuf)
        self.a.setblocking(False)
        self.fd = self.a.fileno()
        self.vnet_hdr_len = None
        self.offload = None

    def set_vnet_hdr_len(self, n: int) -> None:
        self.vnet_hdr_len = n

    def set_offload(self, flags: int) -> None:
        self.offload = flags

    def stats(self) -> LinkStats:
        """A socketpair keeps no interface counters."""
        return LinkStats()

    def inject(self, frame: bytes, hdr: bytes | None = None) -> None:
        """A frame arriving from the network (the tap would prepend the vnet header)."""
        self.peer.send((hdr if hdr is not None else bytes(self.vnet_hdr_len or 12)) + frame)

    def sent(self, timeout: float = 1.0) -> bytes | None:
        """The next frame the device wrote (vnet header included), or None."""
        self.peer.settimeout(timeout)
        try:
            return self.peer.recv(1 << 17)
        except (socket.timeout, BlockingIOError):
            return None

    def close(self) -> None:
        self.a.close()
        self.peer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
