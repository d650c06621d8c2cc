"""What the device needs to know about one virtqueue (split or packed): where its parts are and how to signal.

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
    desc: int            # guest-physical address of the descriptor table (packed: the descriptor ring)
    avail: int           # ... of the available (driver) ring (packed: the driver event suppression)
    used: int            # ... of the used (device) ring (packed: the device event suppression)
    kick_fd: int         # the driver writes it to notify the device (an ioeventfd under KVM)
    call_fd: int         # the device writes it to interrupt the driver (an irqfd under KVM)
    # Where the device resumes (after a hand-over). Packed: position | wrap counter << 15, as vhost and
    # vhost-user encode it; None: where a fresh ring starts (0, packed 0x8000).
    last_avail_idx: int | None = None
    used_idx: int | None = None
    # vhost-user's ring states, for datapaths with ring_modes (user, uring); vhost refuses both:
    polled: bool = False      # the driver never kicks (NOFD): the device looks at the ring by itself
    discard: bool = False     # TX started but disabled: its chains are used and their frames dropped
    # While a dirty log is on (migration): the guest-physical address the used ring's writes are logged
    # at, vhost-user's log_guest_addr; None: the used ring's own address.
    log_used: int | None = None

    def base(self, packed: bool) -> tuple[int, int]:
        """(last_avail_idx, used_idx), a fresh ring's where none was set."""
        start = spec.PACKED_START if packed else 0
        return (start if self.last_avail_idx is None else self.last_avail_idx,
                start if self.used_idx is None else self.used_idx)

    def validate(self, mem, event_idx: bool, packed: bool = False) -> None:
        self.check_addresses(mem, event_idx, packed)
        if packed:
            self.check_packed_base()
        for name in ("kick_fd", "call_fd"):
            if getattr(self, name) < 0:
                raise ConfigError(f"queue needs a {name}")

    def check_addresses(self, mem, event_idx: bool, packed: bool = False) -> None:
        """Size a power of two (packed: any), parts aligned, each part inside one memory region."""
        spec.check_queue_size(self.size, packed)
        if packed:
            self._check_packed(mem)
            return
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


    def check_packed_base(self) -> None:
        """Both packed positions inside the ring (their bit 15 is the wrap counter)."""
        for v in self.base(True):
            if (v & ~spec.PACKED_WRAP) >= self.size:
                raise ConfigError(f"packed position {v & ~spec.PACKED_WRAP} beyond the ring size {self.size}")

    def _check_packed(self, mem) -> None:
        if self.desc % 16 or self.avail % 4 or self.used % 4:
            raise ConfigError(f"packed queue addresses misaligned (descriptor ring {self.desc:#x} needs 16, "
                              f"driver area {self.avail:#x} 4, device area {self.used:#x} 4)")
        for what, gpa, size in (("descriptor ring", self.desc, spec.desc_table_size(self.size)),
                                ("driver event suppression", self.avail, spec.PACKED_EVENT_SIZE),
                                ("device event suppression", self.used, spec.PACKED_EVENT_SIZE)):
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
