"""The fault and drop vocabularies, with one home: the C enums in csrc/device/vnb_fault.h.

Names are the enum members less their prefix, in lower case (VNB_DROP_TX_SHORT -> "tx_short"); the
GuestFault class of each fault is the one in vnetbe.errors with that name, and gets its code here.
"""
from __future__ import annotations

from . import errors
from ._native import ffi


def enum_names(enum: str, prefix: str) -> list[str]:
    """Member names indexed by value, without the trailing *_MAX; the values must run 0..MAX-1."""
    members = {v: k for k, v in ffi.typeof(f"enum {enum}").relements.items() if not k.endswith("_MAX")}
    assert sorted(members) == list(range(len(members))), f"enum {enum} has gaps"
    return [members[v][len(prefix):].lower() for v in range(len(members))]


FAULT_NAMES = enum_names("vnb_fault", "VNB_FAULT_")   # [0] is "none"
DROP_REASONS = enum_names("vnb_drop", "VNB_DROP_")


def _fault_classes() -> dict[int, type[errors.GuestFault]]:
    by_name = {c.name: c for c in vars(errors).values()
               if isinstance(c, type) and issubclass(c, errors.GuestFault) and c.name}
    table = {}
    for code, name in enumerate(FAULT_NAMES[1:], start=1):
        cls = by_name.get(name)
        if cls is None:
            raise ImportError(f"enum vnb_fault member {name!r} has no GuestFault class in vnetbe.errors")
        cls.code = code
        table[code] = cls
    table[errors.VhostFault.code] = errors.VhostFault
    return table


FAULTS: dict[int, type[errors.GuestFault]] = _fault_classes()


def fault_from_code(code: int, queue: int | None = None, detail: str = "") -> errors.GuestFault:
    cls = FAULTS.get(code)
    if cls is None:
        return errors.GuestFault(queue, f"unknown fault code {code}")
    return cls(queue, detail)
