"""Shared fixtures for end-to-end tests (root, real kernel objects)."""
from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest

# ---------------------------------------------------------------------------------------------------
# Link layer / topology fixtures (tests/e2e/test_links.py). Everything they make is named vnbL*.
# ---------------------------------------------------------------------------------------------------

LINK_TEST_PREFIX = "vnbL"
_tags = itertools.count()


@pytest.fixture(scope="session")
def vnbl_session() -> Iterator[None]:
    """Root check, removal of a crashed run's vnbL* leftovers, and a final check that none remain."""
    if os.geteuid() != 0:
        pytest.skip("needs root (CAP_NET_ADMIN) to create namespaces and interfaces")
    from vnetbe.tools.topology import cleanup_stale

    cleanup_stale(LINK_TEST_PREFIX)
    yield
    leftovers = cleanup_stale(LINK_TEST_PREFIX)
    assert not leftovers, f"tests left these behind (now removed): {leftovers}"


@pytest.fixture
def topo_tag(vnbl_session: None) -> str:
    """A fresh topology tag; Topology(tag) then names everything vnbL<n>*."""
    return f"L{next(_tags)}"


@pytest.fixture
def topo(topo_tag: str) -> Iterator["object"]:
    """Namespace vnbL<n>-ns with veth vnbL<n>p (root) <-> vnbL<n>q (inside); offloads on, no bridge."""
    from vnetbe.tools.topology import Topology

    with Topology(topo_tag) as t:
        yield t
