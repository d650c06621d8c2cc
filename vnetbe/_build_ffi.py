"""cffi builder (API mode, out of line) for the device library's C side: csrc/device only.

Each public header marks the part cffi must see between ``/* cffi:begin */`` and ``/* cffi:end */``;
this script gathers those parts, so a declaration is written once, in C. The tooling's extension
(vnetbe/tools/_build_ffi.py) includes this one, sharing its types.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from cffi import FFI

TOP = Path(__file__).resolve().parent.parent
DEVICE_SRC = TOP / "csrc" / "device"
# Headers whose types others use come first; any header not named here follows in name order.
FIRST = ["vnb_fault.h", "vnb_mem.h", "vnb_ring.h", "vnb_virtq.h", "vnb_net.h", "vnb_uapi.h"]

PRELUDE = """
struct iovec { void *iov_base; size_t iov_len; };
"""
CFLAGS = ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-D_GNU_SOURCE"]

_BLOCK = re.compile(r"/\* cffi:begin \*/(.*?)/\* cffi:end \*/", re.S)


def headers(src: Path, first: list[str]) -> list[Path]:
    """The public headers of src (``*_impl.h`` are internal to its C files), dependencies first."""
    found = sorted(p.name for p in src.glob("*.h") if not p.name.endswith("_impl.h"))
    return [src / h for h in [h for h in first if h in found] + [h for h in found if h not in first]]


def cdef(hdrs: list[Path], prelude: str = "") -> str:
    parts = [prelude]
    for h in hdrs:
        for block in _BLOCK.findall(h.read_text()):
            parts.append(f"/* {h.name} */\n{block}")
    return "\n".join(parts)


def rel(p: Path) -> str:
    """Paths relative to the project top, as setuptools wants them."""
    return os.path.relpath(p, TOP)


def extension_args(sources: list[Path], include_dirs: list[Path]) -> dict:
    return dict(sources=[rel(p) for p in sources], include_dirs=[rel(d) for d in include_dirs],
                extra_compile_args=CFLAGS, libraries=["pthread"])


_HEADERS = headers(DEVICE_SRC, FIRST)
ffibuilder = FFI()
ffibuilder.cdef(cdef(_HEADERS, PRELUDE))
ffibuilder.set_source(
    "vnetbe._vnetbe_c",
    "\n".join(f'#include "{h.name}"' for h in _HEADERS),
    **extension_args(sorted(DEVICE_SRC.glob("*.c")), [DEVICE_SRC]),
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
