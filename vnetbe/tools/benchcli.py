"""``vnetbe bench``: userspace vs vhost datapath, side by side with the raw write/read loop baseline.

Scenarios: tx (guest -> peer), rx (peer -> guest), rxsat (rx with more peer senders than the path
carries: where notification suppression shows), vm2vm (two guests through a bridge-mode macvtap
pair), rr (request/response latency, p50 and p99). Every configuration runs ``--repeat`` times,
interleaved with the others of its scenario and size (so slow drift hits all alike); the table shows
the median with min..max, and the ``--json`` output follows the shape iperf3 -J made familiar
(start / results / baseline).

vhost needs /dev/vhost-net. On a host without it, ``vnetbe bench`` runs the whole bench (both
datapaths, the same scenarios) inside the kernel lab (``vnetbe lab``: a stock kernel under QEMU,
software-emulated) and prints the table from there; ``--no-lab`` refuses instead. Lab numbers compare
the paths with each other, never with the host's.
"""
from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import platform
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

from .. import DATAPATHS, VHOST_NET_PATH, spec
from ..device import MAX_BUSYLOOP_US
from ..errors import ConfigError, LabError, NotRoot, SetupError
from . import costs, lab, provision
from .bench.pinning import ROLES, parse_pin
from .noise import ALPHA, NOISE_MARK, cv, mark, min_separable_repeats
from .bench import BenchTopology, summarize
from .bench import guest_tcp as guest_tcp_bench
from .bench import migration as migration_bench
from .bench import testpmd as testpmd_bench
from .results import (
    RINGS,
    SCENARIOS,
    THROUGHPUT_SCENARIOS,
    TSO_LABEL,
    comparison_for,
    comparisons,
    has_baseline,
    log_of,
    pairs_of,
    label,
    loss_text,
    opts_text,
    ring_of,
    skipped_text,
    parse_size,
    rows_in_order,
    supported,
    varied_options,
)

HOST_COUNT = 200_000     # frames per run on a real kernel
LAB_COUNT = 100_000      # in the lab (software emulation is 10-20x slower)
HOST_RR = 5_000          # round trips per rr run
LAB_RR = 1_000
TSO_DIV = 20            # a 64k TSO super-frame is ~45 segments: runs of 64k move count / TSO_DIV of them
LAB_TIMEOUT_S = 3 * 3600
LAB_MAX_CV = 0.10        # --max-cv auto in the lab: its runs spread far more than a host's
WHERE_HOST = "host"
WHERE_LAB = "lab (software-emulated)"



def _env_int(name: str) -> int | None:
    """A default from the environment (the test command shortens runs this way), or None."""
    v = os.environ.get(name, "").strip()
    try:
        return int(v) if v else None
    except ValueError:
        raise SystemExit(f"vnetbe bench: {name}={v!r} is not a whole number") from None

