"""A stand-in for a tap that needs no root: one end of a SOCK_SEQPACKET socketpair.

Message boundaries make it behave like a tap fd for the datapath (one writev = one frame, one readv
= one frame); the test holds the other end and sees exactly what a tap would, vnet header included.
"""
from __future__ import annotations

import socket

from vnetbe.link import LinkStats


class PairLink:
    """Queue 0 of the stand-in; ``set_queues(n)`` gives it n queues, each its own socketpair
    (``queue(p)`` is queue p, with ``inject``/``sent`` on that queue)."""
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
        self._sndbuf = sndbuf
        self._more: list[PairLink] = []     # queues 1..
        self.attached: dict[int, bool] = {}  # TUNSETQUEUE as the device asked it

    @classmethod
    def from_socket(cls, a: socket.socket) -> "PairLink":
        """Queue 0 over ``a``, one end of a SOCK_SEQPACKET socketpair whose other end another process
        holds (``inject``/``sent`` are that process's to do)."""
        self = cls.__new__(cls)
        self.a, self.peer = a, socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)   # a placeholder peer
        self.a.setblocking(False)
        self.fd = a.fileno()
        self.vnet_hdr_len = self.offload = None
        self._sndbuf, self._more, self.attached = 4 << 20, [], {}
        return self

    @property
    def queue_fds(self) -> list[int]:
        return [self.fd] + [q.fd for q in self._more]

    def set_queues(self, n: int) -> None:
        while len(self._more) > n - 1:
            self._more.pop().close()
        while len(self._more) < n - 1:
            q = PairLink(self._sndbuf)
            q.vnet_hdr_len, q.offload = self.vnet_hdr_len, self.offload
            self._more.append(q)

    def queue(self, p: int) -> "PairLink":
        return self if p == 0 else self._more[p - 1]

    def set_queue_attached(self, p: int, attached: bool) -> None:
        self.attached[p] = attached

    # receive filters as a control queue sets them (a socketpair has none: recorded)
    promisc = allmulti = False
    multicast: list[bytes] = []

    def rx_flags(self) -> tuple[bool, bool]:
        return self.promisc, self.allmulti

    def set_promisc(self, on: bool) -> None:
        self.promisc = on

    def set_allmulti(self, on: bool) -> None:
        self.allmulti = on

    def set_multicast(self, macs: list[bytes]) -> None:
        self.multicast = list(macs)

    def set_mac(self, mac: str) -> None:
        self.mac = mac

    def set_vnet_hdr_len(self, n: int) -> None:
        for q in [self] + self._more:
            q.vnet_hdr_len = n

    def get_vnet_hdr_len(self) -> int:
        return self.vnet_hdr_len or 10      # a tap's until TUNSETVNETHDRSZ

    def set_offload(self, flags: int) -> None:
        for q in [self] + self._more:
            q.offload = flags

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
        for q in self._more:
            q.close()
        self._more = []
        self.a.close()
        self.peer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
