"""CPU time of individual threads, in nanoseconds, from /proc/<pid>/task/<tid>/schedstat, and how
often they slept.

schedstat's first field is the time the thread spent on a CPU, at nanosecond resolution (utime and
stime in /proc/.../stat are in clock ticks, too coarse for a per-packet cost).
"""
from __future__ import annotations

import os
import threading


def thread_cpu_ns(tid: int, pid: int | None = None) -> int:
    pid = pid or os.getpid()
    try:
        with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            return int(f.read().split()[0])
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return 0


def voluntary_switches(tid: int, pid: int | None = None) -> int:
    """Times the thread went to sleep (voluntary_ctxt_switches): each one is a wake-up paid later.
    A wake-up signalled to a thread that had not gone to sleep yet costs nothing of the kind."""
    pid = pid or os.getpid()
    try:
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches"):
                    return int(line.split()[1])
    except (OSError, IndexError, ValueError):
        pass
    return 0


def current_tid() -> int:
    return threading.get_native_id()
