"""The dirty log of a live migration (vhost-user spec, "Migration"; the kernel's vhost log): one bit
per 4 KiB page of guest-physical address, set by the device after each write it makes to guest memory
(RX buffers, used rings, the control queue's acks), so that a pre-copy migration copies those pages
again. A vhost-user front end passes its own log (SET_LOG_BASE); a VMM written in Python makes one
with ``DirtyLog.for_memory`` and harvests it each round with ``dirty_pages``.
"""
from __future__ import annotations

import os

from ._native import ffi, lib
from .errors import ConfigError
from .memory import map_shared, unmap

PAGE = lib.VNB_LOG_PAGE


class DirtyLog:
    """``size`` bytes of log mapped at ``hva``; closed with the object (the fd, if it had one, was
    closed once mapped: the mapping keeps the memory)."""

    def __init__(self, hva: int, size: int, map_size: int, offset: int = 0):
        self.hva, self.size = hva + offset, size
        self._base, self._map_size = hva, map_size
        self.closed = False

    @classmethod
    def from_fd(cls, fd: int, size: int, offset: int = 0) -> "DirtyLog":
        """Map a front end's log: ``size`` bytes of ``fd`` from ``offset`` (SET_LOG_BASE's mmap_size and
        mmap_offset). The fd stays the caller's. The file must hold them: a region past its end would
        fault on the first write."""
        if size <= 0:
            raise ConfigError(f"a dirty log of {size} bytes")
        st = os.fstat(fd)
        if offset < 0 or offset + size > st.st_size:
            raise ConfigError(f"the log's offset {offset:#x} + size {size:#x} is past the end of its file "
                              f"({st.st_size:#x} bytes)")
        # mmap offsets are page-aligned: map from the page that holds the log's first byte.
        start = offset - offset % os.sysconf("SC_PAGE_SIZE")
        hva = map_shared(fd, size + offset - start, start, "mmap(dirty log)", f"{size} bytes at {offset:#x}")
        return cls(hva, size, size + offset - start, offset - start)

    @classmethod
    def for_memory(cls, mem) -> "DirtyLog":
        """A log, cleared, that covers every region of ``mem`` (a VMM's own pre-copy)."""
        size = mem.log_size_needed()
        fd = os.memfd_create("vnetbe-dirty-log", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            return cls.from_fd(fd, size)
        finally:
            os.close(fd)

    def dirty_pages(self) -> list[int]:
        """Take and clear the bits set since the last call: the dirty guest-physical page numbers
        (gpa // 4096), lowest first. Bits the device sets meanwhile are in this harvest or the next."""
        out = ffi.new("uint64_t[]", self.size * 8)
        n = lib.vnb_log_harvest(ffi.cast("uint8_t *", self.hva), self.size, out, self.size * 8)
        return list(out[0:n])

    def close(self) -> None:
        if not self.closed:
            unmap(self._base, self._map_size)
            self.closed = True

    def __enter__(self) -> "DirtyLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
