"""cffi builder for the tooling's C side (csrc/tools: vnetbe's own guest driver, the AF_PACKET peer,
the cost loops). It includes the device library's ffi, so both share struct vnb_mem and the ring
types, and compiles the one GPA translation (csrc/device/vnb_mem.c) in for the driver's use."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from cffi import FFI

_here = Path(__file__).resolve().parent
# Loaded by path: importing the vnetbe package would need the extension this build makes.
_spec = importlib.util.spec_from_file_location("_vnb_device_build", _here.parent / "_build_ffi.py")
device = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(device)

TOOLS_SRC = device.TOP / "csrc" / "tools"
FIRST = ["vnb_driver.h"]

_HEADERS = device.headers(TOOLS_SRC, FIRST)
ffibuilder = FFI()
ffibuilder.include(device.ffibuilder)
ffibuilder.cdef(device.cdef(_HEADERS))
ffibuilder.set_source(
    "vnetbe.tools._vnetbe_tools_c",
    # The included ffi's declarations are checked here too: the device headers come first.
    "\n".join(f'#include "{h.name}"' for h in device.headers(device.DEVICE_SRC, device.FIRST) + _HEADERS),
    **device.extension_args(sorted(TOOLS_SRC.glob("*.c")) + [device.DEVICE_SRC / "vnb_mem.c"],
                            [TOOLS_SRC, device.DEVICE_SRC]),
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
