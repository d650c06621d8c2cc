"""The contract every datapath keeps, so VirtioNet can switch between them with the rings live."""
from __future__ import annotations

from typing import Protocol

from ..queue import QueueConfig, QueueState
from .stats import DatapathStats


class Datapath(Protocol):
    name: str
    supported_features: int   # the feature bits this datapath can serve (the device offers no more)
    ring_modes: bool          # whether it serves QueueConfig.polled and .discard rings

    def start(self, mem, features: int, hdr_len: int, queues: dict[int, QueueConfig], link, err_fd: int,
              busyloop_us: int = 0) -> None:
        """Begin servicing the queues from the ring positions in each QueueConfig, moving frames through
        ``link.fd``; signal ``err_fd`` when a guest fault stops a queue or the link fails. With
        ``busyloop_us``, poll that long after the last work before sleeping."""

    def stop(self) -> dict[int, QueueState]:
        """Stop servicing; return where each ring stands so another datapath can resume it."""

    def stats(self) -> DatapathStats:
        """Counters since start (kept after stop), with the same keys on every datapath."""

    def faults(self) -> dict[int, int]:
        """Queue index -> fault code for queues a guest fault stopped."""

    def link_down(self) -> int:
        """Nonzero (the poll bits, POLLERR/POLLHUP) once the link's fd failed for good, for instance
        because its interface was deleted; the datapath has then stopped moving frames."""

    def threads(self) -> list[int]:
        """Thread ids doing the work (for CPU accounting)."""

    def stalled_for(self) -> float | None:
        """Seconds since the worker last showed it runs, when that is longer than it can be idle
        without showing it (STALL_S); None when it is fine, not running, or cannot be observed (the
        kernel's vhost worker)."""

    def close(self) -> None:
        """Stop if running and release what the datapath holds (threads, fds)."""
