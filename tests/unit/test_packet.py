"""vnetbe.tools.packet (frames, checksums, parsing, tagged frames) and the C side of the peer that needs no
root: the tagged-frame builder/checker (which must match packet.py byte for byte) and the send /
receive / raw loops driven over AF_UNIX socket pairs and pipes."""
from __future__ import annotations

import errno
import os
import random
import socket
import struct
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vnetbe.tools import packet as P

DST = P.mac("02:00:00:00:00:02")
SRC = P.mac("02:00:00:00:00:01")


def ref_csum(data: bytes) -> int:
    """Straightforward RFC 1071 reference: 16-bit big-endian words, end-around carry, complement."""
    if len(data) % 2:
        data += b"\0"
    s = 0
    for i in range(0, len(data), 2):
        s += (data[i] << 8) | data[i + 1]
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


# ------------------------------------------------------------------------------------- checksums


def test_rfc1071_example():
    # RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert P.ones_sum(data) == 0xDDF2
    assert P.internet_checksum(data) == 0x220D == ref_csum(data)


def test_ipv4_header_known_vector():
    # The classic example header (192.168.0.1 -> 192.168.0.199, UDP, total length 0x73): b861.
    hdr = P.ipv4_header("192.168.0.1", "192.168.0.199", P.IPPROTO_UDP, 0x73 - 20)
    assert hdr.hex() == "45000073000040004011b861c0a80001c0a800c7"
    assert P.ipv4_header_ok(b"\0" * 14 + hdr)


def test_tcp_ipv4_known_vector():
    # SYN 10.0.0.1:12345 -> 10.0.0.2:80, seq 1, window 65535, no options.  Worked by hand:
    #   IP : 4500+0028+0000+4000+4006+0a00+0001+0a00+0002 = d931 -> checksum 26ce
    #   TCP: pseudo 0a00+0001+0a00+0002+0006+0014 = 141d; header 3039+0050+0001+5002+ffff
    #        = 808c (after the end-around carry); 808c+141d = 94a9 -> checksum 6b56
    # (tests/e2e/test_peer.py has the Linux stack answer frames from this builder.)
    f = P.tcp_ipv4_frame(DST, SRC, "10.0.0.1", "10.0.0.2", 12345, 80, seq=1, flags=P.TCP_SYN)
    assert f.hex() == ("020000000002" "020000000001" "0800"
                       "45000028000040004006" "26ce" "0a000001" "0a000002"
                       "30390050" "00000001" "00000000" "5002ffff" "6b56" "0000")
    assert P.checksums_ok(f)


@given(st.binary(max_size=3000), st.integers(0, 0xFFFF))
def test_checksum_matches_reference(data, initial):
    assert P.internet_checksum(data) == ref_csum(data)
    # Chaining: a sum started from `initial` equals the sum over the concatenation.
    assert P.internet_checksum(data, initial) == ref_csum(initial.to_bytes(2, "big") + data)


def test_checksum_large_buffer():
    data = os.urandom(65536 + 3)
    assert P.internet_checksum(data) == ref_csum(data)


def _frames_for(payload: bytes, sport=4000, dport=5001):
    return {
        "tcp4": P.tcp_ipv4_frame(DST, SRC, "10.1.2.3", "10.4.5.6", sport, dport, payload, seq=7, ack=9),
        "udp4": P.udp_ipv4_frame(DST, SRC, "10.1.2.3", "10.4.5.6", sport, dport, payload),
        "tcp6": P.tcp_ipv6_frame(DST, SRC, "fd00::1", "fd00::2:3", sport, dport, payload, seq=7),
        "udp6": P.udp_ipv6_frame(DST, SRC, "fd00::1", "fd00::2:3", sport, dport, payload),
    }


