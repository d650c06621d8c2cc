"""Where the bench's threads run: with a placement, the device side (user datapath thread, vhost
worker, or the raw loop standing in for them) on one CPU and the guest and the peer on another, so
that run-to-run differences are not the scheduler's choice of who shares a CPU with whom."""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

from ...errors import ConfigError

ROLES = ("device", "guest", "peer")


def default_placement() -> dict[str, int] | None:
    """Device on the last CPU this process may use, guest and peer on the first; None with one CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return {"device": cpus[-1], "guest": cpus[0], "peer": cpus[0]}


# Where "auto" pins, as measured on a 2-vCPU host (100000 frames x 5 runs, user path; docs/datapaths.md):
# TX 64 B user/raw 0.94 with cv 2 % pinned, 0.77 with cv 13 % unpinned. RX pinned puts the guest on
# the CPU of the flooding peer sender: user/raw 0.76 pinned against 0.87 unpinned, so RX is left free.
AUTO_SCENARIOS = ("tx",)


def parse_pin(text: str, scenarios) -> tuple[dict[str, int] | None, tuple[str, ...]]:
    """``--pin``: "auto" (default_placement for AUTO_SCENARIOS), "on" (for every scenario), "off",
    or "device=1,guest=0,peer=0" (every scenario). Returns (placement, the scenarios it applies to)."""
    t = text.strip().lower()
    if t in ("off", "no", "0", "none"):
        return None, ()
    if t == "auto":
        place = default_placement()
        return place, tuple(sc for sc in scenarios if sc in AUTO_SCENARIOS) if place else ()
    if t in ("on", "yes", "1"):
        place = default_placement()
        return place, tuple(scenarios) if place else ()
    allowed = os.sched_getaffinity(0)
    out = {}
    for part in t.split(","):
        role, _, cpu = part.partition("=")
        if role.strip() not in ROLES or not cpu.strip().isdigit():
            raise ConfigError(f"--pin {text!r}: auto, off, or role=cpu pairs of {', '.join(ROLES)}")
        if int(cpu) not in allowed:
            raise ConfigError(f"--pin {text!r}: cpu {cpu} is not one this process may use ({sorted(allowed)})")
        out[role.strip()] = int(cpu)
    return out, tuple(scenarios)


def pin_tids(tids, cpu: int | None) -> list[str]:
    """Pin threads (of any process, kernel workers included) to ``cpu``; returns what could not be pinned."""
    failed = []
    if cpu is None:
        return failed
    for t in tids:
        try:
            os.sched_setaffinity(t, {cpu})
        except OSError as e:   # a kernel thread bound by its creator refuses (EINVAL)
            failed.append(f"tid {t}: {e.strerror}")
    return failed


@contextmanager
def pinned(cpu: int | None) -> Iterator[None]:
    """The calling thread on ``cpu`` for the block, its old affinity back after."""
    if cpu is None:
        yield
        return
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)
