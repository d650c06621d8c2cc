"""Suite-wide policy: which tests run where.

* ``root`` tests need real kernel objects. Without root they are skipped locally, but in CI
  (CI=true) a missing root is a failure: nothing may pass by not running.
* ``vhost`` tests need /dev/vhost-net. On a host without it they are deselected here and run by
  tests/run.sh inside the kernel lab (one boot, ``-m vhost``); the summary says so.
"""
from __future__ import annotations

import itertools
import secrets
import os

import pytest

from vnetbe import VHOST_NET_PATH

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
HAVE_VHOST = os.path.exists(VHOST_NET_PATH)
IS_ROOT = os.geteuid() == 0
_deselected_vhost: list[str] = []


def pytest_collection_modifyitems(config, items):
    keep = []
    for item in items:
        if item.get_closest_marker("vhost") and not HAVE_VHOST:
            _deselected_vhost.append(item.nodeid)
            continue
        keep.append(item)
    if _deselected_vhost:
        config.hook.pytest_deselected(items=[i for i in items if i.nodeid in set(_deselected_vhost)])
        items[:] = keep


def pytest_runtest_setup(item):
    if item.get_closest_marker("root") and not IS_ROOT:
        if IN_CI:
            pytest.fail("this test needs root and CI must run it: run the suite as root")
        pytest.skip("needs root (CAP_NET_ADMIN): run tests/run.sh with sudo")


def pytest_terminal_summary(terminalreporter):
    if _deselected_vhost:
        terminalreporter.write_line(
            f"{len(_deselected_vhost)} vhost tests not run here: no /dev/vhost-net on this host; "
            "tests/run.sh runs them inside the kernel lab")


# uring is marked so that the kernel lab runs it too (on its 6.1 kernel macvtap lacks FMODE_NOWAIT).
DATAPATHS = ["user", pytest.param("uring", marks=pytest.mark.uring), pytest.param("vhost", marks=pytest.mark.vhost)]


@pytest.fixture(params=DATAPATHS)
def datapath(request) -> str:
    """Every end-to-end scenario runs against every datapath; the kernel's vhost-net is the reference."""
    return request.param


_tags = itertools.count()
_RUN = secrets.token_hex(2)   # two pytest runs at once never share a tag


@pytest.fixture
def tag() -> str:
    """A fresh topology tag so that each test's interfaces (vnb<tag>*) never collide."""
    return f"E{_RUN}{next(_tags)}"
