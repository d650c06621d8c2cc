"""The request/response loops in C (vnb_peer_rr, vnb_raw_echo, vnb_guest_echo) over socketpairs: no root.

They carry the rr benchmark's latency figures, so they must answer every request with the right tag,
match replies by tag (not by arrival), and stop when told."""
from __future__ import annotations

import errno
import socket
import threading
import time

import pytest

from vnetbe.tools import packet
from vnetbe.tools._native import ffi, lib

from vnbtest.device import DeviceRig
from vnetbe.memory import GuestMemory

HDR = 12
A, B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"


@pytest.fixture
def pair():
    """A SEQPACKET socketpair standing in for a tap (one non-blocking end), closed after the test."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    b.setblocking(False)
    with a, b:
        yield a, b


def test_raw_echo_answers_every_request_with_its_tag_and_the_client_times_each(pair):
    client, server = pair
    stop = ffi.new("int *")
    reply = bytes(HDR) + packet.tagged_frame(0, 64, A, B, flow=7)
    est = ffi.new("struct vnb_rr_stats *")
    out = {}
    th = threading.Thread(target=lambda: out.update(n=lib.vnb_raw_echo(server.fileno(), reply, len(reply), HDR,
                                                                       HDR + 14, 1 << 40, 2000, stop, est)))
    th.start()
    try:
        req = bytes(HDR) + packet.tagged_frame(0, 64, B, A, flow=7)
        count = 500
        rtt = ffi.new("int64_t[]", count)
        st = ffi.new("struct vnb_rr_stats *")
        assert lib.vnb_peer_rr(client.fileno(), req, len(req), HDR, HDR + 14, count, 2000, rtt, st) == count
        assert st.err == 0 and st.done == count and all(rtt[i] > 0 for i in range(count))
    finally:
        stop[0] = 1
        th.join(5)
    assert not th.is_alive() and out["n"] == count and est.done == count and est.err == 0


def test_rr_client_skips_stray_frames_and_reports_a_missing_reply(pair):
    client, server = pair
    req = bytes(HDR) + packet.tagged_frame(0, 64, B, A)
    # A stale reply (tag 5) and an untagged frame are waiting: neither may count as the reply to 0.
    stale = bytearray(req)
    stale[HDR + 14:HDR + 18] = (5).to_bytes(4, "big")
    server.send(bytes(stale))
    server.send(bytes(HDR) + b"\xff" * 60)
    rtt = ffi.new("int64_t[]", 1)
    st = ffi.new("struct vnb_rr_stats *")
    t0 = time.monotonic()
    assert lib.vnb_peer_rr(client.fileno(), req, len(req), HDR, HDR + 14, 1, 200, rtt, st) == 0
    assert st.err == errno.ETIMEDOUT and 0.15 < time.monotonic() - t0 < 2.0   # after ~200 ms
    assert server.recv(256) == req                                    # the request did go out


def test_guest_echo_answers_through_the_device_byte_exact_and_stops_on_request():
    rig = DeviceRig(GuestMemory(16 << 20), queue_size=64)
    stop = ffi.new("int *")
    reply = packet.tagged_frame(0, 100, A, B, flow=3)
    out = {}
    th = threading.Thread(target=lambda: out.update(n=rig.guest.echo(reply, stop=stop, idle=5.0)))
    th.start()
    try:
        for seq in (0, 1, 0xDEADBEEF):
            rig.link.inject(packet.tagged_frame(seq, 80, B, A, flow=3))
            got = rig.link.sent(timeout=2.0)
            want = bytearray(reply)
            want[14:18] = seq.to_bytes(4, "big")       # the template with the request's tag, nothing else
            assert got is not None and got[HDR:] == want
        rig.link.inject(b"\x01" * 60)                 # not a tagged frame: no answer
        assert rig.link.sent(timeout=0.2) is None
    finally:
        stop[0] = 1
        th.join(5)
    try:
        assert not th.is_alive() and out["n"] == 3
    finally:
        rig.close()
