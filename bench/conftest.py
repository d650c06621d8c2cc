"""pytest-benchmark files sharing ``vnetbe.tools.bench`` with ``vnetbe bench``: ``sudo python3 -m pytest bench/``.

They need root (a namespace, a veth and macvtaps are created, named vnb<tag>*, and removed at the end
even on failure); without it the run stops at once with one line, it never "passes" by skipping.
vhost is benchmarked only where /dev/vhost-net exists (in the lab:
``vnetbe lab -- python3 -m pytest bench/``); elsewhere the summary says it was left out.

Frames per round: VNETBE_BENCH_COUNT (default ``vnetbe bench``'s HOST_COUNT; LAB_ROUND_COUNT inside the lab).
"""
from __future__ import annotations

import os
import secrets

import pytest

from vnetbe import VHOST_NET_PATH
from vnetbe.tools.benchcli import HOST_COUNT
from vnetbe.tools.lab import in_lab

HAVE_VHOST = os.path.exists(VHOST_NET_PATH)
DATAPATHS = ["user"] + (["vhost"] if HAVE_VHOST else [])
ROUNDS = 5
LAB_ROUND_COUNT = 30_000   # each of ROUNDS rounds under software emulation: keeps a lab run to minutes


def _count() -> int:
    if os.environ.get("VNETBE_BENCH_COUNT"):
        return int(os.environ["VNETBE_BENCH_COUNT"])
    return LAB_ROUND_COUNT if in_lab() else HOST_COUNT


def pytest_configure(config):
    if os.geteuid() != 0:
        raise pytest.UsageError("bench/ needs root (it creates a namespace, a veth and macvtaps): "
                                "sudo python3 -m pytest bench/")


def pytest_terminal_summary(terminalreporter):
    if not HAVE_VHOST:
        terminalreporter.write_line("vhost not benchmarked: no /dev/vhost-net on this host; run "
                                    "`vnetbe lab -- python3 -m pytest bench/` for both datapaths")


@pytest.fixture(scope="session")
def count() -> int:
    return _count()


@pytest.fixture(scope="session")
def bt():
    """One throwaway topology (vnbP<hex>*) for the whole session."""
    from vnetbe.tools.bench import BenchTopology

    with BenchTopology(f"P{secrets.token_hex(2)}") as t:
        yield t


@pytest.fixture(scope="session")
def same_run() -> dict:
    """pps of the baselines measured in this session, by (scenario, size): the ratios' denominators."""
    return {}


def record(benchmark, runs: list, baseline: float | None = None) -> dict:
    """Put the scenario's own figures (median of the rounds, as ``vnetbe bench`` summarizes them: the
    per-packet counts are the median run's) into benchmark.extra_info."""
    from vnetbe.tools.bench import summarize

    s = summarize(runs)
    info = {"datapath": s["datapath"], "scenario": s["scenario"], "size": s["size"], "rounds": len(runs),
            "pps": round(s["pps"]), "pps_min": round(s["pps_min"]), "pps_max": round(s["pps_max"]),
            "gbps": round(s["gbps"], 3), "per_packet": {k: round(v, 4) for k, v in sorted(s["per_packet"].items())}}
    if s["scenario"] == "rr":
        info["p50_us"] = round(s["p50_us"], 1)
        info["p99_us"] = round(s["p99_us"], 1)
    if baseline:
        info["ratio_vs_raw"] = round(s["pps"] / baseline, 3)
    benchmark.extra_info.update(info)
    return info


def run_rounds(benchmark, scenario: str, size: int, one_round, *, warmup: bool = True,
               baseline: float | None = None) -> tuple[dict, list]:
    """Time ``one_round`` ROUNDS times in the group "<scenario> <size> B" and record its figures.

    With ``warmup`` one more round runs first and is left out of the figures. Returns the recorded
    info and every round's result, the warm-up's included (first)."""
    runs = []
    benchmark.group = f"{scenario} {size} B"
    benchmark.pedantic(lambda: runs.append(one_round()), rounds=ROUNDS, iterations=1, warmup_rounds=int(warmup))
    # --benchmark-disable runs the round once: then there is no warm-up to leave out.
    return record(benchmark, runs[1:] if warmup and len(runs) > 1 else runs, baseline), runs
