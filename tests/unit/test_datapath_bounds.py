"""However a guest builds its rings, the datapath thread hears a stop request within a bounded time,
and a link that fails for good stops the device with LinkGone instead of spinning its thread."""
from __future__ import annotations

import errno
import os
import time

import pytest

from vnetbe import errors, spec
from vnetbe.tools._native import ffi, lib
from vnetbe.memory import GuestMemory

from vnbtest.device import DeviceRig
from vnbtest.rings import F_INDIRECT, F_NEXT, pack_desc
from vnbtest.wait import wait_for

RX, TX = spec.RX_QUEUE, spec.TX_QUEUE
QSIZE = 32768
MB = 1 << 20
STOP_BOUND_S = 0.1


def _post_longest_chains(rig):
    """Fill the TX ring with the longest chains allowed: every avail entry names head 0, a chain of
    QSIZE zero-length ring descriptors whose last is an indirect table of VNB_MAX_INDIRECT
    zero-length entries. Each pop walks VNB_MAX_CHAIN_DESC descriptors and yields an empty chain
    (dropped as short), so a ring of them is seconds of work."""
    num, desc, avail, _ = rig.guest.rings[TX]
    assert num == QSIZE
    buf = rig.mem.alloc(4096)
    entries = lib.VNB_MAX_INDIRECT
    table = rig.mem.alloc(16 * entries, 16)
    rig.mem.write(table, b"".join(pack_desc(buf, 0, F_NEXT, k + 1) for k in range(entries - 1)) + pack_desc(buf, 0))
    rig.mem.write(desc, b"".join(pack_desc(buf, 0, F_NEXT, k + 1) for k in range(num - 1))
                  + pack_desc(table, 16 * entries, F_INDIRECT))
    rig.mem.write(avail + 4, bytes(2 * num))                       # every entry: head 0
    idx = int.from_bytes(rig.mem.read(avail + 2, 2), "little")
    rig.mem.write(avail + 2, ((idx + num) & 0xFFFF).to_bytes(2, "little"))
    os.eventfd_write(rig.guest.kick_fd[TX], 1)


@pytest.fixture
def big_rig():
    # The guest driver reserves a 64 KiB TX buffer per slot: 2 GiB of sparse, untouched memfd.
    r = DeviceRig(GuestMemory(2200 * MB), queue_size=QSIZE, rx_queue_size=256)
    yield r
    r.close()


def test_stop_is_heard_within_the_bound_while_a_hostile_guest_is_serviced(big_rig):
    rig = big_rig
    _post_longest_chains(rig)
    # The thread is deep in the hostile ring: it has dropped some chains and has many to go.
    assert wait_for(lambda: rig.dev.stats()["drops"]["tx_short"] >= 16, timeout=10)
    t0 = time.monotonic()
    rig.dev.stop()
    took = time.monotonic() - t0
    dropped = rig.dev.stats()["drops"]["tx_short"]
    assert dropped < QSIZE, "the ring was drained before the stop: this tested nothing"
    print(f"stop heard in {took * 1000:.2f} ms with a hostile ring being serviced ({dropped} chains dropped)")
    assert took < STOP_BOUND_S, f"stop took {took * 1000:.1f} ms with a hostile ring being serviced"
    assert rig.dev.stats()["faults"] == {}   # long chains are legal: work, not a fault


def test_hostile_ring_does_not_starve_the_other_queue(big_rig):
    rig = big_rig
    _post_longest_chains(rig)
    assert wait_for(lambda: rig.dev.stats()["drops"]["tx_short"] >= 16, timeout=10)
    frame = bytes(range(256)) * 4
    t0 = time.monotonic()
    rig.link.inject(frame)
    assert rig.guest.receive(timeout=2.0) == frame
    assert time.monotonic() - t0 < 1.0
    assert rig.dev.stats()["drops"]["tx_short"] < QSIZE


@pytest.fixture
def rig():
    r = DeviceRig(GuestMemory(64 * MB), queue_size=256)
    yield r
    r.close()


def test_a_link_that_hangs_up_stops_the_device_with_link_gone_and_no_spinning(rig):
    frame = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + b"x" * 50
    rig.guest.send(frame)
    assert rig.link.sent(timeout=2.0)[12:] == frame
    rig.link.peer.close()                       # the "tap" fails for good (POLLHUP), as a deleted tun does
    err = rig.dev.wait_fault(2.0)
    assert isinstance(err, errors.LinkGone) and "hang-up" in str(err), err
    with pytest.raises(errors.LinkGone):
        rig.dev.check()
    assert rig.dev.status & spec.DEVICE_NEEDS_RESET
    # End of file is the hang-up itself, not an empty frame to drop and read again (that spun RX,
    # millions of reads, until epoll's EPOLLHUP got a turn).
    assert rig.dev.stats()["drops"]["rx_truncated"] <= 1
    # Kicks still wake the thread; nothing else may (a level-triggered HUP would, without end). The
    # fault is reported at the first read that met the end of file: let the rest of that read batch
    # (uring: up to its size, a poll(0) each) finish before counting.
    time.sleep(0.05)
    s0 = rig.dev.stats()["syscalls"]
    time.sleep(0.2)
    assert rig.dev.stats()["syscalls"] - s0 < 5
    rig.guest.send(frame)                       # a TX kick is a few system calls, then quiet again
    time.sleep(0.1)
    assert rig.dev.stats()["syscalls"] - s0 < 10
    assert rig.dev.threads()                    # the thread lives and answers a stop
    rig.dev.close()
    assert not rig.dev.threads()


def test_a_refused_queue_is_not_left_configured_for_start():
    # vnb_dp_set_queue zeroes the queue before checking it; a failure must not leave it marked
    # configured, or a start would run the thread over NULL rings.
    with GuestMemory(1 * MB) as mem:
        dp = ffi.gc(lib.vnb_dp_new(), lib.vnb_dp_free)
        assert lib.vnb_dp_set_mem(dp, mem.table) == 0
        assert lib.vnb_dp_set_queue(dp, TX, 8, 0x0, 0x1000, 0x2000, -1, -1, 0, 0) == 0
        assert lib.vnb_dp_set_queue(dp, TX, 8, 1 << 40, 0x1000, 0x2000, -1, -1, 0, 0) < 0
        assert lib.vnb_dp_set_tap(dp, 0) == 0
        assert lib.vnb_dp_start(dp) == -errno.EINVAL     # no queue left to run
        assert not lib.vnb_dp_running(dp)


def test_mergeable_buffers_with_the_legacy_header_are_refused():
    dp = ffi.gc(lib.vnb_dp_new(), lib.vnb_dp_free)
    assert lib.vnb_dp_set_features(dp, lib.VNB_F_MRG_RXBUF, spec.NET_HDR_LEN_LEGACY) == -errno.EINVAL
    assert lib.vnb_dp_set_features(dp, lib.VNB_F_MRG_RXBUF, spec.NET_HDR_LEN) == 0
