"""cffi builder (API mode, out of line) for vnetbe's C side.

Each public header in csrc/ marks the part cffi must see between ``/* cffi:begin */`` and
``/* cffi:end */``; this script gathers those parts, so a declaration is written once, in C.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
CSRC = HERE.parent / "csrc"
# Headers whose types others use come first; any header not named here follows in name order.
FIRST = ["vnb_fault.h", "vnb_mem.h", "vnb_ring.h", "vnb_virtq.h", "vnb_net.h", "vnb_driver.h"]

PRELUDE = """
struct iovec { void *iov_base; size_t iov_len; };
"""

_BLOCK = re.compile(r"/\* cffi:begin \*/(.*?)/\* cffi:end \*/", re.S)


def _headers() -> list[Path]:
    found = sorted(p.name for p in CSRC.glob("*.h"))
    order = [h for h in FIRST if h in found] + [h for h in found if h not in FIRST]
    return [CSRC / h for h in order]


def _cdef() -> str:
    parts = [PRELUDE]
    for h in _headers():
        for block in _BLOCK.findall(h.read_text()):
            parts.append(f"/* {h.name} */\n{block}")
    return "\n".join(parts)


ffibuilder = FFI()
ffibuilder.cdef(_cdef())
ffibuilder.set_source(
    "vnetbe._vnetbe_c",
    "\n".join(f'#include "{h.name}"' for h in _headers()),
    sources=[os.path.relpath(p, HERE.parent) for p in sorted(CSRC.glob("*.c"))],
    include_dirs=[os.path.relpath(CSRC, HERE.parent)],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-D_GNU_SOURCE"],
    libraries=["pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
