"""The compiled C side and the one place its status codes become exceptions."""
from __future__ import annotations

import importlib

from .errors import KernelRefused, SetupError


def load_extension(module: str, what: str):
    """Import a compiled cffi module of vnetbe; a missing build is a one-line SetupError."""
    try:
        return importlib.import_module(module)
    except ImportError as e:  # pragma: no cover - only on a broken install
        raise SetupError(f"vnetbe's {what} is not built ({e}): install with 'pip install .' from the "
                         "source tree") from None


_ext = load_extension("vnetbe._vnetbe_c", "C extension")
ffi, lib = _ext.ffi, _ext.lib

__all__ = ["ffi", "lib", "check", "load_extension"]


def check(ret: int, call: str, hint: str = "") -> int:
    """Pass through a non-negative C return; turn -errno into KernelRefused naming the call."""
    if ret < 0:
        raise KernelRefused(call, -ret, hint)
    return ret
