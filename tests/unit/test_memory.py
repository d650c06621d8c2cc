"""Guest memory: the region table and the one bounds-checked translation every guest access goes through."""
from __future__ import annotations

import errno
import mmap
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from vnetbe.tools._native import ffi, lib
from vnetbe.errors import ConfigError
from vnetbe.memory import GuestMemory

from vnbtest.rings import split_gpa

PAGE = mmap.PAGESIZE
TOP = 2**64


def c_map(mem, gpa, length, max_iov=8):
    iov = ffi.new("struct iovec[]", max_iov)
    n = lib.vnb_mem_map(mem.table, gpa, length, iov, max_iov)
    if n < 0:
        return n
    return [(int(ffi.cast("uintptr_t", iov[i].iov_base)), iov[i].iov_len) for i in range(n)]


def c_ptr(mem, gpa, length):
    p = lib.vnb_mem_ptr(mem.table, gpa, length)
    return None if p == ffi.NULL else int(ffi.cast("uintptr_t", p))


@pytest.fixture
def holey():
    """[0, 64K) and [64K, 128K) adjacent, then a hole, then [1M, 1M+64K)."""
    m = GuestMemory(regions=[(0, 64 << 10), (64 << 10, 64 << 10), (1 << 20, 64 << 10)])
    yield m
    m.close()


def test_regions_are_sorted_in_the_c_table_whatever_the_order_given():
    with GuestMemory(regions=[(1 << 20, PAGE), (0, PAGE), (64 << 10, PAGE)]) as m:
        t = m.table
        assert t.nregions == 3
        assert [t.r[i].gpa for i in range(3)] == [0, 64 << 10, 1 << 20]
        assert [r.gpa for r in m.regions] == [0, 64 << 10, 1 << 20]
        assert m.size == 3 * PAGE


def test_map_len_zero_needs_a_valid_address_but_yields_no_iovec(holey):
    assert c_map(holey, 0, 0) == []
    assert c_map(holey, (128 << 10) - 1, 0) == []
    assert c_map(holey, 128 << 10, 0) == -errno.EFAULT        # first byte of the hole
    assert c_map(holey, (1 << 20) + (64 << 10), 0) == -errno.EFAULT   # one past the end


def test_map_last_byte_and_one_past_the_end(holey):
    end = (1 << 20) + (64 << 10)
    assert c_map(holey, end - 1, 1) == split_gpa(holey, end - 1, 1)
    assert c_map(holey, end - 1, 2) == -errno.EFAULT
    assert c_map(holey, end, 1) == -errno.EFAULT
    assert c_map(holey, 0, end) == -errno.EFAULT            # covers the hole


def test_map_splits_at_adjacent_region_boundary_and_refuses_holes(holey):
    got = c_map(holey, (64 << 10) - 10, 20)
    assert len(got) == 2
    assert [n for _, n in got] == [10, 10]
    assert got == split_gpa(holey, (64 << 10) - 10, 20)
    assert c_map(holey, (128 << 10) - 10, 20) == -errno.EFAULT   # runs into the hole


def test_map_reports_enobufs_when_more_pieces_than_room(holey):
    assert c_map(holey, (64 << 10) - 10, 20, max_iov=1) == -errno.ENOBUFS


@pytest.mark.parametrize("gpa,length", [(TOP - 1, 1), (TOP - 1, 2), (TOP - 16, 32), (1, TOP - 1),
                                        (PAGE, TOP - PAGE), (0, TOP - 1)])
def test_map_and_ptr_refuse_ranges_that_overflow_near_2_64(holey, gpa, length):
    assert c_map(holey, gpa, length) == -errno.EFAULT
    assert c_ptr(holey, gpa, length) is None


def test_ptr_needs_one_contiguous_region(holey):
    base = holey.regions[0].hva
    assert c_ptr(holey, 0, 0) == base
    assert c_ptr(holey, 0, 64 << 10) == base
    assert c_ptr(holey, (64 << 10) - 1, 1) == base + (64 << 10) - 1
    # Adjacent in guest-physical space but separate mappings: a ring may not straddle them.
    assert c_ptr(holey, (64 << 10) - 1, 2) is None
    assert c_ptr(holey, 128 << 10, 0) is None
    assert c_ptr(holey, (1 << 20) + (64 << 10) - 1, 1) is not None
    assert c_ptr(holey, (1 << 20) + (64 << 10), 0) is None
    assert c_ptr(holey, (1 << 20) + (64 << 10) - 1, 2) is None


def test_region_near_the_top_of_the_address_space_translates_without_wrapping():
    gpa = TOP - 2 * PAGE   # ends one page below 2^64, so gpa + size does not wrap
    with GuestMemory(regions=[(gpa, PAGE)]) as m:
        assert c_ptr(m, gpa + PAGE - 1, 1) == m.regions[0].hva + PAGE - 1
        assert c_ptr(m, gpa + PAGE - 1, 2) is None
        assert c_map(m, gpa + PAGE - 1, 1) == [(m.regions[0].hva + PAGE - 1, 1)]
        assert c_map(m, gpa + PAGE - 1, TOP - (gpa + PAGE - 1)) == -errno.EFAULT
        assert c_map(m, TOP - 1, 1) == -errno.EFAULT


def test_region_reaching_2_64_is_refused_not_wrapped():
    with pytest.raises(ConfigError):
        GuestMemory(regions=[(TOP - PAGE, PAGE)])


