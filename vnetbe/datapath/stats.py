"""One stats record for every datapath: the same keys on ``user`` and ``vhost``, so a hand-over sums
them and a reader compares them. What a datapath cannot observe (the kernel keeps no per-vring count
of kicks, for instance) stays 0 and is named in ``not_counted``."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from ..errors import LinkError
from ..faults import DROP_REASONS
from ..link import LinkStats


@dataclass
class DatapathStats:
    tx_frames: int = 0          # frames the datapath handed to the link
    tx_bytes: int = 0
    rx_frames: int = 0          # frames placed in guest buffers
    rx_bytes: int = 0
    tx_kicks: int = 0           # guest kicks, summed from the kick eventfd counters
    rx_kicks: int = 0
    tx_kick_wakeups: int = 0    # wake-ups of the datapath that a kick caused
    rx_kick_wakeups: int = 0
    tx_interrupts: int = 0      # call eventfd writes
    rx_interrupts: int = 0
    syscalls: int = 0           # system calls of the datapath's own thread (0 for a kernel worker)
    wakeups: int = 0            # times the datapath woke up with work
    tap_writes: int = 0
    tap_reads: int = 0
    tap_read_empty: int = 0
    rx_stalls: int = 0          # times RX waited for guest buffers
    rx_merged: int = 0          # frames spread over more than one buffer (MRG_RXBUF)
    tx_tap_full: int = 0        # times TX found the link full and waited for room
    busy_polls: int = 0
    worker_cpu_ns: int = 0      # CPU of the kernel worker (vhost); the user thread is measured by tid
    link_rx_dropped: int = 0    # the link's own drop counters since start (macvtap/tap queue)
    link_tx_dropped: int = 0
    drops: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    faults: dict[str, int] = field(default_factory=dict)   # fault name -> count, only faults seen
    link_down: int = 0          # POLLERR/POLLHUP bits once the link failed for good
    not_counted: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return asdict(self)


COUNTERS = tuple(f.name for f in fields(DatapathStats) if f.type == "int")


class LinkCounters:
    """A link's kernel counters since it was handed to a datapath; once the interface is gone (its
    counters went with it), the last values read."""

    def __init__(self, link):
        self.link = link
        self.base = link.stats()
        self.last = LinkStats()

    def delta(self) -> LinkStats:
        try:
            self.last = self.link.stats() - self.base
        except LinkError:
            pass
        return self.last
