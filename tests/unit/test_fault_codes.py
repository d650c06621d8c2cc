"""Fault and drop names come from the C enums (vnetbe/faults.py); the exception classes are matched to
them by name. Pin every pairing by meaning, so a renamed or reordered member cannot report one fault
as another."""
from __future__ import annotations

import pytest

from vnetbe import errors, faults
from vnetbe.tools._native import ffi, lib

# C enum member -> (exception class, counter name in stats()["faults"])
BY_MEANING = {
    "VNB_FAULT_DESC_ADDR": (errors.DescriptorOutOfBounds, "desc_addr"),
    "VNB_FAULT_LOOP": (errors.ChainLoop, "loop"),
    "VNB_FAULT_NESTED_INDIRECT": (errors.NestedIndirect, "nested_indirect"),
    "VNB_FAULT_INDIRECT_LEN": (errors.IndirectLength, "indirect_len"),
    "VNB_FAULT_TX_WRITABLE": (errors.WritableInTx, "tx_writable"),
    "VNB_FAULT_AVAIL_IDX": (errors.AvailIndexJump, "avail_idx"),
    "VNB_FAULT_HEAD_RANGE": (errors.HeadOutOfRange, "head_range"),
    "VNB_FAULT_NEXT_RANGE": (errors.NextOutOfRange, "next_range"),
    "VNB_FAULT_ORDER": (errors.ReadableAfterWritable, "order"),
    "VNB_FAULT_CHAIN_TOO_LONG": (errors.ChainTooLong, "chain_too_long"),
    "VNB_FAULT_INDIRECT_NOT_NEGOTIATED": (errors.IndirectNotNegotiated, "indirect_not_negotiated"),
    "VNB_FAULT_RX_READABLE": (errors.ReadableInRx, "rx_readable"),
    "VNB_FAULT_RING_ADDR": (errors.RingOutOfBounds, "ring_addr"),
    "VNB_FAULT_INDIRECT_NEXT": (errors.IndirectWithNext, "indirect_next"),
    "VNB_FAULT_MEM_GONE": (errors.GuestMemoryGone, "mem_gone"),
    "VNB_FAULT_BUFFER_ID": (errors.BufferIdInvalid, "buffer_id"),
    "VNB_FAULT_CHAIN_FLAGS": (errors.ChainFlags, "chain_flags"),
}

DROPS = {
    "VNB_DROP_TX_SHORT": "tx_short",
    "VNB_DROP_TX_OVERSIZE": "tx_oversize",
    "VNB_DROP_TX_TAP_REFUSED": "tx_tap_refused",
    "VNB_DROP_TX_TAP_ERROR": "tx_tap_error",
    "VNB_DROP_RX_NO_BUFFER": "rx_no_buffer",
    "VNB_DROP_RX_TRUNCATED": "rx_truncated",
    "VNB_DROP_RX_STOPPED": "rx_stopped",
    "VNB_DROP_RX_TAP_ERROR": "rx_tap_error",
    "VNB_DROP_TX_DISABLED": "tx_disabled",
}


def c_enum(name: str) -> dict[str, int]:
    return dict(ffi.typeof(f"enum {name}").relements)


def test_every_c_fault_has_its_exception_and_counter_name():
    members = {k for k in c_enum("vnb_fault") if k not in ("VNB_FAULT_NONE", "VNB_FAULT_MAX")}
    assert members == set(BY_MEANING)
    assert sorted(c_enum("vnb_fault")[k] for k in members) == list(range(1, lib.VNB_FAULT_MAX))


@pytest.mark.parametrize("cname", sorted(BY_MEANING))
def test_c_fault_code_raises_the_exception_of_its_meaning(cname):
    cls, counter = BY_MEANING[cname]
    code = getattr(lib, cname)
    assert cls.code == code and faults.FAULTS[code] is cls
    assert faults.FAULT_NAMES[code] == counter == cls.name
    exc = faults.fault_from_code(code, 1)
    assert type(exc) is cls and exc.queue == 1 and isinstance(exc, errors.GuestFault)


def test_python_only_fault_codes_lie_above_every_c_code():
    codes = [c.code for c in faults.FAULTS.values()]
    assert len(codes) == len(set(codes))
    assert set(range(1, lib.VNB_FAULT_MAX)) <= set(codes)
    assert all(c >= 100 for c in set(codes) - set(range(1, lib.VNB_FAULT_MAX)))


def test_unknown_fault_code_still_raises_a_guest_fault():
    exc = faults.fault_from_code(9999, 0)
    assert isinstance(exc, errors.GuestFault) and "9999" in str(exc)


def test_drop_names_follow_the_enum_and_fill_the_stats_array():
    assert faults.FAULT_NAMES[lib.VNB_FAULT_NONE] == "none"
    drops = {k for k in c_enum("vnb_drop") if k != "VNB_DROP_MAX"}
    assert drops == set(DROPS)
    for cname, name in DROPS.items():
        assert faults.DROP_REASONS[getattr(lib, cname)] == name
    st = ffi.new("struct vnb_dp_stats *")
    assert len(st.faults) == len(faults.FAULT_NAMES) == lib.VNB_FAULT_MAX
    assert len(st.drops) == len(faults.DROP_REASONS) == lib.VNB_DROP_MAX