def test_add_region_refuses_overlap_and_zero_size_in_c():
    t = ffi.new("struct vnb_mem *")
    assert lib.vnb_mem_add_region(t, 0x10000, 0x1000, 0x7000_0000) == 0
    assert lib.vnb_mem_add_region(t, 0x10000, 0x1000, 0x7100_0000) == -errno.EEXIST
    assert lib.vnb_mem_add_region(t, 0xF001, 0x1000, 0x7100_0000) == -errno.EEXIST
    assert lib.vnb_mem_add_region(t, 0x10FFF, 0x10, 0x7100_0000) == -errno.EEXIST
    assert lib.vnb_mem_add_region(t, 0x8000, 0x100000, 0x7100_0000) == -errno.EEXIST   # swallows it
    assert lib.vnb_mem_add_region(t, 0x20000, 0, 0x7100_0000) == -errno.EINVAL
    assert lib.vnb_mem_add_region(t, 0xF000, 0x1000, 0x7100_0000) == 0       # touching is fine
    assert lib.vnb_mem_add_region(t, 0x11000, 0x1000, 0x7200_0000) == 0
    assert t.nregions == 3
    for i in range(3, 64):
        assert lib.vnb_mem_add_region(t, 0x100000 * i, 0x1000, 0x7300_0000) == 0
    assert lib.vnb_mem_add_region(t, 0x100000 * 64, 0x1000, 0x7300_0000) == -errno.E2BIG


@pytest.mark.parametrize("regions", [
    [(0, 2 * PAGE), (PAGE, PAGE)],
    [(PAGE, PAGE), (0, 2 * PAGE)],
    [(0, PAGE), (0, PAGE)],
])
def test_overlapping_regions_are_refused(regions):
    with pytest.raises(ConfigError):
        GuestMemory(regions=regions)


@pytest.mark.parametrize("regions", [[(0, 100)], [(100, PAGE)], [(0, 0)], [(-PAGE, PAGE)]])
def test_unaligned_or_empty_regions_are_refused(regions):
    with pytest.raises(ConfigError):
        GuestMemory(regions=regions)


def test_from_fds_maps_a_vmm_memfd_at_offsets_and_leaves_the_fd_open():
    fd = os.memfd_create("vnb-test-vmm", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, 4 * PAGE)
        os.pwrite(fd, b"low", 0)
        os.pwrite(fd, b"high", 2 * PAGE)
        m = GuestMemory.from_fds([(0x100000, PAGE, fd, 0), (0x200000, 2 * PAGE, fd, 2 * PAGE)])
        try:
            assert m.read(0x100000, 3) == b"low"
            assert m.read(0x200000, 4) == b"high"
            m.write(0x200000 + PAGE, b"guest")          # shared mapping: the VMM sees guest writes
            assert os.pread(fd, 5, 3 * PAGE) == b"guest"
            assert c_map(m, 0x100000 + PAGE, 1) == -errno.EFAULT
        finally:
            m.close()
        os.fstat(fd)   # still the VMM's
        with pytest.raises(ConfigError):
            GuestMemory.from_fds([(0, PAGE, fd, 100)])
        with pytest.raises(ConfigError):
            GuestMemory.from_fds([(0, 2 * PAGE, fd, 0), (PAGE, PAGE, fd, 0)])
    finally:
        os.close(fd)


def test_views_are_live_bounded_to_one_region_and_typed(holey):
    v = holey.view(0x100, 16)
    v[:] = 7
    assert holey.read(0x100, 16) == b"\x07" * 16
    w = holey.view(0x100, 16, np.uint32)
    assert w.shape == (4,) and int(w[0]) == 0x07070707
    with pytest.raises(ConfigError):
        holey.view(0x100, 15, np.uint32)
    with pytest.raises(ConfigError):
        holey.view((64 << 10) - 8, 16)      # straddles two mappings
    with pytest.raises(ConfigError):
        holey.view(128 << 10, 1)            # in the hole
    holey.write((1 << 20) + 5, b"abc")
    assert holey.read((1 << 20) + 5, 3) == b"abc"


def test_alloc_respects_alignment(holey):
    a = holey.alloc(100, 64)
    b = holey.alloc(100, 64)
    assert a % 64 == 0 and b % 64 == 0 and b >= a + 100


def test_alloc_never_returns_a_range_that_spans_regions(holey):
    holey.alloc((64 << 10) - 32, 16)
    x = holey.alloc(64, 16)            # would straddle 64K if first-fit ignored the region end
    assert holey.region_of(x, 64)
    with pytest.raises(ConfigError):
        holey.alloc(1 << 20)


@pytest.fixture(scope="module")
def holey_mod():
    m = GuestMemory(regions=[(0, 64 << 10), (64 << 10, 64 << 10), (1 << 20, 64 << 10)])
    yield m
    m.close()


@settings(max_examples=200, deadline=None)
@given(gpa=st.one_of(st.integers(0, (1 << 20) + (128 << 10)), st.integers(TOP - 4096, TOP - 1)),
       length=st.one_of(st.integers(0, 200 << 10), st.integers(TOP - 4096, TOP - 1)))
def test_map_agrees_with_an_independent_region_walk(holey_mod, gpa, length):
    m = holey_mod
    got = c_map(m, gpa, length, max_iov=64)
    want = split_gpa(m, gpa, length) if gpa + length <= TOP else None
    if want is not None and length == 0:
        want = [] if any(r.gpa <= gpa < r.gpa + r.size for r in m.regions) else None
    if want is None:
        assert got == -errno.EFAULT
    else:
        assert got == want

