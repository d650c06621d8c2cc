"""When a difference between two sets of repeated runs is noise: spread (min..max, coefficient of
variation) and one plain test, Mann-Whitney U, exact for the handful of repeats a bench makes.

A comparison is *separated* only if the two ranges do not overlap and the two-sided exact p-value is
below ``ALPHA``. With 5 repeats on each side no overlap gives p = 2/252 = 0.008; with 3 on each side
the smallest p there is, 0.1, can never separate: 3 runs cannot show a difference at 5 %, and the
table says so instead of guessing. Pure Python, no dependency."""
from __future__ import annotations

import statistics
from functools import lru_cache

ALPHA = 0.05
NOISE_MARK = "~"


def cv(xs: list[float]) -> float | None:
    """Coefficient of variation (sample standard deviation / mean), None for fewer than 2 values."""
    if len(xs) < 2:
        return None
    m = statistics.fmean(xs)
    return statistics.stdev(xs) / m if m else None


@lru_cache(maxsize=None)
def _u_counts(n: int, m: int) -> tuple[int, ...]:
    """Number of arrangements of n x's and m y's giving each U (pairs with x > y), U = 0..n*m."""
    if n == 0 or m == 0:
        return (1,) + (0,) * (n * m)
    # The largest value is an x (it beats all m y's) or a y (it beats nothing).
    a, b = _u_counts(n - 1, m), _u_counts(n, m - 1)
    out = [0] * (n * m + 1)
    for u, c in enumerate(a):
        out[u + m] += c
    for u, c in enumerate(b):
        out[u] += c
    return tuple(out)


def mann_whitney_p(xs: list[float], ys: list[float]) -> float:
    """Two-sided exact p-value of the Mann-Whitney U test (ties count one half; exact without ties,
    approximate with them, which compare() never relies on: tied ranges overlap, and overlap alone
    keeps a pair unseparated). 1.0 when either side is empty."""
    n, m = len(xs), len(ys)
    if not n or not m:
        return 1.0
    u = sum(1.0 if x > y else 0.5 if x == y else 0.0 for x in xs for y in ys)
    u = min(u, n * m - u)
    counts = _u_counts(n, m)
    total = sum(counts)
    tail = sum(c for k, c in enumerate(counts) if k <= u + 1e-9)
    return min(1.0, 2 * tail / total)


def compare(xs: list[float], ys: list[float]) -> dict:
    """xs against ys (say device runs against baseline runs): ratio of medians, whether the ranges
    overlap, the exact p-value, and ``separated`` (no overlap and p < ALPHA)."""
    if not xs or not ys:
        return {"ratio": None, "overlap": True, "p": 1.0, "separated": False}
    my = statistics.median(ys)
    overlap = min(xs) <= max(ys) and min(ys) <= max(xs)
    p = mann_whitney_p(xs, ys)
    return {"ratio": statistics.median(xs) / my if my else None, "overlap": overlap, "p": round(p, 4),
            "separated": not overlap and p < ALPHA}


def mark(c: dict | None) -> str:
    """The table's mark for a comparison: "" when separated, NOISE_MARK when it is within noise."""
    return "" if c and c.get("separated") else NOISE_MARK


def min_separable_repeats() -> int:
    """Fewest repeats per side with which no overlap can reach p < ALPHA."""
    n = 1
    while 2 / sum(_u_counts(n, n)) >= ALPHA:
        n += 1
    return n
