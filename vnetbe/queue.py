"""What the device needs to know about one split virtqueue: where its parts are and how to signal.

This is the VMM's door: a VMM fills a QueueConfig from what its guest driver wrote (queue size and
the three guest-physical addresses) and from KVM (ioeventfd as kick_fd, irqfd as call_fd).
"""
from __future__ import annotations

from dataclasses import dataclass

from . import spec
from .errors import ConfigError


@dataclass
class QueueConfig:
    size: int
    desc: int            # guest-physical address of the descriptor table
    avail: int           # ... of the available (driver) ring
    used: int            # ... of the used (device) ring
    kick_fd: int         # the driver writes it to notify the device (an ioeventfd under KVM)
    call_fd: int         # the device writes it to interrupt the driver (an irqfd under KVM)
    last_avail_idx: int = 0   # where the device resumes (non-zero after a hand-over)
    used_idx: int = 0
    # vhost-user's ring states, for datapaths with ring_modes (user, uring); vhost refuses both:
    polled: bool = False      # the driver never kicks (NOFD): the device looks at the ring by itself
    discard: bool = False     # TX started but disabled: its chains are used and their frames dropped

    def validate(self, mem, event_idx: bool) -> None:
        self.check_addresses(mem, event_idx)
        for name in ("kick_fd", "call_fd"):
            if getattr(self, name) < 0:
                raise ConfigError(f"queue needs a {name}")

    def check_addresses(self, mem, event_idx: bool) -> None:
        """Size a power of two, parts aligned, each part inside one memory region."""
        spec.check_queue_size(self.size)
        if self.desc % 16 or self.avail % 2 or self.used % 4:
            raise ConfigError(
                f"queue addresses misaligned (desc {self.desc:#x} needs 16, avail {self.avail:#x} 2, "
                f"used {self.used:#x} 4)")
        extra = 2 if event_idx else 0
        for what, gpa, size in (
            ("descriptor table", self.desc, spec.desc_table_size(self.size)),
            ("available ring", self.avail, spec.avail_ring_size(self.size) - 2 + extra),
            ("used ring", self.used, spec.used_ring_size(self.size) - 2 + extra),
        ):
            try:
                mem.region_of(gpa, size)
            except ConfigError:
                raise ConfigError(
                    f"{what} at {gpa:#x} (+{size:#x}) is not inside one guest memory region") from None


@dataclass
class QueueState:
    """Ring position handed from one datapath to the next (VHOST_GET/SET_VRING_BASE)."""
    last_avail_idx: int
    used_idx: int
    broken: bool = False
    fault: int = 0
