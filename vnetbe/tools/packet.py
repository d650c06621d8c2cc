"""Ethernet frames for tests and benchmarks: build, checksum, verify, parse.

Pure Python (numpy for the bulk arithmetic); nothing here needs root or touches the network.

Two families live here:

* protocol frames (raw, IPv4/UDP, IPv4/TCP, IPv6/TCP, IPv6/UDP) with correct checksums, the helpers that
  verify those checksums independently of how the frame was produced, and a parser that lets a test
  put a TSO'd segment back together;
* *sequence-tagged* frames: a private EtherType carrying a sequence number and a flow id, followed by a
  payload that is a pure function of (seq, size), so a receiver can check every byte of every frame at
  a high rate without remembering what was sent.  ``csrc/tools/vnb_tag.c`` builds and checks the very same
  bytes (tests/unit/test_packet.py keeps the two in step).

Tagged frame layout (all multi-byte header fields big-endian, like the rest of the wire)::

    0      6      12     14       18       22                      size
    | dst  | src  | 88B5 |  seq   |  flow  | payload(seq, size) ... |

    payload: 32-bit words w[j] = base + j * step (mod 2**32), stored little-endian, cut to size - 22
             base = mix32(seq ^ (size * 0x9E3779B1)),  step = mix32(base ^ 0x6A09E667) | 1
             mix32 = the MurmurHash3 32-bit finaliser

The size takes part in the payload so a frame cut short or padded on the way no longer checks.
mix32 is a bijection and the first payload word is ``base``, so from 26 bytes on (4 payload bytes)
any change to the seq is certain to show; shorter frames protect it only partly (22: not at all).
The MACs and the flow id are not covered: a damaged flow id makes a well-formed frame of another
flow, which a receiver filtering on its flow drops and counts as missing.
"""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Iterable, Sequence, Union

import numpy as np

from .. import spec

MacLike = Union[str, bytes, bytearray]
IpLike = Union[str, bytes, ipaddress.IPv4Address, ipaddress.IPv6Address]

ETH_HLEN = 14
ETH_MIN_FRAME = 60          # without FCS: what the wire (and most drivers) pad up to
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
IPPROTO_TCP = 6
IPPROTO_UDP = 17

#: IEEE 802 "local experimental" EtherTypes: nothing on a real network parses them.
TAG_ETHERTYPE = 0x88B5
RAW_ETHERTYPE = 0x88B6
TAG_HDR_LEN = 22            # dst, src, type, seq, flow
TAG_MIN_SIZE = TAG_HDR_LEN
TAG_MAX_SIZE = 1 << 18      # well past a 64 KiB GSO frame; mirrors VNB_TAG_MAX_SIZE in vnb_peer.h
MAX_FRAME = spec.MAX_FRAME   # the largest frame the device takes (a GSO super-frame)

BROADCAST = b"\xff" * 6

TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK, TCP_URG, TCP_ECE, TCP_CWR = (1 << i for i in range(8))

#: Where a guest with VIRTIO_NET_HDR_F_NEEDS_CSUM asks the device to store a TCP / UDP checksum,
#: relative to csum_start (the start of the L4 header).
TCP_CSUM_OFFSET = 16
UDP_CSUM_OFFSET = 6


# --------------------------------------------------------------------------------------------------
# addresses


def mac(value: MacLike) -> bytes:
    """A 6-byte MAC from ``"aa:bb:cc:dd:ee:ff"`` (or ``-`` separated) or from 6 bytes."""
    if isinstance(value, (bytes, bytearray)):
        if len(value) != 6:
            raise ValueError(f"a MAC address is 6 bytes, got {len(value)}")
        return bytes(value)
    parts = value.replace("-", ":").split(":")
    if len(parts) != 6:
        raise ValueError(f"not a MAC address: {value!r}")
    return bytes(int(p, 16) for p in parts)


def mac_str(value: MacLike) -> str:
    return ":".join(f"{b:02x}" for b in mac(value))


