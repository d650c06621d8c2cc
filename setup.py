# The C sides are compiled by cffi in API mode, out of line: the device library's extension from
# csrc/device, and the tooling's (guest driver, peer, cost loops) from csrc/tools.
from setuptools import setup

setup(cffi_modules=["vnetbe/_build_ffi.py:ffibuilder", "vnetbe/tools/_build_ffi.py:ffibuilder"])
