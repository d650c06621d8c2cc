"""Hearing that an interface was deleted. A macvtap's fd says nothing when its interface goes (reads
give EAGAIN, writes vanish), so a datapath that must notice listens on rtnetlink for RTM_DELLINK
and then asks the fd (``link_alive``): a move to another namespace is announced the same way."""
from __future__ import annotations

import errno
import fcntl
import socket
import struct

from .._native import lib

_NLMSGHDR = struct.Struct("=IHHII")     # len, type, flags, seq, pid
_IFINFOMSG = struct.Struct("=BxHiII")   # family, type, index, flags, change


def link_alive(fd: int) -> bool:
    """Whether the interface of a tap or macvtap fd still exists, in whatever namespace it now lives:
    a deleted macvtap answers TUNGETIFF with ENOLINK, a deleted tap with EBADFD. An RTM_DELLINK alone
    does not say it: a move to another namespace is announced the same way."""
    try:
        fcntl.ioctl(fd, lib.TUNGETIFF, bytearray(40))   # struct ifreq
    except OSError as e:
        return e.errno not in (errno.ENOLINK, errno.EBADFD)
    return True


class LinkWatch:
    """A non-blocking rtnetlink socket subscribed to link events; poll its fileno() for input."""

    def __init__(self, ifindex: int):
        self.ifindex = ifindex
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                                  lib.NETLINK_ROUTE)
        try:
            self.sock.bind((0, lib.RTMGRP_LINK))
        except OSError:
            self.sock.close()
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def deleted(self) -> bool:
        """Read what is pending; True if it announces our interface gone (deleted, or moved to another
        namespace: ask ``link_alive`` which)."""
        gone = False
        while True:
            try:
                buf = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return gone
            except OSError:       # ENOBUFS: an overrun lost messages; the next ones still come
                continue
            off = 0
            while off + _NLMSGHDR.size <= len(buf):
                length, kind = _NLMSGHDR.unpack_from(buf, off)[:2]
                if length < _NLMSGHDR.size:
                    break
                if kind == lib.RTM_DELLINK and length >= _NLMSGHDR.size + _IFINFOMSG.size:
                    index = _IFINFOMSG.unpack_from(buf, off + _NLMSGHDR.size)[2]
                    gone = gone or index == self.ifindex
                off += (length + 3) & ~3

    def close(self) -> None:
        self.sock.close()