def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("bench", help="measure the datapaths (tx, rx, rxsat, vm2vm, rr) against the raw baseline",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bench_arguments(p)
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout instead of the table")
    p.add_argument("--output", metavar="FILE", help="also write the JSON document to FILE")
    p.add_argument("--plot", metavar="DIR", help="write PNG charts to DIR (needs: pip install 'vnetbe[plot]')")
    p.add_argument("--frontend", choices=("guest", "testpmd", "qemu", "migration"), default="guest",
                   help="who drives the device: vnetbe's own guest driver (default); DPDK's testpmd over "
                        "vhost-user through vnetbe serve, DPDK's own vhost back end and, with /dev/vhost-net, "
                        "the kernel directly (--seconds per run, --repeat runs); or a Linux guest under QEMU "
                        "moving TCP through vnetbe serve and through QEMU's own tap back end (--repeat rounds); or "
                        "that guest live-migrated between two vnetbe serve, and between two of DPDK's vhost back "
                        "ends, with a TCP stream each way (--repeat migrations each)")
    p.add_argument("--seconds", type=float, default=5.0, help="with --frontend testpmd: seconds per run (default 5)")
    p.add_argument("--queues", default="1", help="queue pairs, a comma list compares them, e.g. 1,2 (default 1). "
                   "vnetbe's guest: a device of N pairs, the macvtap with N queues, each pair's guest flooding its "
                   "share from a thread of its own (tx only: the peer's frames are one flow, which macvtap steers to "
                   "one queue). --frontend testpmd: testpmd queues=N --rxq=N --txq=N, vnetbe serve --queues N, "
                   "DPDK's back end queues=N")
    p.set_defaults(func=run)
    return p


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    """The options that choose what runs (shared with ``vnetbe report``)."""
    p.add_argument("--datapath", default="user,uring,vhost",
                   help="comma list of user,uring,uring-sqpoll,vhost (default user,uring,vhost; on a host without "
                        "/dev/vhost-net the bench runs inside the kernel lab)")
    p.add_argument("--scenario", default="tx,rx,rxsat,rr",
                   help="comma list of tx,rx,rxsat,vm2vm,rr (default tx,rx,rxsat,rr: what the targets speak of)")
    p.add_argument("--sizes", default="64,1500",
                   help="frame sizes, comma list of bytes (26..9014) and 64k (TSO super-frames; tx and vm2vm "
                        "only) (default 64,1500)")
    p.add_argument("--count", type=int, default=_env_int("VNETBE_BENCH_COUNT"),
                   help=f"frames per run (default {HOST_COUNT}; {LAB_COUNT} in the lab; VNETBE_BENCH_COUNT when "
                        f"set); 64k runs move count/{TSO_DIV} super-frames")
    p.add_argument("--rr-count", type=int, default=None,
                   help=f"round trips per rr run (default {HOST_RR}, {LAB_RR} in the lab, at most --count)")
    p.add_argument("--repeat", type=int, default=_env_int("VNETBE_BENCH_REPEAT") or 5,
                   help="runs per configuration; the median is reported (default 5; VNETBE_BENCH_REPEAT when set)")
    p.add_argument("--queue-size", default="256", help="virtqueue size, or a comma list to compare (default 256)")
    p.add_argument("--ring", default="split",
                   help="virtqueue format: split, packed, or split,packed to compare in the same run (default split;"
                        " vhost has no packed rings and runs split only)")
    p.add_argument("--dirty-log", default="off",
                   help="the device logs every guest page it writes in a dirty log, as during a live migration's "
                        "pre-copy: off, on, or off,on to compare (a `vs log off` column) (default off)")
    p.add_argument("--event-idx", default="on", help="VIRTIO_RING_F_EVENT_IDX: on, off, or on,off for both (default on)")
    p.add_argument("--no-event-idx", action="store_true", help=argparse.SUPPRESS)   # old spelling of --event-idx off
    p.add_argument("--busyloop-us", default="0",
                   help="busy polling in µs, or a comma list (default 0): vhost VHOST_SET_VRING_BUSYLOOP_TIMEOUT; "
                        "user: the datapath thread polls that long before it sleeps")
    p.add_argument("--pin", default="auto",
                   help="thread placement: the datapath thread or vhost worker (and the raw loops) on the last CPU, "
                        "the guest and the peer on the first. auto: tx only, where it was measured to help (with "
                        "2+ CPUs); on: every scenario; off; or e.g. device=1,guest=0,peer=0 (every scenario). "
                        "Recorded in the JSON (default auto)")
    p.add_argument("--max-cv", default=os.environ.get("VNETBE_BENCH_MAX_CV") or "auto",
                   help="spread bound in percent (coefficient of variation of pps over the runs): a configuration "
                        "above it gets more runs, up to --max-repeat; the table names those still above "
                        "(default auto: 10 in the kernel lab, off on a host; VNETBE_BENCH_MAX_CV when set)")
    p.add_argument("--max-repeat", type=int, default=None,
                   help="most runs per configuration while the spread is above --max-cv (default 2 x --repeat)")
    p.add_argument("--no-baseline", action="store_true", help="skip the raw loops")
    p.add_argument("--with-costs", action="store_true",
                   help="also measure `vnetbe costs --quick` where the bench runs and embed it as \"costs\"")
    p.add_argument("--no-lab", action="store_true",
                   help="never boot the kernel lab: fail if vhost is asked for and /dev/vhost-net is missing")
    p.add_argument("--tag", default="B", help="name tag of the throwaway topology (interfaces vnb<tag>*)")
    p.add_argument("--progress", choices=("auto", "always", "never"), default="auto", help=argparse.SUPPRESS)


# ----------------------------------------------------------------------------------------- the plan

def _list(s: str) -> list[str]:
    return [x.strip() for x in str(s).split(",") if x.strip()]


def _ints(s: str, what: str, lo: int) -> list[int]:
    try:
        out = [int(x) for x in _list(s)]
    except ValueError:
        raise ConfigError(f"{what} {s!r}: give a number or a comma list of numbers") from None
    if not out or any(v < lo for v in out):
        raise ConfigError(f"{what} {s!r}: every value must be >= {lo}")
    return list(dict.fromkeys(out))


def in_lab() -> bool:
    return lab.in_lab()


@dataclass
class Plan:
    datapaths: list[str]
    scenarios: list[str]
    sizes: list            # ints and/or "64k"
    count: int
    rr_count: int
    repeat: int
    queue_sizes: list[int]
    event_idx: list[bool]
    busyloop_us: list[int]
    baseline: bool
    tag: str
    skipped: list = field(default_factory=list)
    pin: dict | None = None
    pin_scenarios: tuple = ()
    pin_text: str = "auto"
    max_cv: float | None = None      # a fraction, not percent
    max_repeat: int = 0
    rings: list[str] = field(default_factory=lambda: ["split"])
    queues: list[int] = field(default_factory=lambda: [1])
    dirty_logs: list[bool] = field(default_factory=lambda: [False])

    @property
    def tso_count(self) -> int:
        return max(self.count // TSO_DIV, 1)

    def frames(self, scenario: str, size) -> int:
        """Frames (rr: round trips; 64k: super-frames) per run."""
        return self.rr_count if scenario == "rr" else self.tso_count if size == TSO_LABEL else self.count

    def variants(self, datapath: str | None = None, scenario: str = "tx") -> list[dict]:
        """Every combination of the options asked for that ``datapath`` can run (vhost: split rings only)
        in ``scenario`` (several queue pairs: tx only, see make_plan)."""
        rings = [r for r in self.rings if not (r == "packed" and datapath == "vhost")]
        pairs = [n for n in self.queues if n == 1 or scenario == "tx"]
        return [{"queue_size": q, "event_idx": e, "busyloop_us": b, "ring": r, **({"queues": n} if n > 1 else {}),
                 **({"dirty_log": True} if log else {})}
                for n, r, log, q, e, b in itertools.product(pairs, rings, self.dirty_logs, self.queue_sizes,
                                                            self.event_idx, self.busyloop_us)]


def _rings(args) -> list[str]:
    rings = list(dict.fromkeys(v.lower() for v in _list(getattr(args, "ring", "split"))))
    for v in rings:
        if v not in RINGS:
            raise ConfigError(f"--ring {v!r}: split, packed, or split,packed")
    if not rings:
        raise ConfigError("--ring: give split, packed, or split,packed")
    return rings


def _dirty_logs(args) -> list[bool]:
    out = []
    for v in _list(str(getattr(args, "dirty_log", "off")).lower()):
        if v not in ("on", "off"):
            raise ConfigError(f"--dirty-log {v!r}: on, off, or off,on")
        out.append(v == "on")
    return list(dict.fromkeys(out)) or [False]


def _queues(args) -> list[int]:
    """--queues: queue pair counts to compare (comma list), each 1..MAX_QUEUE_PAIRS."""
    out = []
    for v in _list(str(getattr(args, "queues", "1"))):
        if not v.isdigit() or not 1 <= int(v) <= spec.MAX_QUEUE_PAIRS:
            raise ConfigError(f"--queues {v!r}: a number of queue pairs, 1..{spec.MAX_QUEUE_PAIRS} (a comma list "
                              "compares them)")
        out.append(int(v))
    return list(dict.fromkeys(out)) or [1]


def make_plan(args, lab: bool | None = None) -> Plan:
    """Validate the options; defaults depend on where the bench runs (``lab``; default: here)."""

    lab = in_lab() if lab is None else lab
    datapaths = list(dict.fromkeys(_list(args.datapath)))
    for d in datapaths:
        if d not in DATAPATHS:
            raise ConfigError(f"unknown datapath {d!r}: choose from {', '.join(DATAPATHS)}")
    scenarios = list(dict.fromkeys(_list(args.scenario)))
    for s in scenarios:
        if s not in SCENARIOS:
            raise ConfigError(f"unknown scenario {s!r}: choose from {', '.join(SCENARIOS)}")
    if not datapaths or not scenarios:
        raise ConfigError("give at least one datapath and one scenario")
    sizes = list(dict.fromkeys(parse_size(s) for s in _list(args.sizes)))
    if not sizes:
        raise ConfigError("give at least one frame size (--sizes 64,1500)")
    eidx = []
    for v in _list(args.event_idx):
        v = v.lower()
        if v in ("both", "on,off"):
            eidx += [True, False]
        elif v in ("on", "1", "yes", "true"):
            eidx.append(True)
        elif v in ("off", "0", "no", "false"):
            eidx.append(False)
        else:
            raise ConfigError(f"--event-idx {v!r}: on, off, or on,off")
    if getattr(args, "no_event_idx", False):
        eidx = [False]
    count = args.count if args.count is not None else (LAB_COUNT if lab else HOST_COUNT)
    if count < 1:
        raise ConfigError("--count must be at least 1")
    rr = args.rr_count if args.rr_count is not None else min(count, LAB_RR if lab else HOST_RR)
    if rr < 1:
        raise ConfigError("--rr-count must be at least 1")
    if args.repeat < 1:
        raise ConfigError("--repeat must be at least 1")
    rings = _rings(args)
    if rings == ["packed"] and datapaths == ["vhost"]:
        raise ConfigError("--ring packed with --datapath vhost: the kernel's vhost-net has no packed rings; "
                          "add user or uring, or use --ring split")
    queue_sizes = _ints(args.queue_size, "--queue-size", 1)
    for q in queue_sizes:
        for r in rings:
            spec.check_queue_size(q, r == "packed")
    busyloop = _ints(args.busyloop_us, "--busyloop-us", 0)
    if max(busyloop) > MAX_BUSYLOOP_US:   # here, not after the topology is up or the lab has booted
        raise ConfigError(f"--busyloop-us {args.busyloop_us!r}: every value must be <= {MAX_BUSYLOOP_US} (10 s)")
    pin_text = getattr(args, "pin", "auto")
    mcv = str(getattr(args, "max_cv", "auto")).strip().lower()
    if mcv == "auto":
        max_cv = LAB_MAX_CV if lab else None
    elif mcv in ("off", "none", "0"):
        max_cv = None
    else:
        try:
            max_cv = float(mcv) / 100
        except ValueError:
            raise ConfigError(f"--max-cv {mcv!r}: a percentage, auto or off") from None
        if max_cv <= 0:
            raise ConfigError("--max-cv must be above 0 (or off)")
    max_repeat = getattr(args, "max_repeat", None) or 2 * args.repeat
    if max_repeat < args.repeat:
        raise ConfigError(f"--max-repeat {max_repeat} is below --repeat {args.repeat}")
    queues = _queues(args)
    plan = Plan(datapaths, scenarios, sizes, count, rr, args.repeat, queue_sizes, list(dict.fromkeys(eidx or [True])),
                busyloop, not args.no_baseline, args.tag, pin_text=pin_text, max_cv=max_cv, max_repeat=max_repeat,
                rings=rings, queues=queues, dirty_logs=_dirty_logs(args))
    plan.pin, plan.pin_scenarios = parse_pin(pin_text, scenarios)
    plan.skipped = [{"scenario": s, "size": z, "why": "the peer (an AF_PACKET socket) cannot send frames above "
                     "its MTU: 64k runs as tx and vm2vm only"}
                    for s in scenarios for z in sizes if not supported(s, z)]
    if "packed" in rings and "vhost" in datapaths:
        plan.skipped.append({"scenario": "*", "size": "*", "what": "vhost with packed rings",
                             "why": "the kernel's vhost-net has no packed rings"
                                    + (": vhost runs split only" if "split" in rings else "")})
    if max(queues) > 1:
        if "tx" not in scenarios:
            raise ConfigError("--queues above 1 is measured in tx only (add --scenario tx): see `vnetbe bench --help`")
        if any(s != "tx" for s in scenarios):
            plan.skipped.append({"scenario": "*", "size": "*", "what": "rx, rxsat, rr and vm2vm with several pairs",
                                 "why": "the peer's frames are one flow (not IP), which macvtap steers to one "
                                        "queue: only tx runs on several pairs"})
    if not any(supported(s, z) for s in scenarios for z in sizes):
        raise ConfigError("nothing to run: rx and rr have no 64k (TSO) size; add tx or vm2vm, or a size in bytes")
    return plan


# ---------------------------------------------------------------------------------------- progress

class _Progress:
    def __init__(self, mode: str = "auto"):
        self.on = mode == "always" or (mode == "auto" and sys.stderr.isatty())

    def __call__(self, msg: str) -> None:
        if self.on:
            print(f"\r\033[K{msg}", end="", file=sys.stderr, flush=True)

    def line(self, msg: str) -> None:
        if self.on:
            print(f"\r\033[K{msg}", file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.on:
            print("\r\033[K", end="", file=sys.stderr, flush=True)


def _start_info(plan: Plan, where: str) -> dict:
    return {"host": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "vhost_net": os.path.exists(VHOST_NET_PATH), "where": where,
            "datapaths": plan.datapaths, "scenarios": plan.scenarios,
            "sizes": [str(s) for s in plan.sizes], "count": plan.count, "rr_count": plan.rr_count,
            "tso_count": plan.tso_count,
            "repeat": plan.repeat, "queue_sizes": plan.queue_sizes, "event_idx": plan.event_idx,
            "busyloop_us": plan.busyloop_us, "rings": plan.rings, "dirty_log": plan.dirty_logs,
            "baseline": plan.baseline,
            "pin": plan.pin, "pin_scenarios": list(plan.pin_scenarios), "max_cv": plan.max_cv,
            "max_repeat": plan.max_repeat}


# ------------------------------------------------------------------------------------------ running

def collect(plan: Plan, progress: _Progress | None = None, with_costs: bool = False) -> dict:
    """Run the plan here (root, and /dev/vhost-net if vhost is in it) and return the JSON document."""

    if os.geteuid() != 0:
        raise NotRoot("not running as root: the benchmark creates a namespace, a veth and macvtaps; run with sudo")
    if "vhost" in plan.datapaths and not os.path.exists(VHOST_NET_PATH):
        raise SetupError("/dev/vhost-net is missing on this host (no vhost_net module): drop --no-lab to run the "
                         "bench in the kernel lab, or use --datapath user")
    progress = progress or _Progress("never")
    where = WHERE_LAB if in_lab() else WHERE_HOST
    t_start = time.monotonic()
    results, baseline = [], []
    with BenchTopology(plan.tag) as bt:
        for scen in plan.scenarios:
            bt.pin = plan.pin if scen in plan.pin_scenarios else {}
            for size in plan.sizes:
                if not supported(scen, size):
                    continue
                n = plan.frames(scen, size)
                configs = []
                if plan.baseline and has_baseline(scen):
                    configs.append(("raw", {}))
                configs += [(dp, v) for dp in plan.datapaths for v in plan.variants(dp, scen)]
                runs: list[list] = [[] for _ in configs]
                for i in range(plan.repeat):
                    for k, (dp, opts) in enumerate(configs):
                        progress(f"{scen} {size}: {dp}{_opts_label(opts, plan)} run {i + 1}/{plan.repeat}")
                        runs[k].append(bt.run(scen, dp, size, n, **opts))
                # Spread above the bound: one more run of every configuration still above it, in turn.
                for i in range(plan.repeat, plan.max_repeat if plan.max_cv else plan.repeat):
                    wide = [k for k, rs in enumerate(runs) if (cv([r.pps for r in rs]) or 0) > plan.max_cv]
                    if not wide:
                        break
                    for k in wide:
                        dp, opts = configs[k]
                        progress(f"{scen} {size}: {dp}{_opts_label(opts, plan)} run {i + 1} (spread above bound)")
                        runs[k].append(bt.run(scen, dp, size, n, **opts))
                for (dp, _), rs in zip(configs, runs):
                    (baseline if dp == "raw" else results).append(summarize(rs))
    progress.done()
    if bt.pin_failed:
        plan.pin = {**(plan.pin or {}), "not_pinned": sorted(set(bt.pin_failed))}
    doc = {"start": _start_info(plan, where), "results": results, "baseline": baseline,
           "skipped": [{**s, "size": str(s["size"])} for s in plan.skipped],
           "end": {"seconds": round(time.monotonic() - t_start, 1)}}
    if with_costs:
        progress("measuring costs (vnetbe costs --quick)")
        doc["costs"] = costs.measure(quick=True)
        progress.done()
    return doc


def _opts_label(opts: dict, plan: Plan) -> str:
    parts = []
    if len(plan.queue_sizes) > 1 and "queue_size" in opts:
        parts.append(f"q={opts['queue_size']}")
    if len(plan.event_idx) > 1 and "event_idx" in opts:
        parts.append(f"eidx={'on' if opts['event_idx'] else 'off'}")
    if len(plan.rings) > 1 and "ring" in opts:
        parts.append(opts["ring"])
    if opts.get("busyloop_us"):
        parts.append(f"busy={opts['busyloop_us']}us")
    if len(plan.queues) > 1 or opts.get("queues", 1) > 1:
        parts.append(f"{opts.get('queues', 1)} pairs")
    if opts.get("dirty_log"):
        parts.append("dirty log")
    return (" " + " ".join(parts)) if parts else ""


# The directory holding this vnetbe package: site-packages, or the source tree of an editable install.
_PKGROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# How the lab starts this same vnetbe. Not `python3 -m vnetbe`: -m puts the current directory first on
# sys.path, and from a source tree after `pip install .` that finds the tree's unbuilt package.
_LAB_ENTRY = f"import sys; sys.path.insert(0, {_PKGROOT!r}); from vnetbe.cli import main; sys.exit(main())"


def _lab_argv(plan: Plan, with_costs: bool, progress: bool) -> list[str]:
    argv = [sys.executable, "-c", _LAB_ENTRY, "bench", "--no-lab", "--json",
            "--datapath", ",".join(plan.datapaths), "--scenario", ",".join(plan.scenarios),
            "--sizes", ",".join(str(s) for s in plan.sizes), "--count", str(plan.count),
            "--rr-count", str(plan.rr_count), "--repeat", str(plan.repeat),
            "--queue-size", ",".join(map(str, plan.queue_sizes)),
            "--event-idx", ",".join("on" if e else "off" for e in plan.event_idx),
            "--ring", ",".join(plan.rings), "--queues", ",".join(map(str, plan.queues)),
            "--dirty-log", ",".join("on" if d else "off" for d in plan.dirty_logs),
            "--busyloop-us", ",".join(map(str, plan.busyloop_us)), "--tag", plan.tag,
            "--pin", plan.pin_text, "--max-cv", "off" if plan.max_cv is None else str(plan.max_cv * 100),
            "--max-repeat", str(plan.max_repeat),
            "--progress", "always" if progress else "never"]
    if not plan.baseline:
        argv.append("--no-baseline")
    if with_costs:
        argv.append("--with-costs")
    return argv


def _find_doc(out: bytes) -> dict:
    """The bench's JSON document in the lab's stdout (which may carry other lines before it)."""
    text = out.decode("utf-8", "replace")
    dec = json.JSONDecoder()
    starts = [0] if text.startswith("{") else []
    starts += [i + 1 for i in range(len(text)) if text.startswith("\n{", i)]
    for i in starts:
        try:
            doc, _ = dec.raw_decode(text, i)
        except json.JSONDecodeError:
            continue
        if isinstance(doc, dict) and "results" in doc and "start" in doc:
            return doc
    raise SetupError("the bench inside the kernel lab printed no JSON document; its messages are above")


def collect_in_lab(plan: Plan, progress: _Progress, with_costs: bool = False) -> dict:
    """Run the whole plan inside the kernel lab; the document it prints comes back (start.where says so)."""
    provision.require("bench", "no /dev/vhost-net here and the kernel lab cannot start",
                      "or `vnetbe bench --datapath user,uring` to leave vhost out")
    env = {"PYTHONPATH": os.pathsep.join(p for p in (_PKGROOT, os.environ.get("PYTHONPATH", "")) if p)}
    progress.line(f"no /dev/vhost-net here: running the bench in the kernel lab ({WHERE_LAB}; it boots in ~30-90 s)")
    out = io.BytesIO()
    try:
        rc = lab.run(_lab_argv(plan, with_costs, progress.on), env=env, stdout=out, timeout=LAB_TIMEOUT_S)
    except (LabError, ConfigError) as e:
        raise SetupError(f"the kernel lab (needed for vhost: no /dev/vhost-net here) failed: {e}; "
                         "check with `vnetbe lab --check`, or run `vnetbe bench --datapath user`") from None
    progress.done()
    if rc != 0:
        raise SetupError(f"the bench inside the kernel lab failed (exit {rc}); its messages are above")
    doc = _find_doc(out.getvalue())
    doc["start"]["where"] = WHERE_LAB
    doc["start"]["launched_from"] = {"host": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count()}
    return doc


def bench(args, progress: _Progress | None = None, with_costs: bool = False) -> dict:
    """Run (here, or in the lab when vhost is asked for and missing here) and return the document."""
    progress = progress or _Progress(getattr(args, "progress", "auto"))
    with_costs = with_costs or getattr(args, "with_costs", False)
    want_vhost = "vhost" in _list(args.datapath)
    if want_vhost and not os.path.exists(VHOST_NET_PATH) and not in_lab():
        if args.no_lab:
            raise SetupError("/dev/vhost-net is missing on this host and --no-lab forbids the kernel lab: use "
                             "--datapath user, or drop --no-lab")
        return collect_in_lab(make_plan(args, lab=True), progress, with_costs)
    return collect(make_plan(args), progress, with_costs)


def _terminate_cleanly() -> None:
    """SIGTERM unwinds like Ctrl-C, so every ``with``/``finally`` removes what it created (vnb* links,
    the namespace) instead of the process dying with them in place."""

    me = os.getpid()

    def stop(signum, frame):
        if os.getpid() != me:
            # A forked helper (pyroute2 forks one to open netlink sockets in a namespace, and ends it with
            # SIGTERM) must die at once: unwinding there would tear down the parent's topology.
            os._exit(128 + signum)
        raise SystemExit(128 + signum)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)


def _run_frontend(args) -> int:
    """--frontend testpmd or qemu: a front end nobody here wrote, its own scenario and table."""
    progress = _Progress(getattr(args, "progress", "auto"))
    provision.require(args.frontend, f"bench --frontend {args.frontend} cannot start")
    if args.frontend == "testpmd":
        mod = testpmd_bench
        backends = ["vnetbe-" + d for d in _list(args.datapath)] + ["dpdk-vhost", "kernel"]
        doc = mod.run(backends, seconds=args.seconds, repeat=args.repeat, tag=args.tag[:4], progress=progress,
                      rings=_rings(args), queues=_queues(args))
    elif args.frontend == "migration":
        mod = migration_bench
        dps = _list(args.datapath)
        if "vhost" in dps:   # vnetbe serve's vhost needs /dev/vhost-net, and a QEMU in the lab is too slow
            dps.remove("vhost")
            print("vnetbe bench --frontend migration: vhost left out (a QEMU guest inside the lab's emulated "
                  "CPU does not fit; tests/e2e/test_migration_precopy.py migrates vhost in the lab)", file=sys.stderr)
        doc = mod.run(["vnetbe-" + d for d in dps] + ["dpdk-vhost"], migrations=args.repeat, tag=args.tag[:2],
                      kernel=lab.find_kernel(), busybox=lab.find_busybox(), progress=progress)
    else:
        mod = guest_tcp_bench
        doc = mod.run(lab.run, rounds=args.repeat, tag=args.tag[:4], progress=progress)
    progress.done()
    if args.output:
        write_json(doc, args.output)
    print(json.dumps(doc, indent=2) if args.json else mod.format_table(doc), flush=True)
    return 0


def run(args) -> int:
    _terminate_cleanly()
    if args.frontend != "guest":
        return _run_frontend(args)
    if args.plot:
        from .plot import require  # imports matplotlib only now
        require()   # fail now, not after the bench
    doc = bench(args)
    if args.output:
        write_json(doc, args.output)
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        print()
    else:
        print(format_table(doc))
    sys.stdout.flush()
    if args.plot:
        from .plot import write_charts  # optional, as above
        paths = write_charts(doc, args.plot)
        print(f"charts: {', '.join(str(p) for p in paths)}", file=sys.stderr)
    return 0


def write_json(doc: dict, path: str) -> None:
    try:
        with open(path, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
    except OSError as e:
        raise ConfigError(f"cannot write {path}: {e.strerror or e}") from None


# ------------------------------------------------------------------------------------------- table


def _runs_text(doc: dict) -> str:
    """"5", or "5-10" when a spread bound gave some configurations more runs."""
    s = doc["start"]
    most = max([r.get("runs", s["repeat"]) for r in list(doc["results"]) + list(doc.get("baseline") or [])]
               or [s["repeat"]])
    return str(s["repeat"]) if most <= s["repeat"] else f"{s['repeat']}-{most}"


def format_table(doc: dict) -> str:
    s = doc["start"]
    varied = varied_options(doc)
    r0 = (doc["results"] or [{}])[0].get("options") or {}
    fixed = []
    if "queue_size" not in varied and "queue_size" in r0:
        fixed.append(f"queue {r0['queue_size']}")
    if "event_idx" not in varied and "event_idx" in r0:
        fixed.append(f"EVENT_IDX {'on' if r0['event_idx'] else 'off'}")
    if "ring" not in varied and doc["results"]:
        fixed.append(f"{ring_of(doc['results'][0])} rings")
    if "dirty_log" not in varied and doc["results"] and log_of(doc["results"][0]):
        fixed.append("dirty log on")
    where = s.get("where", WHERE_HOST)
    lines = [f"vnetbe bench on {s['host']} ({where}; kernel {s['kernel']}, {s['cpus']} cpus), "
             f"{s['count']} frames x {_runs_text(doc)} runs, median [min..max]" + (f"; {', '.join(fixed)}" if fixed else "")]
    ocol = bool(varied) or any((r.get("options") or {}).get("busyloop_us") for r in doc["results"])
    rcol = "ring" in varied
    qcol = "queues" in varied
    lcol = "dirty_log" in varied

    thr = rows_in_order(doc, THROUGHPUT_SCENARIOS)
    comps = comparisons(doc)
    if thr:
        head = (f"{'path':12} {'scen':5} {'size':>5} " + (f"{'options':14} " if ocol else "")
                + f"{'kpps':>8} {'[min..max]':>15} {'cv%':>4} {'Gbit/s':>7} {'vs raw':>6} {'vs user':>7} "
                + (f"{'vs split':>8} " if rcol else "") + (f"{'vs 1qp':>6} " if qcol else "")
                + (f"{'vs log off':>10} " if lcol else "") + f"{'lost%':>6} "
                  f"{'sys/pkt':>7} {'kick/pkt':>8} {'irq/pkt':>8} {'wake/pkt':>8} {'cpu ns/pkt':>10}")
        lines += ["", head]
        for r, b in thr:
            pp = r["per_packet"]

            def vs(ref: str) -> str:
                c = comparison_for(comps, r, ref)
                return f"{c['ratio']:.2f}{mark(c)}" if c and c["ratio"] is not None else "-"
            ratio = "1.00" if r["datapath"] == "raw" else vs("raw")
            vs_user = vs("user") if r["datapath"] not in ("raw", "user") else ""
            vs_split = (f"{vs('split') if ring_of(r) == 'packed' else '':>8} " if rcol else "")
            vs_split += (f"{vs('1 pair') if pairs_of(r) > 1 else '':>6} " if qcol else "")
            vs_split += (f"{vs('log off') if log_of(r) else '':>10} " if lcol else "")
            mm = f"[{r['pps_min'] / 1e3:.0f}..{r['pps_max'] / 1e3:.0f}]"
            cvp = f"{100 * r['pps_cv']:.0f}" if r.get("pps_cv") is not None else "-"
            lost = f"{100 * (1 - r['frames'] / r['offered']):.2f}" if r.get("offered") else "-"
            lines.append(f"{r['datapath']:12} {r['scenario']:5} {label(r):>5} "
                         + (f"{opts_text(r, varied):14} " if ocol else "")
                         + f"{r['pps'] / 1e3:8.1f} {mm:>15} {cvp:>4} {r['gbps']:7.3f} {ratio:>6} {vs_user:>7} "
                         + vs_split + f"{lost:>6} "
                           f"{pp.get('syscalls', 0):7.3f} {pp.get('kicks', 0):8.4f} {pp.get('interrupts', 0):8.4f} "
                           f"{pp.get('wakeups', 0):8.4f} {pp.get('cpu_ns', 0):10.0f}")
        lossy = [(r, loss_text(r)) for r, _ in thr if loss_text(r)]
        lines += ["", "frames offered -> delivered (the median run), and where the others went:"]
        if not lossy:
            lines.append("  every frame offered arrived, in every row")
        for r, why in lossy:
            o = f" {opts_text(r, varied)}" if ocol and r["datapath"] != "raw" else ""
            lines.append(f"  {r['datapath']:12} {r['scenario']:5} {label(r):>5}{o}: {r['offered']} -> {r['frames']}; {why}")
        split = [r for r, _ in thr if (r.get("options") or {}).get("pair_tx_frames")]
        if split:
            lines.append("frames each queue pair's datapath took (the median run):")
        for r in split:
            lines.append(f"  {r['datapath']:12} {r['scenario']:5} {label(r):>5} {opts_text(r, varied)}: "
                         + ", ".join(f"pair {p} {n}" for p, n in enumerate(r["options"]["pair_tx_frames"])))
    rr = rows_in_order(doc, ("rr",))
    if rr:
        lines += ["", f"request/response ({s.get('rr_count', '?')} round trips x {s['repeat']} runs; counts per round trip)",
                  f"{'path':12} {'size':>5} " + (f"{'options':14} " if ocol else "")
                  + f"{'p50 µs':>8} {'[min..max]':>13} {'p99 µs':>8} {'k RT/s':>7} {'p50 x raw':>9} {'sys/RT':>7} "
                    f"{'kick/RT':>7} {'irq/RT':>7} {'wake/RT':>7} {'cpu µs/RT':>9}"]
        for r, b in rr:
            pp = r["per_packet"]
            ratio = "1.00" if r["datapath"] == "raw" else (f"{r['p50_us'] / b['p50_us']:.2f}" if b and b.get("p50_us") else "-")
            mm = f"[{r.get('p50_us_min', 0):.0f}..{r.get('p50_us_max', 0):.0f}]"
            lines.append(f"{r['datapath']:12} {label(r):>5} " + (f"{opts_text(r, varied):14} " if ocol else "")
                         + f"{r.get('p50_us', 0):8.1f} {mm:>13} {r.get('p99_us', 0):8.1f} {r['pps'] / 1e3:7.2f} "
                           f"{ratio:>9} {pp.get('syscalls', 0):7.2f} {pp.get('kicks', 0):7.2f} "
                           f"{pp.get('interrupts', 0):7.2f} {pp.get('wakeups', 0):7.2f} {pp.get('cpu_ns', 0) / 1e3:9.1f}")
    allrows = thr + rr
    if allrows:
        lines += ["", "CPU ns per packet by thread (the median run):"]
        for r, _ in allrows:
            cpu = r.get("cpu_ns_per_packet") or {}
            parts = " + ".join(f"{k} {v:.0f}" for k, v in cpu.items())
            o = f" {opts_text(r, varied)}" if ocol and r["datapath"] != "raw" else ""
            lines.append(f"  {r['datapath']:12} {r['scenario']:5} {label(r):>5}{o}: {parts} = {sum(cpu.values()):.0f}")
    notes = []
    if thr:
        notes.append("kpps and Gbit/s count frames delivered at the far end, first frame sent to last one "
                     "received; lost% = 1 - delivered/offered")
        notes.append(f"{NOISE_MARK} after a ratio: not separated from its reference (ranges overlap, or exact "
                     f"Mann-Whitney p >= {ALPHA} over the runs; fewer than {min_separable_repeats()} runs a side "
                     "can never separate)")
        bound = s.get("max_cv")
        wide = [f"{r['datapath']} {r['scenario']} {label(r)}" for r, _ in thr
                if bound and (r.get("pps_cv") or 0) > bound]
        if wide:
            notes.append(f"spread above the bound (cv > {100 * bound:.0f}% after {s.get('max_repeat')} runs): "
                         + ", ".join(wide))
        if s.get("pin"):
            notes.append(f"pinned ({', '.join(s.get('pin_scenarios') or [])}): "
                         + ", ".join(f"{k} on cpu {v}" for k, v in s["pin"].items() if k in ROLES)
                         + "".join(f"; not pinned: {x}" for x in s["pin"].get("not_pinned", []))
                         + ("; runs on several queue pairs are not pinned" if "queues" in varied else ""))
    if any(log_of(r) for r, _ in allrows):
        notes.append("dirty log: the device sets the bit of every guest page it writes (RX data, used rings) as in "
                     "a live migration's pre-copy; nothing harvests the log during the run")
    if any(label(r) == "64k" for r, _ in allrows):
        notes.append(f"64k: TSO super-frames of 65535 B (gso tcpv4, mss 1448), {s.get('tso_count', '?')} per run; "
                     "kpps counts super-frames, Gbit/s their TCP payload")
    skipped: dict[str, list[str]] = {}
    for sk in doc.get("skipped") or []:
        skipped.setdefault(sk["why"], []).append(skipped_text(sk))
    for why, what in skipped.items():
        notes.append(f"not run: {', '.join(what)}: {why}")
    if where != WHERE_HOST:
        notes.append("software-emulated lab: compare the paths with each other, not with a host's numbers")
    if notes:
        lines += [""] + [f"note: {n}" for n in notes]
    return "\n".join(lines)