def _ip4(value: IpLike) -> bytes:
    if isinstance(value, (bytes, bytearray)) and len(value) == 4:
        return bytes(value)
    return ipaddress.IPv4Address(value).packed


def _ip6(value: IpLike) -> bytes:
    if isinstance(value, (bytes, bytearray)) and len(value) == 16:
        return bytes(value)
    return ipaddress.IPv6Address(value).packed


# --------------------------------------------------------------------------------------------------
# the internet checksum (RFC 1071)


def ones_sum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """One's-complement sum of ``data`` as big-endian 16-bit words (odd tail padded with a zero byte),
    plus ``initial``, folded to 16 bits and *not* complemented: the value to chain partial sums with."""
    buf = np.frombuffer(bytes(data), dtype=np.uint8)
    if buf.size & 1:
        buf = np.concatenate([buf, np.zeros(1, np.uint8)])
    # uint64 cannot overflow here: 2**48 words of 0xffff would be needed.
    total = int(buf.view(">u2").sum(dtype=np.uint64)) + int(initial)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def internet_checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The value a checksum field holds: the complement of :func:`ones_sum`."""
    return ~ones_sum(data, initial) & 0xFFFF


def pseudo_header_v4(src: IpLike, dst: IpLike, proto: int, length: int) -> bytes:
    return _ip4(src) + _ip4(dst) + struct.pack("!BBH", 0, proto, length)


def pseudo_header_v6(src: IpLike, dst: IpLike, proto: int, length: int) -> bytes:
    return _ip6(src) + _ip6(dst) + struct.pack("!I3xB", length, proto)


def l4_checksum(pseudo: bytes, segment: bytes | bytearray) -> int:
    """TCP/UDP checksum of ``segment`` (its checksum field must hold zero) under ``pseudo``."""
    return internet_checksum(segment, ones_sum(pseudo))


# --------------------------------------------------------------------------------------------------
# building frames


def eth_header(dst: MacLike, src: MacLike, ethertype: int) -> bytes:
    return mac(dst) + mac(src) + struct.pack("!H", ethertype)


def pattern(n: int, seed: int = 0) -> bytes:
    """``n`` deterministic filler bytes (seeded); the same generator as the tagged payload."""
    return _tag_payload(seed & 0xFFFFFFFF, n + TAG_HDR_LEN)[:n] if n else b""


def raw_frame(size: int, dst: MacLike = BROADCAST, src: MacLike = "02:00:00:00:00:01",
              ethertype: int = RAW_ETHERTYPE, seed: int = 0) -> bytes:
    """A frame of exactly ``size`` bytes (no FCS): Ethernet header then seeded filler.

    Sizes from 14 up to MAX_FRAME (65535) are accepted: 60..1514 fit a default MTU, up to 9014 a
    jumbo MTU, larger ones only go out as GSO sends."""
    if not ETH_HLEN <= size <= MAX_FRAME:
        raise ValueError(f"frame size {size} outside {ETH_HLEN}..{MAX_FRAME}")
    return eth_header(dst, src, ethertype) + pattern(size - ETH_HLEN, seed)


def ipv4_header(src: IpLike, dst: IpLike, proto: int, payload_len: int, *, ttl: int = 64,
                ident: int = 0, df: bool = True, tos: int = 0, options: bytes = b"") -> bytes:
    """IPv4 header with its checksum filled in; ``options`` must be a multiple of 4 bytes."""
    if len(options) % 4 or len(options) > 40:
        raise ValueError("IPv4 options must be a multiple of 4 bytes, at most 40")
    ihl = 5 + len(options) // 4
    total = ihl * 4 + payload_len
    if total > 0xFFFF:
        raise ValueError(f"IPv4 datagram of {total} bytes is over 65535")
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", (4 << 4) | ihl, tos, total, ident & 0xFFFF,
                                0x4000 if df else 0, ttl, proto, 0, _ip4(src), _ip4(dst)) + options)
    struct.pack_into("!H", hdr, 10, internet_checksum(hdr))
    return bytes(hdr)


def ipv6_header(src: IpLike, dst: IpLike, next_header: int, payload_len: int, *,
                hop_limit: int = 64, flow_label: int = 0, tclass: int = 0) -> bytes:
    if payload_len > 0xFFFF:
        raise ValueError("IPv6 payload over 65535 needs a jumbogram; not supported")
    first = (6 << 28) | ((tclass & 0xFF) << 20) | (flow_label & 0xFFFFF)
    return struct.pack("!IHBB", first, payload_len, next_header, hop_limit) + _ip6(src) + _ip6(dst)


def tcp_header(sport: int, dport: int, seq: int, ack: int, flags: int, *, window: int = 65535,
               options: bytes = b"", csum: int = 0, urg: int = 0) -> bytes:
    if len(options) % 4 or len(options) > 40:
        raise ValueError("TCP options must be a multiple of 4 bytes, at most 40")
    doff = 5 + len(options) // 4
    return struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, doff << 4,
                       flags & 0xFF, window, csum, urg) + options


def _tcp_segment(pseudo_of, src, dst, sport, dport, seq, ack, flags, payload, window, options):
    seg = bytearray(tcp_header(sport, dport, seq, ack, flags, window=window, options=options) + payload)
    struct.pack_into("!H", seg, 16, l4_checksum(pseudo_of(src, dst, IPPROTO_TCP, len(seg)), seg))
    return bytes(seg)


def _udp_segment(pseudo_of, src, dst, sport, dport, payload):
    seg = bytearray(struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload)
    c = l4_checksum(pseudo_of(src, dst, IPPROTO_UDP, len(seg)), seg)
    struct.pack_into("!H", seg, 6, c or 0xFFFF)   # 0 on the wire means "no checksum" (RFC 768)
    return bytes(seg)


def tcp_ipv4_frame(dst_mac: MacLike, src_mac: MacLike, src_ip: IpLike, dst_ip: IpLike, sport: int,
                   dport: int, payload: bytes = b"", *, seq: int = 0, ack: int = 0,
                   flags: int = TCP_ACK | TCP_PSH, window: int = 65535, options: bytes = b"",
                   ident: int = 0, ttl: int = 64) -> bytes:
    seg = _tcp_segment(pseudo_header_v4, src_ip, dst_ip, sport, dport, seq, ack, flags, payload,
                       window, options)
    return (eth_header(dst_mac, src_mac, ETH_P_IP)
            + ipv4_header(src_ip, dst_ip, IPPROTO_TCP, len(seg), ident=ident, ttl=ttl) + seg)


def tcp_ipv6_frame(dst_mac: MacLike, src_mac: MacLike, src_ip: IpLike, dst_ip: IpLike, sport: int,
                   dport: int, payload: bytes = b"", *, seq: int = 0, ack: int = 0,
                   flags: int = TCP_ACK | TCP_PSH, window: int = 65535, options: bytes = b"",
                   hop_limit: int = 64) -> bytes:
    seg = _tcp_segment(pseudo_header_v6, src_ip, dst_ip, sport, dport, seq, ack, flags, payload,
                       window, options)
    return (eth_header(dst_mac, src_mac, ETH_P_IPV6)
            + ipv6_header(src_ip, dst_ip, IPPROTO_TCP, len(seg), hop_limit=hop_limit) + seg)


def udp_ipv4_frame(dst_mac: MacLike, src_mac: MacLike, src_ip: IpLike, dst_ip: IpLike, sport: int,
                   dport: int, payload: bytes = b"", *, ident: int = 0, ttl: int = 64) -> bytes:
    seg = _udp_segment(pseudo_header_v4, src_ip, dst_ip, sport, dport, payload)
    return (eth_header(dst_mac, src_mac, ETH_P_IP)
            + ipv4_header(src_ip, dst_ip, IPPROTO_UDP, len(seg), ident=ident, ttl=ttl) + seg)


def udp_ipv6_frame(dst_mac: MacLike, src_mac: MacLike, src_ip: IpLike, dst_ip: IpLike, sport: int,
                   dport: int, payload: bytes = b"", *, hop_limit: int = 64) -> bytes:
    seg = _udp_segment(pseudo_header_v6, src_ip, dst_ip, sport, dport, payload)
    return (eth_header(dst_mac, src_mac, ETH_P_IPV6)
            + ipv6_header(src_ip, dst_ip, IPPROTO_UDP, len(seg), hop_limit=hop_limit) + seg)


def tcp_ipv4_frame_partial(dst_mac: MacLike, src_mac: MacLike, src_ip: IpLike, dst_ip: IpLike,
                           sport: int, dport: int, payload: bytes = b"", **kw) -> tuple[bytes, int, int]:
    """A TCP/IPv4 frame as a guest hands it over with VIRTIO_NET_HDR_F_NEEDS_CSUM.

    The TCP checksum field holds the folded pseudo-header sum, uncomplemented (what Linux's
    ``tcp_v4_send_check`` leaves there), and the device must finish it: sum from ``csum_start`` to the
    end and store the complement at ``csum_start + csum_offset``.  The IPv4 header checksum is
    complete, as a guest leaves it.  Returns ``(frame, csum_start, csum_offset)``;
    :func:`complete_partial_csum` does the device's part."""
    full = bytearray(tcp_ipv4_frame(dst_mac, src_mac, src_ip, dst_ip, sport, dport, payload, **kw))
    ihl = (full[ETH_HLEN] & 0x0F) * 4
    start = ETH_HLEN + ihl
    seg_len = len(full) - start
    struct.pack_into("!H", full, start + TCP_CSUM_OFFSET,
                     ones_sum(pseudo_header_v4(src_ip, dst_ip, IPPROTO_TCP, seg_len)))
    return bytes(full), start, TCP_CSUM_OFFSET


