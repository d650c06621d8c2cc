"""What the bench files share besides their fixtures (bench/conftest.py): the datapaths this host can
run, the rounds, and the checks and records of a scenario's rounds. A module of its own, not
conftest, so that the bench files import it by a name no other test folder uses."""
from __future__ import annotations

import os

from vnetbe import VHOST_NET_PATH

HAVE_VHOST = os.path.exists(VHOST_NET_PATH)
DATAPATHS = ["user", "uring"] + (["vhost"] if HAVE_VHOST else [])
ROUNDS = 5


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


def assert_delivered(runs: list, *, at_least: float = 0.0) -> None:
    """Every round accounts for every frame it offered (delivered + drops by a named reason, nothing
    unaccounted) and delivered at least ``at_least`` of them."""
    from vnetbe.tools.bench.delivery import UNACCOUNTED

    for r in runs:
        assert r.offered > 0 and r.frames + sum(r.drops.values()) == r.offered, r
        assert UNACCOUNTED not in r.drops, r
        assert r.frames >= at_least * r.offered, r


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
