"""``vnetbe costs``: what exits and mode switches cost on this machine, and what they explain.

A packet through a virtio-net backend pays for crossings more than for work. This module measures
each kind of crossing here (csrc/tools/vnb_costs.c) and builds a per-packet cost from the counts that
``vnetbe bench`` records:

- a **system call** (user -> kernel -> user): ``syscall(SYS_getppid)``, a call that does nothing;
- an **eventfd wake-up**: one thread writes an eventfd, another sleeping on it wakes. Through poll()
  it is how the guest waits for an interrupt; through epoll_wait() how the datapath thread waits for
  a kick. Reported as a round trip (p50, p99), one way (p50 / 2), and the CPU both threads burn per
  wake-up, which is what a per-packet CPU figure pays;
- a **context switch** between two threads pinned to one CPU (pipe ping-pong: each switch also
  carries the write and the read that cause it);
- a **VM exit**: CPUID traps to the hypervisor in a guest (not on bare metal: ``vm_exit: false``);
- **memcpy** of 64 B, 1500 B and 64 KiB in cache;
- building and checking a **sequence-tagged frame** of 64, 1500 and 9014 B (the bench's own per-frame
  byte work, which the model prices as "peer payload");
- optionally, **writev** of a 64-byte frame to a device the caller names (a macvtap's /dev/tapN).

Every figure is the median of several runs (7, or 5 with --quick), with min and max, of the CPU time
per operation (the threads' own CPU clock: another task taking the CPU meanwhile does not count, which
keeps the numbers usable on a busy machine, and it is what the benchmark's cpu_ns measures too);
``wall_ns`` beside it is elapsed time. Wake-ups are also given as latency (round trip p50 and p99).

The model (``predict``) for one packet:

    frame syscall  x syscall       userspace path: one writev/readv per frame, the frame crosses the
                                   user/kernel boundary on its way in and back out
    other syscalls x syscall       epoll_wait, eventfd reads and writes (kicks, interrupts), guest poll
    wake-ups       x wake-up       a sleeping thread woken (datapath thread, or the vhost worker), CPU
                                   beyond the three syscalls already counted above
    interrupts     x signal        eventfd signal that wakes the guest sleeping in poll, likewise
    copies         x memcpy(size)  two: the kernel copies the frame between guest memory and an skb
                                   (inside writev/readv or vhost), and between the peer's buffer and an skb
    peer payload   x 1             the bench's own byte work: each tagged frame built fresh (tx: by the
                                   guest or raw writer; rx: by the peer), and for tx checked at the peer
                                   (the tag loops below, interpolated to the size)
    frame stack    x 1             the kernel's work on the frame (tap, macvlan, veth, the peer's side),
                                   the same on every path and taken as size-independent: calibrated on
                                   the raw loop of the same scenario at *another* size (its CPU per frame
                                   less its other terms), so every prediction is out of sample

beside the CPU ns per packet that the benchmark measured. Wake-ups and interrupts are counted as the
sleeps that happened (voluntary context switches of the device's and the guest's threads) where the
bench recorded them: a signal to a thread still awake costs no wake-up. What the model still leaves
out (the ring logic, cache misses between the guest's CPU and the device's) is the gap between the two. A VMM adds exits on top: each kick
is a guest write to an ioeventfd that traps (~ one CPUID exit) and each interrupt an injection (estimated
as one more exit): ``vmm_extra_ns``.

    vnetbe costs [--quick] [--json]
    vnetbe costs --from-bench bench.json [--costs costs.json]
    python3 -m vnetbe.tools.costs ...          # the same without the main CLI
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

from ..errors import ConfigError
from ._native import check, ffi, lib
from .cliutil import load_json, standalone, subcommand
from .results import nearest_rank

__all__ = ["SCHEMA", "DATAPATHS", "measure", "cpu_info", "writev_cost", "memcpy_ns", "predict", "predict_bench",
           "out_of_sample_errors",
           "format_costs", "format_prediction", "add_parser", "main"]

SCHEMA = "vnetbe-costs/1"
DATAPATHS = ("user", "uring", "uring-sqpoll", "vhost", "raw")
MEMCPY_SIZES = (64, 1500, 65536)
TAG_SIZES = (64, 1500, 9014)   # the bench's tagged frames: 26 .. 9014 bytes
WAKE_SYSCALLS = 3   # per one-way wake-up: the waker's write, the waiter's poll/epoll_wait and its read

# Iterations per repeat: (full, quick).
_ITERS = {
    "syscall": (200_000, 20_000),
    "eventfd_signal": (200_000, 20_000),
    "wakeup": (20_000, 1_000),         # round trips
    "context_switch": (20_000, 2_000),  # round trips (two switches each)
    "cpuid": (20_000, 2_000),
    "memcpy_bytes": (256 << 20, 16 << 20),
}


def _native():
    return ffi, lib, check


# ---------------------------------------------------------------- measuring

def _stat(xs: list[float]) -> dict:
    return {"median": round(statistics.median(xs), 1), "min": round(min(xs), 1), "max": round(max(xs), 1)}


def cpu_info() -> dict:
    """CPU vendor, model and hypervisor (CPUID leaf 1 ECX bit 31, vendor at leaf 0x40000000)."""
    ffi, lib, check = _native()
    c = ffi.new("struct vnb_cost_cpu *")
    check(lib.vnb_cost_cpu_info(c), "vnb_cost_cpu_info")
    model = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    vendor = ffi.string(c.hv_vendor).decode("ascii", "replace").strip("\0 ") if c.hypervisor else ""
    return {"has_cpuid": bool(c.has_cpuid), "cpu_vendor": ffi.string(c.cpu_vendor).decode("ascii", "replace") or None,
            "cpu_model": model, "hypervisor": bool(c.hypervisor), "hypervisor_vendor": vendor or None}


def _host(info: dict) -> dict:
    return {"hostname": platform.node(), "kernel": platform.release(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "cpu_vendor": info["cpu_vendor"], "cpu_model": info["cpu_model"],
            "hypervisor": info["hypervisor"], "hypervisor_vendor": info["hypervisor_vendor"],
            "python": platform.python_version()}


def _run(fn, call: str, *args) -> tuple[float, float]:
    """(CPU ns, wall ns) per operation of one single-thread loop."""
    ffi, lib, check = _native()
    st = ffi.new("struct vnb_cost_run *")
    check(fn(*args, st), call)
    n = max(st.ops, 1)
    return st.cpu_ns / n, st.wall_ns / n


def _wakeup_once(mode: int, iters: int) -> dict:
    ffi, lib, check = _native()
    rtt = ffi.new("int64_t[]", iters)
    st = ffi.new("struct vnb_cost_pingpong *")
    name = "epoll" if mode == lib.VNB_COST_WAIT_EPOLL else "poll"
    check(lib.vnb_cost_wakeup(mode, iters, max(iters // 20, 50), 2000, rtt, st), f"eventfd wake-up ({name})")
    xs = sorted(rtt[i] for i in range(st.round_trips))
    p50 = nearest_rank(xs, 50)
    return {"rtt_p50_ns": p50, "rtt_p99_ns": nearest_rank(xs, 99), "one_way_ns": p50 / 2,
            "cpu_ns": (st.cpu_ns_a + st.cpu_ns_b) / (2 * st.round_trips)}


def _ctxsw_once(iters: int) -> tuple[float, float]:
    """(CPU ns, wall ns) per context switch: both threads' CPU, so another task that takes the shared
    CPU for a while does not count (the wall figure includes it)."""
    ffi, lib, check = _native()
    st = ffi.new("struct vnb_cost_pingpong *")
    check(lib.vnb_cost_ctxsw(-1, iters, st), "context switch ping-pong")
    n = 2 * max(st.round_trips, 1)
    return (st.cpu_ns_a + st.cpu_ns_b) / n, st.wall_ns / n


def memcpy_ns(size: int, table: dict) -> float:
    """ns for one copy of ``size`` bytes, from measured ns per copy {size: ns} (keys int or str):
    linear between measured sizes, the smallest one's cost below it, the largest's ns/byte above."""
    pts = sorted((int(k), float(v)) for k, v in table.items())
    if not pts:
        raise ConfigError("no memcpy costs to interpolate from")
    if size <= pts[0][0]:
        return pts[0][1]
    for (s0, t0), (s1, t1) in zip(pts, pts[1:]):
        if size <= s1:
            return t0 + (t1 - t0) * (size - s0) / (s1 - s0)
    s, t = pts[-1]
    return t * size / s


def _units(res: dict) -> dict:
    """The unit costs predict() multiplies, from the medians (a noisy machine's typical cost)."""
    sc = res["syscall"]["ns"]["median"]

    def beyond(w: dict) -> float:
        return round(max(w["cpu_ns"]["median"] - WAKE_SYSCALLS * sc, 0.0), 1)

    vm = res["vm_exit"]
    return {
        "syscall_ns": sc,
        "wakeup_ns": beyond(res["wakeup_epoll"]),
        "interrupt_ns": beyond(res["wakeup_poll"]),
        "vm_exit_ns": vm["ns"]["median"] if vm["vm_exit"] and vm["ns"] else None,
        "memcpy_ns": {k: v["ns"]["median"] for k, v in res["memcpy"].items()},
        "tag_fill_ns": {k: v["fill_ns"]["median"] for k, v in res["tag"].items()},
        "tag_check_ns": {k: v["check_ns"]["median"] for k, v in res["tag"].items()},
    }


def measure(quick: bool = False, repeats: int | None = None) -> dict:
    """Run every micro-benchmark ``repeats`` times (default 5 quick, 7 full), interleaved so that a
    burst of noise from other work hits all of them alike; report median, min and max of each.
    Returns a JSON-ready dict (schema ``vnetbe-costs/1``): host, options, results, units."""
    ffi, lib, check = _native()
    q = 1 if quick else 0
    repeats = repeats or (5 if quick else 7)
    if repeats < 1:
        raise ConfigError(f"repeats must be >= 1, not {repeats}")
    it = {k: v[q] for k, v in _ITERS.items()}
    info = cpu_info()
    raw: dict[str, list] = {k: [] for k in ("syscall", "eventfd_signal", "ctx", "cpuid", "poll", "epoll")}
    t_start = time.monotonic()
    for _ in range(repeats):
        raw["syscall"].append(_run(lib.vnb_cost_syscall, "syscall(getppid) loop", it["syscall"]))
        raw["eventfd_signal"].append(_run(lib.vnb_cost_eventfd_signal, "eventfd write loop", it["eventfd_signal"]))
        raw["poll"].append(_wakeup_once(lib.VNB_COST_WAIT_POLL, it["wakeup"]))
        raw["epoll"].append(_wakeup_once(lib.VNB_COST_WAIT_EPOLL, it["wakeup"]))
        raw["ctx"].append(_ctxsw_once(it["context_switch"]))
        if info["has_cpuid"]:
            raw["cpuid"].append(_run(lib.vnb_cost_cpuid, "cpuid loop", 0, it["cpuid"]))
        for s in MEMCPY_SIZES:
            raw.setdefault(f"memcpy{s}", []).append(
                _run(lib.vnb_cost_memcpy, f"memcpy {s} B", s, max(it["memcpy_bytes"] // s, 1000)))
        for s in TAG_SIZES:
            for check in (0, 1):
                raw.setdefault(f"tag{check}_{s}", []).append(
                    _run(lib.vnb_cost_tag, f"tagged frame {'check' if check else 'fill'} {s} B", s,
                         max(it["memcpy_bytes"] // 8 // s, 1000), check))

    def loop(xs: list[tuple[float, float]], **extra) -> dict:
        return {"ns": _stat([c for c, _ in xs]), "wall_ns": _stat([w for _, w in xs]), **extra}

    def wake(xs: list[dict]) -> dict:
        return {k: _stat([x[k] for x in xs]) for k in ("rtt_p50_ns", "rtt_p99_ns", "one_way_ns", "cpu_ns")} | {
            "round_trips": it["wakeup"]}

    def copy(s: int) -> dict:
        xs = raw[f"memcpy{s}"]
        return loop(xs) | {"ns_per_kib": _stat([c * 1024 / s for c, _ in xs])}

    results = {
        "syscall": loop(raw["syscall"], iterations=it["syscall"], call="syscall(SYS_getppid)"),
        "eventfd_signal": loop(raw["eventfd_signal"], iterations=it["eventfd_signal"]),
        "wakeup_poll": wake(raw["poll"]),
        "wakeup_epoll": wake(raw["epoll"]),
        "context_switch": loop(raw["ctx"], round_trips=it["context_switch"], pinned=True),
        "vm_exit": {"vm_exit": info["hypervisor"], "hypervisor_vendor": info["hypervisor_vendor"],
                    **(loop(raw["cpuid"]) if raw["cpuid"] else {"ns": None, "wall_ns": None}),
                    "leaf": 0, "iterations": it["cpuid"]},
        "memcpy": {str(s): copy(s) for s in MEMCPY_SIZES},
        "tag": {str(s): {"fill_ns": _stat([c for c, _ in raw[f"tag0_{s}"]]),
                         "check_ns": _stat([c for c, _ in raw[f"tag1_{s}"]])} for s in TAG_SIZES},
    }
    return {"schema": SCHEMA, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": _host(info),
            "options": {"quick": quick, "repeats": repeats, "seconds": round(time.monotonic() - t_start, 2)},
            "results": results, "units": _units(results)}


def writev_cost(fd: int, hdr_len: int = 10, frame_len: int = 64, iterations: int = 100_000) -> dict:
    """ns per writev() of one frame (after ``hdr_len`` zero bytes of vnet header) to ``fd``: use a
    macvtap/tap fd to see what one frame costs in the kernel beyond the bare mode switch. Writes real
    frames (ethertype 0x88B5, locally administered MACs) to whatever the fd is."""
    ffi, lib, check = _native()
    if not 0 <= hdr_len <= 64 or not 14 <= frame_len <= 65535 or iterations < 1:
        raise ConfigError("writev cost: hdr_len 0..64, frame_len 14..65535, iterations >= 1")
    st, again = ffi.new("struct vnb_cost_run *"), ffi.new("uint64_t *")
    check(lib.vnb_cost_writev(fd, hdr_len, frame_len, iterations, st, again), "writev loop",
          "is the fd writable, and does hdr_len match its vnet header size?")
    return {"ns": st.cpu_ns / iterations, "wall_ns": st.wall_ns / iterations, "iterations": iterations,
            "hdr_len": hdr_len, "frame_len": frame_len, "eagain": int(again[0])}


# ---------------------------------------------------------------- the model

# Frame copies per packet, by (datapath, scenario): one on the device's side and one on the peer's.
# TX through a device: the kernel copies the frame from guest memory into an skb (inside write for the
# user path, in the vhost worker for vhost), and the peer's recvmmsg copies it out again. RX: the
# peer's sendmmsg copies the frame into an skb, and the kernel copies the skb into the guest's buffer
# (readv / vhost); the benchmark's guest counts frames in place. Raw loops: the same two.
MODELLED_SCENARIOS = ("tx", "rx", "rxsat")
TARGET_ERROR = 0.30   # |predicted / measured - 1| the model aims at, out of sample
# uring RX reads into a bounce pool and copies from there into the guest's buffer: one copy more.
_COPIES = {("user", "tx"): 2, ("vhost", "tx"): 2, ("user", "rx"): 2, ("vhost", "rx"): 2,
           ("uring", "tx"): 2, ("uring-sqpoll", "tx"): 2, ("uring", "rx"): 3, ("uring-sqpoll", "rx"): 3,
           ("raw", "tx"): 2, ("raw", "rx"): 2}
_COPIES.update({(dp, "rxsat"): n for (dp, sc), n in list(_COPIES.items()) if sc == "rx"})

_WHY = {
    "frame syscall": "one writev (TX) / readv (RX) per frame: the frame goes user -> kernel -> user, "
                     "two crossings of the mode boundary, priced at the bare syscall round trip "
                     "(the network stack's work inside the call is not in the model)",
    "other syscalls": "every other counted system call: epoll_wait, eventfd reads of kicks, eventfd writes "
                      "of kicks and interrupts, the guest's poll and read of the call eventfd",
    "syscalls": "the guest's system calls only (kick writes, poll and read of the call eventfd): the vhost "
                "worker never leaves the kernel, so no frame pays a syscall",
    "uring syscalls": "every system call of the uring datapath's thread: an io_uring_enter carries a batch of "
                      "tap writes or reads (counted as one, however many frames it carries), plus epoll_wait "
                      "when the polled epoll set fired and eventfd reads of kicks and writes of interrupts; "
                      "the kernel's work on each frame inside the enter is the frame stack term",
    "wake-ups": "the device side (datapath thread, vhost worker, raw loop) going to sleep and being woken: "
                "CPU of both sides per eventfd wake-up, minus the 3 syscalls already counted (write, wait, "
                "read); counted as the sleeps that happened (a kick to a thread still awake costs no wake-up)",
    "interrupts": "an interrupt that wakes the guest sleeping in poll: CPU per poll wake-up, minus its 3 "
                  "syscalls; counted as the guest's sleeps where the bench recorded them",
    "frame stack": "the kernel's own work on one frame inside writev/readv or the vhost worker's sendmsg/recvmsg "
                   "(tap, macvlan, veth and the peer's side): the same on every path and taken as independent of "
                   "the frame size, so it is calibrated on the raw loop of the same scenario at another size (its "
                   "CPU per frame minus its syscalls and copy): out of sample",
    "copies": "frame copies: the kernel's, between guest memory and an skb, and the peer's, between its "
              "buffers and an skb; priced as an in-cache memcpy of the frame size (interpolated)",
    "peer payload": "the bench's own work on each frame's bytes: every frame is built fresh as a sequence-tagged "
                    "frame (by the guest or raw writer for tx, the peer's sender for rx) and, for tx, checked byte "
                    "for byte by the peer's receiver; priced by `vnetbe costs` (tag fill and check, interpolated)",
    "kick exits": "in a VM each kick is a guest write to an ioeventfd that traps: one VM exit (~ CPUID)",
    "interrupt injections": "in a VM each interrupt is injected into the guest: estimated as one more VM exit",
}


def _row(term: str, count: float, unit: float) -> dict:
    return {"term": term, "count": count, "unit_ns": unit, "ns": count * unit, "why": _WHY[term]}


def predict(per_packet: dict, costs: dict, datapath: str, *, size: int = 64, scenario: str = "tx",
            copies: float | None = None, stack_ns: float | None = None, tso: bool = False) -> dict:
    """Predicted CPU ns per packet from the benchmark's per-packet counts (``RunResult.per_packet``:
    syscalls, kicks, interrupts, wakeups, cpu_ns) and measured unit costs (``measure()`` or its JSON),
    beside the measured ``cpu_ns``.  ``rows`` lists (term, count, unit_ns, ns); ``vmm`` what a VMM's
    exits would add.  ``copies`` overrides the model's frame copies per packet.  ``stack_ns`` is the
    kernel's work per frame (``predict_bench`` calibrates it on the raw loop): without it the model
    prices crossings only.  ``crossings_ns`` is the part of the prediction that is crossings."""
    if datapath not in DATAPATHS:
        raise ConfigError(f"unknown datapath {datapath!r}: choose from {', '.join(DATAPATHS)}")
    if scenario not in MODELLED_SCENARIOS:
        raise ConfigError(f"unknown scenario {scenario!r}: {', '.join(MODELLED_SCENARIOS)}")
    try:
        u = costs["units"]
        sc = float(u["syscall_ns"])
        wake = float(u["wakeup_ns"])
        irq = float(u["interrupt_ns"])
        exit_ns = u.get("vm_exit_ns")
        cp = memcpy_ns(int(size), u["memcpy_ns"])
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"costs lack the unit costs predict needs ({e!s}): use `vnetbe costs --json` output") from None

    def count(key: str) -> float:
        v = per_packet.get(key, 0) or 0
        try:
            return float(v)
        except (TypeError, ValueError):
            raise ConfigError(f"per_packet[{key!r}] is not a number: {v!r}") from None

    syscalls = count("syscalls")
    rows = []
    if datapath == "vhost":
        rows.append(_row("syscalls", syscalls, sc))
    elif datapath.startswith("uring"):
        rows.append(_row("uring syscalls", syscalls, sc))
    else:
        frame = 1.0
        rows.append(_row("frame syscall", frame, sc))
        rows.append(_row("other syscalls", max(syscalls - frame, 0.0), sc))
    # A signal costs a wake-up only if its thread had gone to sleep: price the sleeps the bench saw
    # (voluntary context switches) where it recorded them, else every signal.
    slept = "device_sleeps" in per_packet
    rows.append(_row("wake-ups", count("device_sleeps" if slept else "wakeups"), wake))
    rows.append(_row("interrupts", count("guest_sleeps" if slept else "interrupts"), irq))
    # A 64k TSO super-frame is copied once, from the guest (or the writer): the peer neither reads
    # nor checks it (it is counted from the veth's bytes), and it is TCP, not a tagged frame.
    n_copies = copies if copies is not None else 1.0 if tso else float(_COPIES[(datapath, scenario)])
    rows.append(_row("copies", n_copies, cp))
    if u.get("tag_fill_ns") and not tso:   # costs measured before the tag loops price no payload work
        tag = memcpy_ns(int(size), u["tag_fill_ns"])
        if scenario == "tx":
            tag += memcpy_ns(int(size), u["tag_check_ns"])
        rows.append(_row("peer payload", 1.0, tag))
    crossings = sum(r["ns"] for r in rows if r["term"] not in ("copies", "peer payload"))
    if stack_ns is not None:
        rows.append(_row("frame stack", 1.0, float(stack_ns)))
    predicted = sum(r["ns"] for r in rows)

    measured = per_packet.get("cpu_ns")
    measured = float(measured) if measured is not None else None
    if exit_ns is None:
        vmm_rows, vmm_extra = [], None
        vmm_note = "no VM exit measured (bare metal: CPUID does not exit), so no estimate"
    else:
        vmm_rows = [_row("kick exits", count("kicks"), float(exit_ns)),
                    _row("interrupt injections", count("interrupts"), float(exit_ns))]
        vmm_extra = sum(r["ns"] for r in vmm_rows)
        vmm_note = "each kick one VM exit, each interrupt one more (priced as a CPUID exit)"
    return {
        "datapath": datapath, "scenario": scenario, "size": int(size),
        "rows": rows,
        "predicted_ns": predicted,
        "crossings_ns": crossings,
        "model": "crossings + copies + frame stack" if stack_ns is not None else "crossings + copies",
        "measured_ns": measured,
        "ratio": (measured / predicted) if measured is not None and predicted > 0 else None,
        "unexplained_ns": (measured - predicted) if measured is not None else None,
        "vmm": {"rows": vmm_rows, "note": vmm_note},
        "vmm_extra_ns": vmm_extra,
    }


def predict_bench(doc: dict, costs: dict) -> list[dict]:
    """predict() for every tx and rx baseline and result of a ``vnetbe bench --json`` document (vm2vm
    and rr chain several paths and are left out), **out of sample**: the frame stack term of a
    prediction at (scenario, size) is calibrated on the raw loop of the same scenario at the nearest
    *other* size (its CPU per frame minus its crossings and its copy, which carries the size), so no
    prediction contains a measurement of the configuration it predicts; the raw loops themselves are
    predicted the same way. ``calibrated_on`` names the size used; where a scenario ran at one size
    only there is nothing to calibrate on outside it, and the prediction uses the same size's raw
    loop with ``in_sample: True`` (reported, never scored). ``error`` = predicted / measured - 1;
    every row carries its ``share`` of the prediction. ``baseline_ns`` is the raw loop's CPU ns per
    packet at the same size: measured_ns - baseline_ns is what the device adds to moving the frame."""
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
        raise ConfigError("not a `vnetbe bench --json` document: expected an object with a 'results' list")
    rows = []
    for r in list(doc.get("baseline") or []) + list(doc["results"]):
        try:
            dp, scen, size, pp = r["datapath"], r["scenario"], int(r["size"]), r["per_packet"]
        except (KeyError, TypeError, ValueError):
            raise ConfigError("a bench result lacks datapath, scenario, size or per_packet") from None
        if scen not in MODELLED_SCENARIOS:
            continue
        if not isinstance(pp, dict):
            raise ConfigError(f"per_packet of the {dp} {scen} {size} B result is not an object")
        rows.append((r, dp, scen, size, pp, bool((r.get("options") or {}).get("tso"))))
    stack: dict = {}   # (scenario, size) -> what the raw loop spends beyond its crossings and copy
    base: dict = {}
    base_pred: dict = {}   # (scenario, size) -> the raw loop's crossings + copy, predicted
    for r, dp, scen, size, pp, tso in rows:
        if dp == "raw":
            p = predict(pp, costs, dp, size=size, scenario=scen, tso=tso)
            base[(scen, size)] = p["measured_ns"]
            base_pred[(scen, size)] = p["predicted_ns"]
            if p["measured_ns"] is not None:
                stack[(scen, size)] = max(p["measured_ns"] - p["predicted_ns"], 0.0)
    out = []
    for r, dp, scen, size, pp, tso in rows:
        others = sorted((abs(z - size), z) for (sc, z) in stack if sc == scen and z != size)
        if others:
            cal, in_sample = others[0][1], False
        elif (scen, size) in stack:
            cal, in_sample = size, True
        else:
            cal, in_sample = None, True
        p = predict(pp, costs, dp, size=size, scenario=scen, stack_ns=stack.get((scen, cal)), tso=tso)
        p["calibrated_on"] = None if cal is None else {"scenario": scen, "size": cal}
        p["in_sample"] = in_sample
        p["error"] = (p["predicted_ns"] / p["measured_ns"] - 1) if p["measured_ns"] else None
        for row in p["rows"]:
            row["share"] = row["ns"] / p["predicted_ns"] if p["predicted_ns"] else 0.0
        p["baseline_ns"] = base.get((scen, size)) if dp != "raw" else None
        # The stricter test: what the device adds to the raw loop, where the frame stack term cancels
        # and only the crossings and copies the model counts are left to explain the difference.
        if p["baseline_ns"] is not None and p["measured_ns"] is not None:
            stack_here = stack.get((scen, cal), 0.0) if cal is not None else 0.0
            p["added_measured_ns"] = p["measured_ns"] - p["baseline_ns"]
            p["added_predicted_ns"] = p["predicted_ns"] - stack_here - base_pred[(scen, size)]
        p["pps"] = r.get("pps")
        p["options"] = r.get("options") or {}
        out.append(p)
    return out


def out_of_sample_errors(preds: list[dict]) -> dict:
    """{"n", "worst", "median_abs"} of the out-of-sample errors, and the ones beyond ±30 %."""
    errs = [p for p in preds if not p["in_sample"] and p["error"] is not None]
    if not errs:
        return {"n": 0, "worst": None, "median_abs": None, "beyond": []}
    worst = max(errs, key=lambda p: abs(p["error"]))
    return {"n": len(errs), "worst": worst["error"], "median_abs": statistics.median(abs(p["error"]) for p in errs),
            "beyond": [f"{p['datapath']} {p['scenario']} {p['size']}" for p in errs if abs(p["error"]) > TARGET_ERROR]}


# ---------------------------------------------------------------- formatting

def _ns(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 1e6:
        return f"{v / 1e6:.2f} ms"
    if abs(v) >= 1e4:
        return f"{v / 1e3:.1f} µs"
    if abs(v) >= 100:
        return f"{v:.0f} ns"
    return f"{v:.1f} ns"


def _st(s: dict | None) -> tuple[str, str]:
    if not s:
        return "-", ""
    return _ns(s["median"]), f"[{_ns(s['min'])} .. {_ns(s['max'])}]"


def format_costs(costs: dict) -> str:
    """A terminal table of ``measure()``'s result, with the lesson in a few ratios at the end."""
    h, o, r, u = costs["host"], costs["options"], costs["results"], costs["units"]
    hv = h.get("hypervisor_vendor") or ("yes" if h.get("hypervisor") else "none (bare metal)")
    lines = [f"vnetbe costs on {h.get('hostname')} (kernel {h.get('kernel')}, {h.get('cpus')} cpus, "
             f"{h.get('cpu_model') or h.get('cpu_vendor') or '?'}; hypervisor: {hv})",
             f"median [min .. max] of {o['repeats']} runs{' (quick)' if o.get('quick') else ''}",
             f"{'':48}{'median':>10}  {'[min .. max]':<26}"]

    def add(label: str, s: dict | None, extra: str = "") -> None:
        m, mm = _st(s)
        lines.append(f"{label:48}{m:>10}  {mm:<26}{extra}")

    add("system call round trip (getppid)", r["syscall"]["ns"])
    add("eventfd write, nobody waiting", r["eventfd_signal"]["ns"])
    for key, name in (("wakeup_poll", "poll (guest waits for an interrupt)"),
                      ("wakeup_epoll", "epoll (datapath waits for a kick)")):
        w = r[key]
        lines.append(f"eventfd wake-up through {name}, {w['round_trips']} round trips:")
        add("  one way (round trip p50 / 2)", w["one_way_ns"])
        add("  round trip p50", w["rtt_p50_ns"])
        add("  round trip p99", w["rtt_p99_ns"])
        add("  CPU per wake-up (both threads)", w["cpu_ns"])
    add("context switch (pipe ping-pong on one CPU)", r["context_switch"]["ns"], "with its write + read")
    vm = r["vm_exit"]
    if vm["ns"] is None:
        lines.append(f"{'VM exit (CPUID)':48}{'-':>10}  no CPUID on this architecture")
    elif vm["vm_exit"]:
        add("VM exit (CPUID leaf 0)", vm["ns"], f"exits to {vm['hypervisor_vendor'] or 'a hypervisor'}")
    else:
        add("CPUID leaf 0 (bare metal: not an exit)", vm["ns"], "vm_exit: false")
    for s, c in r["memcpy"].items():
        n = int(s)
        label = f"memcpy {n >> 10} KiB" if n >= 1024 and n % 1024 == 0 else f"memcpy {n} B"
        m, mm = _st(c["ns_per_kib"])
        lines.append(f"{label + ' (in cache), per KiB':48}{m:>10}  {mm:<26}{_ns(c['ns']['median'])} per copy")
    for s, t in (r.get("tag") or {}).items():
        m, mm = _st(t["fill_ns"])
        lines.append(f"{'tagged frame of ' + s + ' B: build':48}{m:>10}  {mm:<26}")
        m, mm = _st(t["check_ns"])
        lines.append(f"{'tagged frame of ' + s + ' B: check every byte':48}{m:>10}  {mm:<26}")
    if "writev" in r:
        w = r["writev"]
        lines.append(f"{'writev of a ' + str(w['frame_len']) + '-byte frame to ' + w.get('path', 'the fd'):48}"
                     f"{_ns(w['ns']):>10}  {'':26}{w['eagain']} EAGAIN")
    sc = u["syscall_ns"] or 1.0
    lines.append("")
    lines.append(f"model units: syscall {_ns(u['syscall_ns'])}, wake-up {_ns(u['wakeup_ns'])} and interrupt "
                 f"{_ns(u['interrupt_ns'])} (CPU beyond their {WAKE_SYSCALLS} syscalls), VM exit {_ns(u['vm_exit_ns'])}")
    rel = [f"a wake-up {r['wakeup_epoll']['cpu_ns']['median'] / sc:.0f}",
           f"a context switch {r['context_switch']['ns']['median'] / sc:.0f}"]
    if u.get("vm_exit_ns"):
        rel.append(f"a VM exit {u['vm_exit_ns'] / sc:.0f}")
    rel.append(f"a 1500-byte copy {memcpy_ns(1500, u['memcpy_ns']) / sc:.2f}")
    lines.append("in system calls: " + ", ".join(rel))
    return "\n".join(lines)


def format_prediction(pred: dict, explain: bool = False) -> str:
    """One result's predicted vs measured per-packet cost and its breakdown."""
    head = f"{pred['datapath']} {pred['scenario']} {pred['size']} B"
    cal = pred.get("calibrated_on")
    if cal and not pred.get("in_sample"):
        head += f" (frame stack from the raw loop at {cal['size']} B: out of sample)"
    elif cal:
        head += " (frame stack from the raw loop at this very size: in sample, not scored)"
    err = f"{pred['error']:+.0%}" if pred.get("error") is not None else "-"
    lines = [f"{head}: predicted {_ns(pred['predicted_ns'])}/pkt, measured {_ns(pred['measured_ns'])}/pkt "
             f"(error {err}, unexplained {_ns(pred['unexplained_ns'])})",
             f"  {'term':22}{'count/pkt':>11}{'unit':>11}{'ns/pkt':>11}{'share':>7}"]

    def row(r: dict) -> None:
        share = f"{r['share']:.0%}" if "share" in r else ""
        lines.append(f"  {r['term']:22}{r['count']:11.4f}{_ns(r['unit_ns']):>11}{_ns(r['ns']):>11}{share:>7}")
        if explain:
            lines.append(f"      {r['why']}")

    for r in pred["rows"]:
        row(r)
    lines.append(f"  {'= predicted':22}{'':22}{_ns(pred['predicted_ns']):>11}")
    if pred.get("baseline_ns") is not None and pred["measured_ns"] is not None:
        lines.append(f"  raw loop, same frames: {_ns(pred['baseline_ns'])}/pkt measured; the device adds "
                     f"{_ns(pred['measured_ns'] - pred['baseline_ns'])}/pkt, of which the model's crossings "
                     f"and copies predict {_ns(pred.get('added_predicted_ns'))}")
    if pred["vmm_extra_ns"] is None:
        lines.append(f"  a VMM would add: {pred['vmm']['note']}")
    elif not any(r["count"] for r in pred["vmm"]["rows"]):
        lines.append("  a VMM would add nothing: no kicks, no interrupts")
    else:
        lines.append(f"  a VMM would add {_ns(pred['vmm_extra_ns'])}/pkt:")
        for r in pred["vmm"]["rows"]:
            row(r)
    return "\n".join(lines)


def _legend(preds: list[dict]) -> str:
    seen: dict[str, str] = {}
    for p in preds:
        for r in p["rows"] + p["vmm"]["rows"]:
            seen.setdefault(r["term"], r["why"])
    return "what the terms mean:\n" + "\n".join(f"  {t}: {w}" for t, w in seen.items())


# ---------------------------------------------------------------- CLI

def load(path: str) -> dict:
    """A saved `vnetbe costs --json` document; anything else is a one-line ConfigError."""

    doc = load_json(path, "`vnetbe costs --json` output")
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ConfigError(f"{path} is not `vnetbe costs --json` output (schema {SCHEMA})")
    return doc


def _add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    p.add_argument("--quick", action="store_true", help="fewer iterations (about a second)")
    p.add_argument("--repeat", type=int, default=None, help="runs of every micro-benchmark (default 7, quick 5)")
    p.add_argument("--from-bench", metavar="FILE", help="a `vnetbe bench --json` output: for each result, the "
                   "predicted per-packet cost beside the measured one, with the breakdown")
    p.add_argument("--costs", metavar="FILE", help="use these `vnetbe costs --json` costs instead of measuring "
                   "(measure where the bench ran: lab numbers are not this host's)")
    p.add_argument("--explain", action="store_true", help="with --from-bench: explain every term under its row")
    p.add_argument("--writev", metavar="DEV", help="also time writev() of a 64-byte frame to DEV (e.g. a macvtap's "
                   "/dev/tapN; this sends real frames out of it)")
    p.add_argument("--writev-hdr", type=int, default=10, help="vnet header bytes before each frame (default 10, "
                   "a freshly opened macvtap's)")
    p.set_defaults(func=main)
    return p


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``costs`` subcommand on the main CLI's subparsers."""

    return subcommand(subparsers, "costs", "measure syscalls, wake-ups, context switches, VM exits, copies; model bench results",
                      __doc__, _add_arguments)


def _writev_into(costs: dict, path: str, hdr_len: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise ConfigError(f"cannot open {path} for writev: {e.strerror}") from None
    try:
        w = writev_cost(fd, hdr_len=hdr_len, frame_len=64, iterations=20_000 if costs["options"]["quick"] else 200_000)
    finally:
        os.close(fd)
    w["path"] = path
    costs["results"]["writev"] = w


def main(args: argparse.Namespace) -> int:
    """Run the ``costs`` subcommand. Returns the exit status."""
    if args.costs:
        costs = load(args.costs)
    else:
        costs = measure(quick=args.quick, repeats=args.repeat)
    if args.writev:
        _writev_into(costs, args.writev, args.writev_hdr)
    if args.from_bench:

        doc = load_json(args.from_bench, "`vnetbe bench --json` output")
        preds = predict_bench(doc, costs)
        if args.json:
            json.dump({"costs": costs, "predictions": preds}, sys.stdout, indent=2)
            print()
        else:
            print(format_costs(costs))
            for p in preds:
                print()
                print(format_prediction(p, explain=args.explain))
            if preds and not args.explain:
                print()
                print(_legend(preds))
        return 0
    if args.json:
        json.dump(costs, sys.stdout, indent=2)
        print()
    else:
        print(format_costs(costs))
    return 0


def _standalone(argv: list[str] | None = None) -> int:

    return standalone(_add_arguments, "costs", __doc__, argv)


if __name__ == "__main__":
    sys.exit(_standalone())