def complete_partial_csum(frame: bytes | bytearray, csum_start: int, csum_offset: int) -> bytes:
    """What a device (or skb_checksum_help) does for NEEDS_CSUM: checksum ``frame[csum_start:]``,
    which already holds the pseudo-header sum in its checksum field, and store the result."""
    if csum_start + csum_offset + 2 > len(frame):
        raise ValueError("checksum field lies past the end of the frame")
    out = bytearray(frame)
    struct.pack_into("!H", out, csum_start + csum_offset, internet_checksum(out[csum_start:]))
    return bytes(out)


# --------------------------------------------------------------------------------------------------
# parsing and verifying


@dataclass
class L3:
    """Where the IP layer of an Ethernet frame is, and what it carries."""

    version: int
    offset: int          # of the IP header in the frame
    l4_offset: int
    proto: int           # TCP / UDP / ... (for IPv6: the first next-header; extension headers unparsed)
    src: bytes
    dst: bytes
    l4_len: int          # from the IP length field: excludes any Ethernet padding


def parse_l3(frame: bytes | bytearray) -> L3 | None:
    """Locate the IP header (one optional 802.1Q tag skipped), or None if not IPv4/IPv6."""
    off = ETH_HLEN
    if len(frame) < off:
        return None
    etype = struct.unpack_from("!H", frame, 12)[0]
    if etype == 0x8100 and len(frame) >= 18:
        etype = struct.unpack_from("!H", frame, 16)[0]
        off = 18
    if etype == ETH_P_IP and len(frame) >= off + 20:
        ihl = (frame[off] & 0x0F) * 4
        total = struct.unpack_from("!H", frame, off + 2)[0]
        if ihl < 20 or total < ihl or len(frame) < off + total:
            return None
        return L3(4, off, off + ihl, frame[off + 9], bytes(frame[off + 12:off + 16]),
                  bytes(frame[off + 16:off + 20]), total - ihl)
    if etype == ETH_P_IPV6 and len(frame) >= off + 40:
        plen = struct.unpack_from("!H", frame, off + 4)[0]
        if len(frame) < off + 40 + plen:
            return None
        return L3(6, off, off + 40, frame[off + 6], bytes(frame[off + 8:off + 24]),
                  bytes(frame[off + 24:off + 40]), plen)
    return None


