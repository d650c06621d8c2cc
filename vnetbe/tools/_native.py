"""The tooling's compiled C side (csrc/tools). It includes the device library's ffi, so its ``lib``
also reaches the device's functions and both share every type (struct vnb_mem, the rings)."""
from __future__ import annotations

from .._native import check
from ..errors import SetupError

try:
    from ._vnetbe_tools_c import ffi, lib  # type: ignore[import-not-found]
except ImportError as e:  # pragma: no cover - only on a broken install
    raise SetupError(
        f"vnetbe's tooling C extension is not built ({e}): install with 'pip install .' from the source tree"
    ) from None

__all__ = ["ffi", "lib", "check"]
