"""The compiled C side and the one place its status codes become exceptions."""
from __future__ import annotations

import errno as _errno

from .errors import KernelRefused, SetupError

try:
    from ._vnetbe_c import ffi, lib  # type: ignore[import-not-found]
except ImportError as e:  # pragma: no cover - only on a broken install
    raise SetupError(
        f"vnetbe's C extension is not built ({e}): install with 'pip install .' from the source tree"
    ) from None

__all__ = ["ffi", "lib", "check"]


def check(ret: int, call: str, hint: str = "") -> int:
    """Pass through a non-negative C return; turn -errno into KernelRefused naming the call."""
    if ret < 0:
        raise KernelRefused(call, -ret, hint)
    return ret


def strerror(code: int) -> str:
    return _errno.errorcode.get(code, str(code))