def ipv4_header_ok(frame: bytes | bytearray, offset: int = ETH_HLEN) -> bool:
    """True if the IPv4 header at ``offset`` sums to 0xffff (its checksum is right)."""
    if len(frame) < offset + 20 or frame[offset] >> 4 != 4:
        return False
    ihl = (frame[offset] & 0x0F) * 4
    if ihl < 20 or len(frame) < offset + ihl:
        return False
    return ones_sum(frame[offset:offset + ihl]) == 0xFFFF


def l4_checksum_ok(frame: bytes | bytearray, *, udp_zero_ok: bool = True) -> bool:
    """True if the TCP or UDP checksum of an IPv4/IPv6 Ethernet frame is right.

    Sums pseudo-header + segment including its checksum field and expects 0xffff; this never
    recomputes the field the way the builders do, so it checks them independently.  A UDP/IPv4
    checksum of 0 ("none") passes unless ``udp_zero_ok`` is false; over IPv6 it never does."""
    l3 = parse_l3(frame)
    if l3 is None or l3.proto not in (IPPROTO_TCP, IPPROTO_UDP):
        return False
    seg = bytes(frame[l3.l4_offset:l3.l4_offset + l3.l4_len])
    if l3.proto == IPPROTO_UDP:
        if len(seg) < 8:
            return False
        if seg[6:8] == b"\0\0":
            return l3.version == 4 and udp_zero_ok
    elif len(seg) < 20:
        return False
    pseudo = (pseudo_header_v4 if l3.version == 4 else pseudo_header_v6)(l3.src, l3.dst, l3.proto, len(seg))
    return ones_sum(seg, ones_sum(pseudo)) == 0xFFFF


