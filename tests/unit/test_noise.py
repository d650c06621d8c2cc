"""The noise marks of the bench tables: the exact Mann-Whitney test and the comparisons built on it."""
from __future__ import annotations

import itertools
from math import comb

from hypothesis import given
from hypothesis import strategies as st

from vnetbe.tools import noise
from vnetbe.tools.results import comparisons


def _brute_p(xs, ys):
    """Two-sided exact p by enumerating every split of the pooled values (no ties)."""
    pooled = xs + ys
    n = len(xs)

    def u(a, b):
        return sum(1 for x in a for y in b if x > y)

    obs = min(u(xs, ys), len(xs) * len(ys) - u(xs, ys))
    hits = total = 0
    for idx in itertools.combinations(range(len(pooled)), n):
        a = [pooled[i] for i in idx]
        b = [pooled[i] for i in range(len(pooled)) if i not in idx]
        total += 1
        hits += u(a, b) <= obs
    return min(1.0, 2 * hits / total)


def test_no_overlap_of_five_runs_each_gives_the_textbook_p():
    assert noise.mann_whitney_p([1, 2, 3, 4, 5], [6, 7, 8, 9, 10]) == 2 / comb(10, 5)


@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=6, unique=True),
       st.lists(st.integers(10_001, 20_000), min_size=0, max_size=6, unique=True))
def test_exact_p_matches_enumeration(xs, ys):
    # Interleave the samples so that both orders and overlaps occur.
    ys = ys or [xs[0] + 0.5]
    mixed_y = [y - 10_000 + 0.25 for y in ys]
    assert noise.mann_whitney_p(xs, mixed_y) == _brute_p(xs, mixed_y)


def test_three_runs_a_side_can_never_separate():
    c = noise.compare([100, 101, 102], [1, 2, 3])
    assert not c["overlap"] and c["p"] == 0.1 and not c["separated"]
    assert noise.min_separable_repeats() == 4
    assert noise.mark(c) == noise.NOISE_MARK


def test_overlapping_ranges_are_noise_even_with_far_medians():
    c = noise.compare([10, 11, 12, 13, 2], [1, 2, 3, 4, 5])
    assert c["overlap"] and not c["separated"]


def test_cv_is_sample_stdev_over_mean():
    assert noise.cv([1.0]) is None
    assert abs(noise.cv([90, 100, 110]) - 0.1) < 1e-12


def _row(dp, runs, scen="tx", size=64):
    return {"datapath": dp, "scenario": scen, "size": size, "size_label": str(size), "pps_runs": runs,
            "options": {} if dp == "raw" else {"queue_size": 256, "event_idx": True, "busyloop_us": 0}}


def test_comparisons_pair_each_path_with_raw_and_vhost_with_user():
    doc = {"baseline": [_row("raw", [100, 101, 102, 103, 104])],
           "results": [_row("user", [50, 51, 52, 53, 54]), _row("vhost", [52, 90, 91, 92, 93])]}
    got = {(c["path"], c["reference"]): c for c in comparisons(doc)}
    assert set(got) == {("user", "raw"), ("vhost", "raw"), ("vhost", "user")}
    assert got[("user", "raw")]["separated"] and got[("vhost", "raw")]["separated"]
    assert not got[("vhost", "user")]["separated"]   # 52 in vhost's runs overlaps user's range
