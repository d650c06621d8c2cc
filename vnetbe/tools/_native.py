"""The tooling's compiled C side (csrc/tools). It includes the device library's ffi, so its ``lib``
also reaches the device's functions and both share every type (struct vnb_mem, the rings)."""
from __future__ import annotations

from .._native import check, load_extension

_ext = load_extension("vnetbe.tools._vnetbe_tools_c", "tooling C extension")
ffi, lib = _ext.ffi, _ext.lib

__all__ = ["ffi", "lib", "check"]
