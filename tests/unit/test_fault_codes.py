"""The fault and drop vocabularies are written three times (C enums, Python exceptions, datapath counter
names); a mismatch would report one fault as another, so pin every pairing by meaning."""
from __future__ import annotations

import pytest

from vnetbe import errors
from vnetbe._native import ffi, lib
from vnetbe.datapath import user

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
    "VNB_FAULT_INDIRECT_NOT_NEG": (errors.IndirectNotNegotiated, "indirect_not_negotiated"),
    "VNB_FAULT_RX_READABLE": (errors.ReadableInRx, "rx_readable"),
    "VNB_FAULT_RING_ADDR": (errors.RingOutOfBounds, "ring_addr"),
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
}


def c_enum(name: str) -> dict[str, int]:
    return dict(ffi.typeof(f"enum {name}").relements)


def test_every_c_fault_is_mapped_here_and_nothing_else():
    faults = {k: v for k, v in c_enum("vnb_fault").items() if k not in ("VNB_FAULT_NONE", "VNB_FAULT_MAX")}
    assert set(faults) == set(BY_MEANING)
    assert c_enum("vnb_fault")["VNB_FAULT_NONE"] == 0
    assert sorted(faults.values()) == list(range(1, lib.VNB_FAULT_MAX))


@pytest.mark.parametrize("cname", sorted(BY_MEANING))
def test_c_fault_code_equals_python_exception_code(cname):
    cls, _ = BY_MEANING[cname]
    code = getattr(lib, cname)
    assert cls.code == code
    assert errors.FAULTS[code] is cls
    exc = errors.fault_from_code(code, 1)
    assert type(exc) is cls and exc.queue == 1 and isinstance(exc, errors.GuestFault)


@pytest.mark.parametrize("cname", sorted(BY_MEANING))
def test_datapath_fault_counter_name_matches_the_enum(cname):
    _, counter = BY_MEANING[cname]
    assert user.FAULT_NAMES[getattr(lib, cname)] == counter


def test_python_fault_codes_are_unique_and_cover_the_c_range():
    codes = [c.code for c in errors.FAULTS.values()]
    assert len(codes) == len(set(codes))
    c_codes = set(range(1, lib.VNB_FAULT_MAX))
    assert c_codes <= set(codes)
    # Codes only Python knows (vhost's ERR eventfd) must not collide with a future C code.
    assert all(c >= 100 for c in set(codes) - c_codes)


def test_unknown_fault_code_still_raises_a_guest_fault():
    exc = errors.fault_from_code(9999, 0)
    assert isinstance(exc, errors.GuestFault) and "9999" in str(exc)


def test_fault_and_drop_name_lists_line_up_with_the_enums_and_the_stats_arrays():
    assert len(user.FAULT_NAMES) == lib.VNB_FAULT_MAX
    assert user.FAULT_NAMES[lib.VNB_FAULT_NONE] == "none"
    drops = {k: v for k, v in c_enum("vnb_drop").items() if k != "VNB_DROP_MAX"}
    assert set(drops) == set(DROPS)
    assert len(user.DROP_REASONS) == lib.VNB_DROP_MAX
    for cname, name in DROPS.items():
        assert user.DROP_REASONS[getattr(lib, cname)] == name
    # struct vnb_dp_stats spells the array sizes as literals (cffi cannot see the enum there).
    st = ffi.new("struct vnb_dp_stats *")
    assert len(st.faults) == lib.VNB_FAULT_MAX
    assert len(st.drops) == lib.VNB_DROP_MAX

