"""Multiqueue: a device's queue pairs, each served by its own single-pair datapath of one kind.

Pair p is virtqueues 2p (RX) and 2p+1 (TX) of the device (VIRTIO 1.2 §5.1.2) and queue p of the link.
Each pair gets what the datapath gives one pair: on ``user``/``uring`` a C thread of its own, on
``vhost`` a /dev/vhost-net of its own with NET_SET_BACKEND on that pair's tap fd, as QEMU does. A
thread per pair is what lets pairs scale with cores, and it keeps the C datapath single-threaded: no
ring and no counter is shared between threads, so nothing new needs a lock or a barrier.
"""
from __future__ import annotations

from ..queue import QueueConfig, QueueState
from .stats import COUNTERS, DatapathStats


def pair_of(q: int) -> tuple[int, int]:
    """Device virtqueue q -> (pair, 0 for RX or 1 for TX within it)."""
    return q // 2, q % 2


class PairedDatapath:
    """``pairs`` single-pair datapaths made by ``make_one``, behind the one-datapath contract (base.py)
    with the device's virtqueue numbers."""

    def __init__(self, make_one, pairs: int):
        self._pairs = []
        try:
            for _ in range(pairs):
                self._pairs.append(make_one())
        except BaseException:
            self.close()
            raise
        first = self._pairs[0]
        self.name = first.name
        self.supported_features = first.supported_features
        self.ring_modes = first.ring_modes
        self._last: list[int] = []        # pairs of the last start (their faults outlive the stop)
        self._running = False
        self._used: set[int] = set()      # pairs ever started (their counters count)

    @property
    def pairs(self) -> int:
        return len(self._pairs)

    def pair(self, p: int):
        return self._pairs[p]

    def start(self, mem, features: int, hdr_len: int, queues: dict[int, QueueConfig], link, err_fd: int,
              busyloop_us: int = 0) -> None:
        by_pair: dict[int, dict[int, QueueConfig]] = {}
        for q, cfg in queues.items():
            p, local = pair_of(q)
            by_pair.setdefault(p, {})[local] = cfg
        multi = len(getattr(link, "queue_fds", [None])) > 1
        self._last, self._running = [], True
        try:
            for p in sorted(by_pair):
                if multi:
                    # The kernel steers frames only to queues whose RX ring is served; queue 0 stays
                    # attached so the link always has one.
                    link.set_queue_attached(p, p == 0 or 0 in by_pair[p])
                self._pairs[p].start(mem, features, hdr_len, by_pair[p], link.queue(p), err_fd, busyloop_us)
                self._last.append(p)
                self._used.add(p)
            if multi:
                for p in range(1, len(link.queue_fds)):
                    if p not in by_pair:
                        link.set_queue_attached(p, False)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> dict[int, QueueState]:
        out: dict[int, QueueState] = {}
        if not self._running:
            return out
        first = None
        for p in self._last:   # every pair stops, whatever one of them raises
            try:
                for local, st in self._pairs[p].stop().items():
                    out[2 * p + local] = st
            except Exception as e:
                first = first or e
        self._running = False
        if first is not None:
            raise first
        return out

    def faults(self) -> dict[int, int]:
        # Every pair that ran: a pair that faulted and was then turned off (VQ_PAIRS_SET) still faulted.
        return {2 * p + local: code for p in sorted(self._used) for local, code in self._pairs[p].faults().items()}

    def link_down(self) -> int:
        bits = 0
        for p in self._last:
            bits |= self._pairs[p].link_down()
        return bits

    def threads(self) -> list[int]:
        return [t for p in self._last for t in self._pairs[p].threads()]

    def pair_threads(self) -> dict[int, list[int]]:
        """The threads of each running pair (its datapath thread first), for per-pair CPU figures."""
        return {p: self._pairs[p].threads() for p in self._last}

    def stalled_for(self) -> float | None:
        ages = [a for p in self._last if (a := self._pairs[p].stalled_for()) is not None]
        return max(ages) if ages else None

    def pair_stats(self) -> list[dict]:
        """Each pair's counters (frames, bytes, kicks, interrupts), the pairs never started at 0. What a
        datapath reads off the link (its ``link_wide``: vhost's tx_bytes) is the link's in every pair."""
        keep = ("tx_frames", "tx_bytes", "rx_frames", "rx_bytes", "tx_kicks", "rx_kicks",
                "tx_interrupts", "rx_interrupts", "syscalls", "wakeups")
        out = []
        for p, dp in enumerate(self._pairs):
            st = dp.stats() if p in self._used else DatapathStats()
            out.append({k: getattr(st, k) for k in keep})
        return out

    def stats(self) -> DatapathStats:
        used = sorted(self._used) or [0]
        parts = [self._pairs[p].stats() for p in used]
        total = DatapathStats()
        # Counters a datapath reads off the link rather than its pair's rings are the link's: one value.
        link_wide = set(getattr(self._pairs[0], "link_wide", ()))
        for st in parts:
            for k in COUNTERS:
                if k == "link_down":
                    continue
                if k in link_wide:
                    setattr(total, k, max(getattr(total, k), getattr(st, k)))
                else:
                    setattr(total, k, getattr(total, k) + getattr(st, k))
            for name, n in st.drops.items():
                total.drops[name] = total.drops.get(name, 0) + n
            for name, n in st.faults.items():
                total.faults[name] = total.faults.get(name, 0) + n
            total.link_down |= st.link_down
        total.not_counted = parts[0].not_counted
        return total

    def close(self) -> None:
        self._running = False
        first = None
        for dp in self._pairs:
            try:
                dp.close()
            except Exception as e:   # close every pair's; report the first failure
                first = first or e
        if first is not None:
            raise first

    def __getattr__(self, name: str):
        # What a kind of datapath has beyond the contract (vhost's kernel_features, fd), as pair 0 has it.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._pairs[0], name)


__all__ = ["PairedDatapath", "pair_of"]
