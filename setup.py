# The C datapath is compiled by cffi in API mode, out of line: vnetbe/_build_ffi.py describes it.
from setuptools import setup

setup(cffi_modules=["vnetbe/_build_ffi.py:ffibuilder"])
