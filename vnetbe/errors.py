"""One exception family for vnetbe.

Every expected failure is a VnetError whose message is one line saying what happened and what to do;
the CLI prints that line without a traceback.
"""
from __future__ import annotations

import os


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
        self.call = call
        self.errno = errno_
        self.hint = hint
        msg = f"{call} failed: {os.strerror(errno_)} (errno {errno_})"
        if hint:
            msg += f"; {hint}"
        super().__init__(msg)


class ConfigError(VnetError):
    """An argument from the caller (not the guest) is invalid: queue size, address, feature set."""


class SnapshotRefused(ConfigError):
    """A device snapshot (VirtioNet.save) that cannot be restored: corrupt, from a newer version, or not
    matching the guest memory, the features or the rings it is restored over; says which field and why."""


class LabError(SetupError):
    """The kernel lab cannot start or failed."""


class GuestFault(VnetError):
    """The guest put something illegal in a virtqueue; the queue is stopped and DEVICE_NEEDS_RESET set.

    ``code`` is the C fault code, ``queue`` the queue index (0 = RX, 1 = TX).
    """

    code: int = 0          # enum vnb_fault value, set by vnetbe.faults
    name: str = ""         # the counter name in stats()["faults"]
    what: str = "guest fault"

    def __init__(self, queue: int | None = None, detail: str = ""):
        self.queue = queue
        qname = {0: "RX", 1: "TX"}.get(queue, str(queue)) if queue is not None else None
        msg = f"guest fault on {qname} queue: {self.what}" if qname else f"guest fault: {self.what}"
        if detail:
            msg += f" ({detail})"
        msg += "; the queue is stopped and the device needs a reset"
        super().__init__(msg)


# One class per C fault (enum vnb_fault, csrc/device/vnb_fault.h), matched by ``name``: the C enum member
# VNB_FAULT_<NAME> is the class whose name is <name>. vnetbe.faults gives each class its code from the
# enum and refuses to import if a C fault has no class here, so the two cannot drift apart.
class DescriptorOutOfBounds(GuestFault):
    name, what = "desc_addr", "descriptor address/length outside guest memory or across a hole"


class ChainLoop(GuestFault):
    name, what = "loop", "descriptor chain loops or is longer than the queue"


class NestedIndirect(GuestFault):
    name, what = "nested_indirect", "indirect descriptor inside an indirect table"


class IndirectLength(GuestFault):
    name, what = "indirect_len", "indirect table length is zero, not a multiple of 16 or over 65536 entries"


class WritableInTx(GuestFault):
    name, what = "tx_writable", "device-writable descriptor in a TX chain"


class AvailIndexJump(GuestFault):
    name, what = "avail_idx", "available index moved by more than the queue size"


class HeadOutOfRange(GuestFault):
    name, what = "head_range", "available ring names a descriptor index beyond the queue size"


class NextOutOfRange(GuestFault):
    name, what = "next_range", "descriptor 'next' beyond the queue (or indirect table) size"


class ReadableAfterWritable(GuestFault):
    name, what = "order", "device-readable descriptor after a device-writable one"


class ChainTooLong(GuestFault):
    name, what = "chain_too_long", "descriptor chain has more buffers than the device can map (1024)"


class IndirectNotNegotiated(GuestFault):
    name, what = "indirect_not_negotiated", "indirect descriptor used without VIRTIO_F_INDIRECT_DESC"


class ReadableInRx(GuestFault):
    name, what = "rx_readable", "device-readable descriptor in an RX chain"


class RingOutOfBounds(GuestFault):
    name, what = "ring_addr", "ring (descriptor table, available or used ring) outside guest memory"


class IndirectWithNext(GuestFault):
    name, what = "indirect_next", "descriptor with both INDIRECT and NEXT (forbidden by VIRTIO 1.2 2.7.5.3.1)"


class GuestMemoryGone(GuestFault):
    name, what = "mem_gone", ("guest memory vanished under its mapping (the front end shrank or truncated "
                              "its memory file)")


class BufferIdInvalid(GuestFault):
    name, what = "buffer_id", "packed ring: buffer id beyond the queue size, or reused while still in flight"


class ChainFlags(GuestFault):
    name, what = "chain_flags", ("packed ring: a chain continues into a descriptor the driver has not made "
                                 "available (wrong AVAIL/USED bits for the wrap counter)")


class VhostFault(GuestFault):
    """Only Python knows this one (vhost's ERR eventfd): its code lies above every C code."""
    code, name, what = 100, "vhost", "vhost-net reported an error on the queue's ERR eventfd"


class LinkGone(LinkError):
    """The link failed under a running device (its interface was deleted): the datapath stopped."""


class DatapathStalled(VnetError):
    """The datapath's thread stopped passing through its loop while it should be running: stuck (a
    debugger, a starved CPU, a bug), not idle, since an idle thread still wakes once a heartbeat."""


class ProtocolError(VnetError):
    """A vhost-user front end sent a message this back end refuses: names the message and the field.
    ``framed`` is (request, flags) when the whole message was read, so the stream is still in step and
    the refusal can be answered (REPLY_ACK); otherwise the connection is closed. The server goes on."""

    def __init__(self, message: str, field: str, detail: str):
        self.message, self.field, self.detail = message, field, detail
        self.framed: tuple[int, int] | None = None
        super().__init__(f"vhost-user {message}: bad {field}: {detail}")