def checksums_ok(frame: bytes | bytearray) -> bool:
    """IPv4 header checksum (when IPv4) and TCP/UDP checksum both right."""
    l3 = parse_l3(frame)
    if l3 is None:
        return False
    if l3.version == 4 and not ipv4_header_ok(frame, l3.offset):
        return False
    return l4_checksum_ok(frame)


@dataclass
class TcpSegment:
    version: int
    src: bytes
    dst: bytes
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int
    options: bytes
    payload: bytes
    ip_id: int | None = None     # IPv4 only: TSO increments it per segment

    @property
    def end(self) -> int:
        """Sequence number just past this segment's payload (mod 2**32)."""
        return (self.seq + len(self.payload)) & 0xFFFFFFFF


def parse_tcp(frame: bytes | bytearray) -> TcpSegment | None:
    """The TCP segment in an IPv4/IPv6 Ethernet frame (None if there is none).  Ethernet padding is
    dropped by trusting the IP length fields, so a 60-byte padded frame yields the right payload."""
    l3 = parse_l3(frame)
    if l3 is None or l3.proto != IPPROTO_TCP or l3.l4_len < 20:
        return None
    o = l3.l4_offset
    sport, dport, seq, ack, doff, flags, window = struct.unpack_from("!HHIIBBH", frame, o)
    hlen = (doff >> 4) * 4
    if hlen < 20 or hlen > l3.l4_len:
        return None
    ip_id = struct.unpack_from("!H", frame, l3.offset + 4)[0] if l3.version == 4 else None
    return TcpSegment(l3.version, l3.src, l3.dst, sport, dport, seq, ack, flags, window,
                      bytes(frame[o + 20:o + hlen]), bytes(frame[o + hlen:o + l3.l4_len]), ip_id)


