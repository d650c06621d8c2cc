"""Guest memory: memfd-backed regions mapped shared, at guest-physical addresses, with holes allowed.

vnetbe either makes the memory (tests, benchmarks: ``GuestMemory(64 << 20)`` or ``regions=[...]``) or
maps what a VMM hands over (``GuestMemory.from_fds``). The C side sees it as one ``struct vnb_mem``;
every guest-physical access goes through its bounds-checked translation.
"""
from __future__ import annotations

import ctypes
import errno
import ctypes.util
import mmap
import os
from dataclasses import dataclass

import numpy as np

from ._native import ffi, lib
from .errors import ConfigError, GuestMemoryGone, KernelRefused

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FAILED = ctypes.c_void_p(-1).value
PAGE = mmap.PAGESIZE
MAX_REGIONS = 64


def map_shared(fd: int, size: int, offset: int, call: str, hint: str) -> int:
    """mmap ``size`` bytes of ``fd`` at ``offset`` shared, read-write; the host address."""
    addr = _libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, offset)
    if addr in (None, _MAP_FAILED):
        raise KernelRefused(call, ctypes.get_errno(), hint)
    return addr


def unmap(addr: int, size: int) -> None:
    _libc.munmap(addr, size)


@dataclass
class Region:
    gpa: int
    size: int
    fd: int          # memfd (or the VMM's fd); vhost-net and a VMM can map it again
    offset: int      # offset of gpa within fd
    hva: int         # where it is mapped in this process
    owned_fd: bool

    def contains(self, gpa: int, size: int = 1) -> bool:
        return self.gpa <= gpa and gpa + size <= self.gpa + self.size


