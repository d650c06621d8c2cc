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

from benchutil import HAVE_VHOST
from vnetbe.tools.benchcli import HOST_COUNT
from vnetbe.tools.lab import in_lab

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