def reassemble_tcp(segments: Iterable[TcpSegment | bytes], isn: int | None = None) -> bytes:
    """Put segments (or raw frames) back into the byte stream starting at ``isn`` (default: the lowest
    sequence number seen, wrap-aware relative to the first segment).

    Duplicates and overlaps are fine if they agree; a hole or a disagreement raises ValueError, so a
    test gets a precise failure rather than a short buffer."""
    segs = []
    for s in segments:
        if not isinstance(s, TcpSegment):
            parsed = parse_tcp(s)
            if parsed is None:
                raise ValueError("a frame given to reassemble_tcp holds no TCP segment")
            s = parsed
        if s.payload:
            segs.append(s)
    if not segs:
        return b""
    ref = segs[0].seq if isn is None else isn
    rel = sorted(((s.seq - ref + (1 << 31)) % (1 << 32) - (1 << 31), s.payload) for s in segs)
    if isn is None:
        base = rel[0][0]
        rel = [(r - base, p) for r, p in rel]
    out = bytearray()
    for r, p in rel:
        if r < 0:
            raise ValueError(f"segment starts {-r} bytes before the initial sequence number")
        if r > len(out):
            raise ValueError(f"hole of {r - len(out)} bytes at stream offset {len(out)}")
        overlap = min(len(out) - r, len(p))
        if out[r:r + overlap] != p[:overlap]:
            raise ValueError(f"overlapping segments disagree at stream offset {r}")
        out += p[overlap:]
    return bytes(out)


# --------------------------------------------------------------------------------------------------
# sequence-tagged frames

_M32 = 0xFFFFFFFF


def _mix32(x: int) -> int:
    """MurmurHash3 fmix32: every input bit reaches every output bit, so neighbouring seqs differ."""
    x &= _M32
    x ^= x >> 16
    x = (x * 0x85EBCA6B) & _M32
    x ^= x >> 13
    x = (x * 0xC2B2AE35) & _M32
    x ^= x >> 16
    return x


def _tag_params(seq: int, size: int) -> tuple[int, int]:
    base = _mix32((seq & _M32) ^ ((size * 0x9E3779B1) & _M32))
    step = _mix32(base ^ 0x6A09E667) | 1
    return base, step


def _tag_payload(seq: int, size: int) -> bytes:
    n = size - TAG_HDR_LEN
    if n <= 0:
        return b""
    base, step = _tag_params(seq, size)
    j = np.arange((n + 3) // 4, dtype=np.uint32)
    words = j * np.uint32(step) + np.uint32(base)   # uint32 arrays wrap silently, as in C
    return words.astype("<u4").tobytes()[:n]


def tagged_payload(seq: int, size: int) -> bytes:
    """Bytes 22..size of the tagged frame ``(seq, size)``."""
    return _tag_payload(seq, size)


def tagged_frame(seq: int, size: int, dst: MacLike, src: MacLike, flow: int = 0) -> bytes:
    """A sequence-tagged frame of exactly ``size`` bytes (see the module docstring for the layout)."""
    if not TAG_MIN_SIZE <= size <= TAG_MAX_SIZE:
        raise ValueError(f"tagged frame size {size} outside {TAG_MIN_SIZE}..{TAG_MAX_SIZE}")
    if not 0 <= seq <= _M32 or not 0 <= flow <= _M32:
        raise ValueError("seq and flow are 32-bit unsigned")
    return (eth_header(dst, src, TAG_ETHERTYPE) + struct.pack("!II", seq, flow)
            + _tag_payload(seq, size))


def is_tagged(frame: bytes | bytearray) -> bool:
    return len(frame) >= TAG_HDR_LEN and frame[12] == 0x88 and frame[13] == 0xB5


def check_tagged(frame: bytes | bytearray) -> tuple[bool, int, int]:
    """``(ok, seq, flow)``: ok when every payload byte is what ``tagged_frame(seq, len(frame))`` holds.

    Frames that are not tagged at all (too short, other EtherType) give ``(False, -1, -1)``; a tagged
    frame with a damaged payload gives ``(False, seq, flow)`` as read from its header (which may be
    the damaged part)."""
    if not is_tagged(frame):
        return False, -1, -1
    seq, flow = struct.unpack_from("!II", frame, 14)
    return bytes(frame[TAG_HDR_LEN:]) == _tag_payload(seq, len(frame)), seq, flow


def tagged_frames(first_seq: int, count: int, size: int, dst: MacLike, src: MacLike,
                  flow: int = 0) -> Sequence[bytes]:
    """``count`` consecutive tagged frames (seq wraps at 2**32 like the C sender's)."""
    return [tagged_frame((first_seq + i) & _M32, size, dst, src, flow) for i in range(count)]