class GuestMemory:
    """Shared guest memory made of one or more regions.

    ``GuestMemory(size)`` is one region at guest-physical 0; ``GuestMemory(regions=[(gpa, size), ...])``
    places several, with holes between them when their ranges leave gaps.
    """

    def __init__(self, size: int | None = None, *, regions: list[tuple[int, int]] | None = None,
                 name: str = "vnetbe-guest"):
        if (size is None) == (regions is None):
            raise ConfigError("give GuestMemory either a size or regions=[(gpa, size), ...]")
        layout = [(0, size)] if regions is None else list(regions)
        self._init_table()
        try:
            for gpa, rsize in layout:
                self._check_layout(gpa, rsize)
                fd = os.memfd_create(name, os.MFD_CLOEXEC)
                try:
                    os.ftruncate(fd, rsize)
                except OSError:
                    os.close(fd)
                    raise
                self._map(gpa, rsize, fd, 0, owned_fd=True)
        except BaseException:
            self.close()
            raise

    @classmethod
    def from_fds(cls, regions: list[tuple[int, int, int, int]]) -> "GuestMemory":
        """Map a VMM's guest memory: regions as (gpa, size, fd, offset). The fds stay the VMM's."""
        self = cls.__new__(cls)
        self._init_table()
        try:
            for gpa, size, fd, offset in regions:
                self._check_layout(gpa, size)
                if offset % PAGE:
                    raise ConfigError(f"region at gpa {gpa:#x}: file offset {offset:#x} is not page aligned")
                self._map(gpa, size, fd, offset, owned_fd=False)
        except BaseException:
            self.close()
            raise
        return self

    # --- changing the map (a VMM's memory hot-plug) ---
    def map_region(self, gpa: int, size: int, fd: int, offset: int = 0) -> None:
        """Map one more of the VMM's regions; the others stay where they are. The fd stays the
        caller's. Only while no datapath runs over this memory (its thread holds a copy of the table)."""
        self._check_layout(gpa, size)
        if offset % PAGE:
            raise ConfigError(f"region at gpa {gpa:#x}: file offset {offset:#x} is not page aligned")
        self._map(gpa, size, fd, offset, owned_fd=False)

    def unmap_region(self, gpa: int) -> Region:
        """Unmap the region that starts at ``gpa`` and return it; the others stay mapped. Only while no
        datapath runs over this memory."""
        for r in self.regions:
            if r.gpa == gpa:
                break
        else:
            raise ConfigError(f"no guest memory region starts at {gpa:#x}")
        self.regions.remove(r)
        del self._brk[r.gpa]
        self.table.nregions = 0
        for other in self.regions:     # the table again, less r (already sorted and checked)
            lib.vnb_mem_add_region(self.table, other.gpa, other.size, other.hva)
        _libc.munmap(r.hva, r.size)
        if r.owned_fd:
            os.close(r.fd)
        return r

    # --- the dirty log of a live migration (vnetbe/dirtylog.py) ---
    def set_log(self, log) -> None:
        """Log every device-side write to this memory in ``log`` (a DirtyLog), or stop (None). Only
        while no datapath runs over this memory (its thread holds a copy of the table)."""
        if log is None:
            self.table.log_hva = self.table.log_size = 0
            self.log = None
            return
        self.table.log_hva, self.table.log_size = log.hva, log.size
        if not lib.vnb_log_covers(self.table):
            self.table.log_hva = self.table.log_size = 0
            raise ConfigError(f"a dirty log of {log.size} bytes covers guest memory up to "
                              f"{log.size * 8 * lib.VNB_LOG_PAGE:#x}; this memory needs "
                              f"{self.log_size_needed()} bytes")
        self.log = log

    def log_size_needed(self) -> int:
        """Bytes of dirty log that cover every region (one bit per 4 KiB guest-physical page)."""
        return max((lib.vnb_log_size_for(r.gpa + r.size) for r in self.regions), default=0)

    # --- construction helpers ---
    def _init_table(self) -> None:
        self.regions: list[Region] = []
        self.table = ffi.new("struct vnb_mem *")
        self.log = None   # the DirtyLog writes are logged in, while a migration runs
        self._brk: dict[int, int] = {}
        self.closed = False

    def _check_layout(self, gpa: int, size: int) -> None:
        if size <= 0 or size % PAGE or gpa % PAGE or gpa < 0:
            raise ConfigError(f"region ({gpa:#x}, {size:#x}): gpa and size must be page-aligned and size > 0")
        if len(self.regions) >= MAX_REGIONS:
            raise ConfigError(f"at most {MAX_REGIONS} guest memory regions")
        for r in self.regions:
            if gpa < r.gpa + r.size and r.gpa < gpa + size:
                raise ConfigError(f"region ({gpa:#x}, {size:#x}) overlaps ({r.gpa:#x}, {r.size:#x})")

    def _map(self, gpa: int, size: int, fd: int, offset: int, owned_fd: bool) -> None:
        try:
            addr = map_shared(fd, size, offset, "mmap(guest memory)", f"region gpa {gpa:#x} size {size:#x}")
        except KernelRefused:
            if owned_fd:
                os.close(fd)
            raise
        region = Region(gpa, size, fd, offset, addr, owned_fd)
        rc = lib.vnb_mem_add_region(self.table, gpa, size, addr)
        if rc < 0:  # pragma: no cover - _check_layout refuses the same cases first
            _libc.munmap(addr, size)
            if owned_fd:
                os.close(fd)
            raise ConfigError(f"region ({gpa:#x}, {size:#x}) refused by the memory table ({-rc})")
        self.regions.append(region)
        self.regions.sort(key=lambda r: r.gpa)
        self._brk[gpa] = 0

    # --- access ---
    @property
    def size(self) -> int:
        return sum(r.size for r in self.regions)

    def region_of(self, gpa: int, size: int = 1) -> Region:
        for r in self.regions:
            if r.contains(gpa, size):
                return r
        raise ConfigError(f"guest range {gpa:#x}+{size:#x} is not inside one memory region")

    def hva(self, gpa: int, size: int = 1) -> int:
        r = self.region_of(gpa, size)
        return r.hva + (gpa - r.gpa)

    def view(self, gpa: int, size: int, dtype=np.uint8) -> np.ndarray:
        """A numpy view of guest memory (no copy). Valid until close(). Unguarded: for memory this
        process made (a driver's side); memory a front end handed over is read with read()."""
        itemsize = np.dtype(dtype).itemsize
        if size % itemsize:
            raise ConfigError(f"size {size} is not a multiple of {np.dtype(dtype).name}")
        buf = (ctypes.c_uint8 * size).from_address(self.hva(gpa, size))
        return np.frombuffer(buf, dtype=dtype)

    def read(self, gpa: int, size: int) -> bytes:
        """A copy of guest memory, safe against memory a front end took away after it was mapped (a
        shrunk memfd): that raises GuestMemoryGone instead of killing the process with SIGBUS."""
        buf = ffi.new("uint8_t[]", size)
        self._check_copy(lib.vnb_mem_read(self.table, gpa, buf, size), gpa, size)
        return bytes(ffi.buffer(buf, size))

    def write(self, gpa: int, data: bytes) -> None:
        """As read(), the other way."""
        self._check_copy(lib.vnb_mem_write(self.table, gpa, data, len(data)), gpa, len(data))

    def _check_copy(self, rc: int, gpa: int, size: int) -> None:
        if rc == -errno.ERANGE:
            raise ConfigError(f"guest range {gpa:#x}+{size:#x} is not inside one memory region")
        if rc < 0:
            raise GuestMemoryGone(None, f"at guest address {gpa:#x}+{size:#x}")

    def alloc(self, size: int, align: int = 64) -> int:
        """Carve guest-physical space for a driver's rings and buffers (first region with room)."""
        for r in self.regions:
            start = (r.gpa + self._brk[r.gpa] + align - 1) & ~(align - 1)
            if start + size <= r.gpa + r.size:
                self._brk[r.gpa] = start + size - r.gpa
                return start
        raise ConfigError(f"guest memory exhausted: no region has {size} free bytes; give GuestMemory more")

    def reset_alloc(self) -> None:
        for gpa in self._brk:
            self._brk[gpa] = 0

    # --- lifetime ---
    def close(self) -> None:
        if getattr(self, "closed", True):
            return
        for r in self.regions:
            _libc.munmap(r.hva, r.size)
            if r.owned_fd:
                os.close(r.fd)
        self.regions = []
        self.table.nregions = 0
        self.closed = True

    def __enter__(self) -> "GuestMemory":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        rs = ", ".join(f"[{r.gpa:#x}..{r.gpa + r.size:#x})" for r in self.regions)
        return f"GuestMemory({rs})"
