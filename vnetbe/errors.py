"""One exception family for vnetbe.

Every expected failure is a VnetError whose message is one line saying what happened and what to do;
the CLI prints that line without a traceback.
"""
from __future__ import annotations


class VnetError(Exception):
    """Base of every error vnetbe raises on purpose."""


class SetupError(VnetError):
    """The host is not ready: missing root, module, device node, interface, or a name already in use."""


class NotRoot(SetupError):
    pass


class LinkError(SetupError):
    """Creating, finding or configuring a network interface failed."""


class KernelRefused(VnetError):
    """A system call or ioctl was refused by the kernel; carries the call name and errno."""

    def __init__(self, call: str, errno_: int, hint: str = ""):
        import os

        self.call = call
        self.errno = errno_
        self.hint = hint
        msg = f"{call} failed: {os.strerror(errno_)} (errno {errno_})"
        if hint:
            msg += f"; {hint}"
        super().__init__(msg)


class ConfigError(VnetError):
    """An argument from the caller (not the guest) is invalid: queue size, address, feature set."""


class LabError(SetupError):
    """The kernel lab cannot start or failed."""


class GuestFault(VnetError):
    """The guest put something illegal in a virtqueue; the queue is stopped and DEVICE_NEEDS_RESET set.

    ``code`` is the C fault code, ``queue`` the queue index (0 = RX, 1 = TX).
    """

    code: int = 0
    what: str = "guest fault"

    def __init__(self, queue: int | None = None, detail: str = ""):
        self.queue = queue
        qname = {0: "RX", 1: "TX"}.get(queue, str(queue)) if queue is not None else "?"
        msg = f"guest fault on {qname} queue: {self.what}"
        if detail:
            msg += f" ({detail})"
        msg += "; the queue is stopped and the device needs a reset"
        super().__init__(msg)


# Fault codes shared with csrc/vnb_fault.h (kept in step by tests/unit/test_fault_codes.py).
class DescriptorOutOfBounds(GuestFault):
    code, what = 1, "descriptor address/length outside guest memory or across a hole"


class ChainLoop(GuestFault):
    code, what = 2, "descriptor chain loops or is longer than the queue"


class NestedIndirect(GuestFault):
    code, what = 3, "indirect descriptor inside an indirect table"


class IndirectLength(GuestFault):
    code, what = 4, "indirect table length is zero or not a multiple of 16"


class WritableInTx(GuestFault):
    code, what = 5, "device-writable descriptor in a TX chain"


class AvailIndexJump(GuestFault):
    code, what = 6, "available index moved by more than the queue size"


class HeadOutOfRange(GuestFault):
    code, what = 7, "available ring names a descriptor index beyond the queue size"


class NextOutOfRange(GuestFault):
    code, what = 8, "descriptor 'next' beyond the queue (or indirect table) size"


class ReadableAfterWritable(GuestFault):
    code, what = 9, "device-readable descriptor after a device-writable one"


class ChainTooLong(GuestFault):
    code, what = 10, "descriptor chain has more buffers than the device can map (1024)"


class IndirectNotNegotiated(GuestFault):
    code, what = 11, "indirect descriptor used without VIRTIO_F_INDIRECT_DESC"


class ReadableInRx(GuestFault):
    code, what = 12, "device-readable descriptor in an RX chain"


class RingOutOfBounds(GuestFault):
    code, what = 13, "ring (descriptor table, available or used ring) outside guest memory"


class VhostFault(GuestFault):
    code, what = 100, "vhost-net reported an error on the queue's ERR eventfd"


FAULTS: dict[int, type[GuestFault]] = {
    c.code: c
    for c in (
        DescriptorOutOfBounds, ChainLoop, NestedIndirect, IndirectLength, WritableInTx, AvailIndexJump,
        HeadOutOfRange, NextOutOfRange, ReadableAfterWritable, ChainTooLong, IndirectNotNegotiated,
        ReadableInRx, RingOutOfBounds, VhostFault,
    )
}


def fault_from_code(code: int, queue: int | None = None, detail: str = "") -> GuestFault:
    cls = FAULTS.get(code)
    if cls is None:
        err = GuestFault(queue, f"unknown fault code {code}")
        return err
    return cls(queue, detail)