@given(st.binary(max_size=1600))
def test_builders_checksums_verify_independently(payload):
    for kind, f in _frames_for(payload).items():
        assert P.checksums_ok(f), kind
        l3 = P.parse_l3(f)
        seg = f[l3.l4_offset:]
        pseudo = (P.pseudo_header_v4 if l3.version == 4 else P.pseudo_header_v6)(
            l3.src, l3.dst, l3.proto, len(seg))
        # The reference over pseudo-header + segment (checksum field included) gives 0.
        assert ref_csum(pseudo + seg) == 0, kind


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=1, max_size=300), st.data())
def test_any_flipped_byte_breaks_a_checksum(payload, data):
    for kind, f in _frames_for(payload).items():
        l3 = P.parse_l3(f)
        # From the IP source address on, every byte is covered by some checksum.
        first = l3.offset + (12 if l3.version == 4 else 8)
        i = data.draw(st.integers(first, len(f) - 1))
        x = data.draw(st.integers(1, 255))
        bad = bytearray(f)
        bad[i] ^= x
        assert not P.checksums_ok(bad), (kind, i, x)


def test_udp_zero_checksum_goes_out_as_ffff():
    # Choose two payload bytes that make the computed checksum 0: RFC 768 sends it as ffff.
    pseudo = P.pseudo_header_v4("10.0.0.1", "10.0.0.2", P.IPPROTO_UDP, 10)
    s = P.ones_sum(pseudo + struct.pack("!HHHH", 1, 2, 10, 0) + b"\0\0")
    payload = (~s & 0xFFFF).to_bytes(2, "big")
    f = P.udp_ipv4_frame(DST, SRC, "10.0.0.1", "10.0.0.2", 1, 2, payload)
    assert f[40:42] == b"\xff\xff"
    assert P.l4_checksum_ok(f)
    zero = f[:40] + b"\0\0" + f[42:]
    assert P.l4_checksum_ok(zero) and not P.l4_checksum_ok(zero, udp_zero_ok=False)


def test_partial_checksum_frame():
    payload = bytes(range(256)) * 4
    frame, start, off = P.tcp_ipv4_frame_partial(DST, SRC, "10.1.1.1", "10.2.2.2", 1234, 80, payload,
                                                 seq=100, ack=5)
    full = P.tcp_ipv4_frame(DST, SRC, "10.1.1.1", "10.2.2.2", 1234, 80, payload, seq=100, ack=5)
    assert (start, off) == (34, 16)
    assert len(frame) == len(full) and frame[:start + off] == full[:start + off]
    assert frame[start + off + 2:] == full[start + off + 2:]
    # The field holds the folded pseudo-header sum, uncomplemented (what Linux guests leave there).
    seg_len = len(frame) - start
    pseudo = P.pseudo_header_v4("10.1.1.1", "10.2.2.2", 6, seg_len)
    assert struct.unpack_from("!H", frame, start + off)[0] == P.ones_sum(pseudo)
    assert P.ipv4_header_ok(frame) and not P.l4_checksum_ok(frame)
    assert P.complete_partial_csum(frame, start, off) == full


def test_padded_frame_parses_by_ip_length():
    f = P.tcp_ipv4_frame(DST, SRC, "10.0.0.1", "10.0.0.2", 1, 2, b"ab", seq=5)
    padded = f + b"\0" * (60 - len(f))
    assert len(padded) == 60
    seg = P.parse_tcp(padded)
    assert seg.payload == b"ab" and seg.seq == 5 and seg.end == 7
    assert P.checksums_ok(padded)


def test_raw_frame_sizes():
    for size in (60, 64, 1514, 9014, P.MAX_FRAME):
        f = P.raw_frame(size, DST, SRC)
        assert len(f) == size and f[12:14] == b"\x88\xb6"
    assert P.raw_frame(100, seed=1) != P.raw_frame(100, seed=2)
    with pytest.raises(ValueError):
        P.raw_frame(P.MAX_FRAME + 1)


# ---------------------------------------------------------------------------- TCP reassembly


