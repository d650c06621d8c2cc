"""A whole device (VirtioNet with the userspace datapath) over a socketpair "tap", driven by
vnetbe's GuestDriver: no root needed."""
from __future__ import annotations

from vnetbe.device import VirtioNet
from vnetbe.memory import GuestMemory
from vnetbe.tools.guest import GuestDriver

from .fakelink import PairLink


# The userspace datapath the rigs run; tests/unit/conftest.py runs the device tests once per value of
# USERSPACE_DATAPATHS (the same C ring logic, with plain system calls or io_uring). "uring-posted" is
# uring as on a tap without FMODE_NOWAIT (the lab's 6.1 macvtap): writes wait, reads stay posted.
USERSPACE_DATAPATHS = ("user", "uring", "uring-posted")
datapath = "user"


class DeviceRig:
    """A whole device (VirtioNet with the userspace datapath) over PairLink, driven by a GuestDriver.

    Takes ownership of ``mem``: close() releases it with the device and the link."""

    def __init__(self, mem: GuestMemory, sndbuf: int = 4 << 20, busyloop_us: int = 0, datapath: str | None = None,
                 **guest_kw):
        self.mem = mem
        self.link = PairLink(sndbuf)
        self.dev = VirtioNet(self.mem, self.link, datapath=datapath or _current(), busyloop_us=busyloop_us)
        try:
            self.guest = GuestDriver(self.dev, **guest_kw)
        except BaseException:   # a refused negotiation must not leak the device, the link or the memory
            self.close()
            raise

    def close(self):
        self.dev.close()
        self.link.close()
        self.mem.close()


def _current() -> str:
    return datapath