def _segments(stream: bytes, isn: int, mss: int):
    out = []
    for off in range(0, len(stream), mss):
        out.append(P.tcp_ipv4_frame(DST, SRC, "10.0.0.1", "10.0.0.2", 5000, 6000,
                                    stream[off:off + mss], seq=(isn + off) & 0xFFFFFFFF,
                                    ident=off // mss))
    return out


@pytest.mark.parametrize("isn", [0, 123456789, 0xFFFFFFFF - 30000])   # the last one wraps
def test_reassemble_tso_like_stream(isn):
    stream = P.pattern(60000, seed=isn & 0xFFFF)
    frames = _segments(stream, isn, 1448)
    rnd = random.Random(isn)
    shuffled = frames + rnd.sample(frames, 5)     # reordered, with duplicates
    rnd.shuffle(shuffled)
    assert P.reassemble_tcp(shuffled, isn) == stream
    assert P.reassemble_tcp(shuffled) == stream
    segs = [P.parse_tcp(f) for f in frames]
    assert [s.ip_id for s in segs] == list(range(len(frames)))
    assert all(P.checksums_ok(f) for f in frames)


def test_reassemble_reports_holes_and_conflicts():
    stream = P.pattern(5000)
    frames = _segments(stream, 1000, 1000)
    with pytest.raises(ValueError, match="hole"):
        P.reassemble_tcp(frames[:2] + frames[3:], 1000)
    evil = P.tcp_ipv4_frame(DST, SRC, "10.0.0.1", "10.0.0.2", 5000, 6000, b"X" * 10, seq=1500)
    with pytest.raises(ValueError, match="disagree"):
        P.reassemble_tcp(frames + [evil], 1000)
    assert P.reassemble_tcp([]) == b""


def test_parse_tcp_rejects_non_tcp():
    assert P.parse_tcp(P.udp_ipv4_frame(DST, SRC, "1.1.1.1", "2.2.2.2", 1, 2, b"x")) is None
    assert P.parse_tcp(P.tagged_frame(1, 60, DST, SRC)) is None
    assert P.parse_tcp(b"\0" * 10) is None


# ------------------------------------------------------------------------------ tagged frames


@pytest.mark.parametrize("size", [22, 23, 25, 60, 61, 1514, 9014, 65549])
def test_tagged_round_trip(size):
    for seq in (0, 1, 0x7FFFFFFF, 0xFFFFFFFF):
        f = P.tagged_frame(seq, size, DST, SRC, flow=0xABCD)
        assert len(f) == size
        assert f[:12] == DST + SRC and f[12:14] == b"\x88\xb5"
        assert struct.unpack_from("!II", f, 14) == (seq, 0xABCD)
        assert P.check_tagged(f) == (True, seq, 0xABCD)


def test_tagged_payload_depends_on_seq_and_size():
    a = P.tagged_frame(1, 200, DST, SRC)
    assert a[22:] != P.tagged_frame(2, 200, DST, SRC)[22:]
    # Cut or padded frames fail: the size is part of the payload function.
    assert not P.check_tagged(a[:-1])[0]
    assert not P.check_tagged(a + b"\0")[0]
    assert P.check_tagged(a[:-1])[1] == 1


def test_check_tagged_rejects_untagged():
    assert P.check_tagged(b"") == (False, -1, -1)
    assert P.check_tagged(P.tagged_frame(1, 60, DST, SRC)[:21]) == (False, -1, -1)
    assert P.check_tagged(P.raw_frame(60, DST, SRC)) == (False, -1, -1)
    with pytest.raises(ValueError):
        P.tagged_frame(0, 21, DST, SRC)


def test_seq_is_protected_from_26_bytes_on():
    # The first payload word is `base`, a bijection of seq for a given size: from 4 payload bytes on,
    # any other seq changes it.  A 22-byte frame has no payload and cannot protect its seq.
    f = bytearray(P.tagged_frame(5, 22, DST, SRC))
    f[17] ^= 1
    assert P.check_tagged(f) == (True, 4, 0)
    for seq in range(0, 1 << 16):
        g = bytearray(P.tagged_frame(0, 26, DST, SRC))
        struct.pack_into("!I", g, 14, seq)
        assert P.check_tagged(g)[0] == (seq == 0)


@settings(max_examples=300)
@given(seq=st.integers(0, 0xFFFFFFFF), size=st.integers(26, 2000), flow=st.integers(0, 0xFFFFFFFF),
       data=st.data())
def test_single_flipped_byte_is_detected(seq, size, flow, data):
    f = P.tagged_frame(seq, size, DST, SRC, flow)
    # Bytes 0..11 are the MACs: the network checks those (the frame goes elsewhere), not the tag.
    i = data.draw(st.integers(12, size - 1), label="index")
    x = data.draw(st.integers(1, 255), label="xor")
    bad = bytearray(f)
    bad[i] ^= x
    # A flip in the flow id leaves a well-formed frame of *another* flow: a receiver filtering on
    # flow drops it and counts this one missing.  Everywhere else the frame no longer checks.
    assert P.check_tagged(bad) != (True, seq, flow)
    if not 18 <= i < 22:
        assert not P.check_tagged(bad)[0]
    c = _c()
    if c is not None:
        ffi, lib = c
        s, fl = ffi.new("uint32_t *"), ffi.new("uint32_t *")
        r = lib.vnb_peer_check_tagged(bytes(bad), len(bad), s, fl)
        assert r != 1 or (s[0], fl[0]) != (seq, flow)
        assert (r == 1) == P.check_tagged(bad)[0]


# ------------------------------------------------------------------------------- the C side

_C = None


def _c():
    global _C
    if _C is None:
        from vnetbe.tools._native import ffi, lib
        _C = (ffi, lib)
    return _C


@pytest.fixture
def c():
    return _c()


def _c_frame(c, seq, size, flow=0, dst=DST, src=SRC):
    ffi, lib = c
    buf = ffi.new("uint8_t[]", size)
    lib.vnb_peer_fill_tagged(buf, dst, src, flow, seq, size)
    return bytes(buf)


def test_c_constants_match(c):
    _, lib = c
    assert lib.VNB_TAG_ETHERTYPE == P.TAG_ETHERTYPE
    assert lib.VNB_TAG_HDR_LEN == P.TAG_HDR_LEN
    assert lib.VNB_TAG_MAX_SIZE == P.TAG_MAX_SIZE


@pytest.mark.parametrize("size", [22, 23, 24, 25, 26, 60, 1514, 9014, 65549])
def test_c_fill_equals_python(c, size):
    for seq in (0, 1, 2, 0xFFFFFFFE, 0xFFFFFFFF, 0x12345678):
        assert _c_frame(c, seq, size, flow=77) == P.tagged_frame(seq, size, DST, SRC, flow=77)


@given(seq=st.integers(0, 0xFFFFFFFF), size=st.integers(22, 4000), flow=st.integers(0, 0xFFFFFFFF),
       dst=st.binary(min_size=6, max_size=6), src=st.binary(min_size=6, max_size=6))
def test_c_fill_equals_python_property(seq, size, flow, dst, src):
    assert _c_frame(_c(), seq, size, flow, dst, src) == P.tagged_frame(seq, size, dst, src, flow)


def test_c_check(c):
    ffi, lib = c
    f = P.tagged_frame(42, 100, DST, SRC, flow=3)
    s, fl = ffi.new("uint32_t *"), ffi.new("uint32_t *")
    assert lib.vnb_peer_check_tagged(f, len(f), s, fl) == 1 and (s[0], fl[0]) == (42, 3)
    assert lib.vnb_peer_check_tagged(f[:-1], len(f) - 1, s, fl) == 0
    assert lib.vnb_peer_check_tagged(f, 21, s, fl) == -1
    raw = P.raw_frame(100, DST, SRC)
    assert lib.vnb_peer_check_tagged(raw, len(raw), ffi.NULL, ffi.NULL) == -1


# The send/receive loops need an fd, not an AF_PACKET socket in particular: a datagram socket pair
# keeps frame boundaries, so the accounting can be tested without root.  PACKET_STATISTICS is
# simply not available there (the tp_* counters stay 0).


@pytest.fixture
def dgram_pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    yield a, b
    a.close()
    b.close()


def _recv(c, fd, expect, timeout_ms=200, flow=0, stats=None):
    ffi, lib = c
    stats = stats if stats is not None else ffi.new("struct vnb_peer_rx_stats *")
    got = lib.vnb_peer_recv_tagged(fd, stats, expect, timeout_ms, flow)
    return got, stats


def test_c_send_then_recv_over_socketpair(c, dgram_pair):
    ffi, lib = c
    a, b = dgram_pair
    tx = ffi.new("struct vnb_peer_tx_stats *")
    res = {}
    t = threading.Thread(target=lambda: res.update(r=_recv(c, b.fileno(), 5000, 2000, flow=9)))
    t.start()
    n = lib.vnb_peer_send_tagged(a.fileno(), DST, SRC, 9, 0xFFFFFF00, 5000, 128, 0, tx)
    t.join()
    assert n == 5000 and tx.sent == 5000 and tx.next_seq == (0xFFFFFF00 + 5000) & 0xFFFFFFFF
    assert tx.bytes == 5000 * 128 and tx.err == 0
    got, s = res["r"]
    assert got == 5000
    assert (s.received, s.bad, s.out_of_order, s.duplicates, s.missing) == (5000, 0, 0, 0, 0)
    assert s.first_seq == 0xFFFFFF00 and s.last_seq == s.max_seq == 0xFFFFFF00 + 4999 - 2**32
    assert s.bytes == 5000 * 128


def test_c_sender_output_equals_python(c, dgram_pair):
    _, lib = c
    a, b = dgram_pair
    assert lib.vnb_peer_send_tagged(a.fileno(), DST, SRC, 5, 10, 3, 333, 0, _c()[0].NULL) == 3
    for seq in (10, 11, 12):
        assert b.recv(4096) == P.tagged_frame(seq, 333, DST, SRC, 5)


def test_c_sender_rejects_bad_size(c, dgram_pair):
    _, lib = c
    a, _ = dgram_pair
    assert lib.vnb_peer_send_tagged(a.fileno(), DST, SRC, 0, 0, 1, 21, 0, _c()[0].NULL) == -errno.EINVAL
    assert lib.vnb_peer_send_tagged(-1, DST, SRC, 0, 0, 1, 60, 0, _c()[0].NULL) == -errno.EBADF


def test_c_sender_pacing(c, dgram_pair):
    ffi, lib = c
    a, _ = dgram_pair
    tx = ffi.new("struct vnb_peer_tx_stats *")
    assert lib.vnb_peer_send_tagged(a.fileno(), DST, SRC, 0, 0, 200, 60, 100_000, tx) == 200
    # 199 gaps of 100 us: the last frame may not go before 19.9 ms.
    assert 0.0199 <= tx.elapsed_ns / 1e9 < 0.5


def test_c_receiver_accounting(c, dgram_pair):
    ffi, lib = c
    a, b = dgram_pair
    order = [0, 1, 2, 5, 3, 3, 7, 6, 6]       # 4 never comes
    for s in order:
        a.send(P.tagged_frame(s, 64, DST, SRC, flow=1))
    a.send(P.tagged_frame(100, 64, DST, SRC, flow=2))      # other flow: ignored
    a.send(P.raw_frame(64, DST, SRC))                      # not tagged: ignored
    damaged = bytearray(P.tagged_frame(8, 64, DST, SRC, flow=1))
    damaged[40] ^= 1
    a.send(bytes(damaged))
    got, s = _recv(c, b.fileno(), 0, 100, flow=1)
    assert got == len(order) + 1
    assert s.received == len(order) + 1 and s.bad == 1 and s.ignored == 2
    assert s.out_of_order == 2      # 3 after 5, 6 after 7
    assert s.duplicates == 2        # the second 3 and the second 6
    assert s.missing == 1           # 4
    assert (s.first_seq, s.last_seq, s.max_seq, s.seen_any) == (0, 6, 7, 1)
    # Accounting continues across calls on the same struct.
    a.send(P.tagged_frame(4, 64, DST, SRC, flow=1))
    got, s = _recv(c, b.fileno(), 0, 100, flow=1, stats=s)
    assert got == 1 and s.missing == 0 and s.out_of_order == 3


def test_c_receiver_stops_at_expect_and_leaves_the_rest(c, dgram_pair):
    a, b = dgram_pair
    for s in range(10):
        a.send(P.tagged_frame(s, 60, DST, SRC))
    got, st_ = _recv(c, b.fileno(), 4)
    assert got == 4 and st_.last_seq == 3
    got, st_ = _recv(c, b.fileno(), 100, 50, stats=st_)
    assert got == 6 and st_.last_seq == 9 and st_.missing == 0 and st_.received == 10


def test_c_receiver_window_and_big_jumps(c, dgram_pair):
    a, b = dgram_pair
    for s in (0, 70000, 70000, 1):   # jump past the window; 1 is older than the window
        a.send(P.tagged_frame(s, 60, DST, SRC))
    got, s = _recv(c, b.fileno(), 4)
    assert got == 4 and s.duplicates == 1 and s.out_of_order == 1 and s.missing == 69998


def test_c_receiver_truncated_frame(c, dgram_pair):
    a, b = dgram_pair
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    a.send(P.tagged_frame(1, 70000, DST, SRC))     # above the receiver's 64.5 KiB buffer
    got, s = _recv(c, b.fileno(), 1)
    assert got == 1 and s.truncated == 1 and s.bad == 1 and s.bytes == 70000


def test_c_receiver_timeout(c, dgram_pair):
    import time
    _, b = dgram_pair
    t = time.monotonic()
    got, s = _recv(c, b.fileno(), 10, 100)
    assert got == 0 and s.received == 0 and 0.09 < time.monotonic() - t < 2


def test_c_raw_loops_over_socketpair(c, dgram_pair):
    ffi, lib = c
    a, b = dgram_pair
    a.setblocking(False)
    b.setblocking(False)
    frame = bytes(12) + P.tagged_frame(3, 60, DST, SRC)
    res = {}
    rst = ffi.new("struct vnb_raw_stats *")
    buf = ffi.new("uint8_t[2048]")

    def reader():
        res["n"] = lib.vnb_raw_read_loop_ex(b.fileno(), buf, 2048, 20000, 1000, rst)

    t = threading.Thread(target=reader)
    t.start()
    wst = ffi.new("struct vnb_raw_stats *")
    assert lib.vnb_raw_write_loop_ex(a.fileno(), frame, len(frame), 20000, wst) == 20000
    t.join()
    assert res["n"] == 20000 and rst.bytes == 20000 * len(frame) and rst.err == 0
    assert bytes(buf[0:len(frame)]) == frame
    assert wst.done == 20000 and wst.err == 0
    # The plain forms: nothing more to read -> 0 after the timeout; a closed peer -> -errno.
    assert lib.vnb_raw_read_loop(b.fileno(), buf, 2048, 1, 20) == 0
    b.close()
    assert lib.vnb_raw_write_loop(a.fileno(), frame, len(frame), 1) == -errno.ECONNREFUSED


def test_c_read_loop_blocking_fd_honours_timeout(c):
    ffi, lib = c
    r, w = os.pipe()
    try:
        os.write(w, b"abc")
        buf = ffi.new("uint8_t[16]")
        assert lib.vnb_raw_read_loop(r, buf, 16, 5, 50) == 1   # blocking pipe: polls, then stops
        assert bytes(buf[0:3]) == b"abc"
    finally:
        os.close(r)
        os.close(w)
