"""What the bench sends and how it counts what arrives: tagged frames of a size, the 64k TSO
super-frame, the guest's flood and its receive loop."""
from __future__ import annotations

import os
import struct
import time

from ... import spec
from .. import packet
from ..guest import GuestDriver
from ..results import TSO_LABEL

HDR = spec.NET_HDR_LEN
TAG = packet.TAG_HDR_LEN

# Peer threads of rxsat: more than there are CPUs, so the path never has one to itself.
SAT_SENDERS = (os.cpu_count() or 1) + 1
TSO_FRAME = 65535            # the largest frame either side handles (VNB_MAX_FRAME)
TSO_MSS = 1448
TSO_PAYLOAD = TSO_FRAME - packet.ETH_HLEN - 20 - 20   # TCP payload bytes of one super-frame
RR_FLOW = 0x5252             # flow id of request/response frames ("RR")
RR_IDLE_S = 5.0              # a responder with nothing to answer for this long gives up
RX_IDLE_S = 0.5              # a receiver gives up after this long without a frame
_SLICE_MS = 20               # receive in slices this long, to tell the last frame's time


def receive_all(guest: GuestDriver, count: int, *, seq_offset: int = 0, verify: bool = False,
                idle: float = RX_IDLE_S) -> tuple[int, int, int, float]:
    """Receive up to ``count`` frames (guest.receive_count) until they are all in or none came for
    ``idle`` s. Returns (frames, out-of-order, bad, perf_counter time of the last frame): the idle
    wait at the end is not part of a rate computed from that time."""
    got = ooo = bad = 0
    t_last = time.perf_counter()
    quiet_since = t_last
    while got < count:
        n, o, b = guest.receive_count(count - got, timeout=_SLICE_MS / 1000, seq_offset=seq_offset,
                                      verify=verify)
        now = time.perf_counter()
        got, ooo, bad = got + n, ooo + o, bad + b
        if n:
            # A call that stopped short waited a whole slice after its last frame.
            t_last = now if got >= count else now - _SLICE_MS / 1000
            quiet_since = now
        elif now - quiet_since >= idle:
            break
    return got, ooo, bad, t_last


def tso_frame(dst: packet.MacLike, src: packet.MacLike) -> tuple[bytes, tuple[int, int]]:
    """The 64k scenario's frame: 65535 bytes of TCP/IPv4 with the checksum left to the device
    (NEEDS_CSUM), as a guest hands a TSO super-frame over. Returns (frame, (csum_start, csum_offset))."""
    frame, start, off = packet.tcp_ipv4_frame_partial(dst, src, "10.255.0.1", "10.255.0.2", 40000, 5001,
                                                      packet.pattern(TSO_PAYLOAD))
    assert len(frame) == TSO_FRAME
    return frame, (start, off)


def guest_frame(size: int | str, dst: packet.MacLike, src: packet.MacLike,
                plain: dict) -> tuple[bytes, dict, int, int | None]:
    """What a guest floods at ``size``: (frame, flood_guest options, frame bytes, payload bits or None).
    64k is a TSO super-frame; any other size a tagged frame flooded with ``plain`` options."""
    if size == TSO_LABEL:
        frame, csum = tso_frame(dst, src)
        return frame, dict(csum=csum, gso=("tcpv4", TSO_MSS)), TSO_FRAME, TSO_PAYLOAD * 8
    return packet.tagged_frame(0, size, dst, src), plain, size, None


def tso_hdr(csum: tuple[int, int]) -> bytes:
    """struct virtio_net_hdr_v1 (little-endian) for a TCPv4 GSO frame with NEEDS_CSUM."""
    return struct.pack("<BBHHHHH", spec.VIRTIO_NET_HDR_F_NEEDS_CSUM, spec.VIRTIO_NET_HDR_GSO_TCPV4,
                       packet.ETH_HLEN + 40, TSO_MSS, csum[0], csum[1], 0)


def flood_guest(guest: GuestDriver, frame: bytes, count: int, *, csum=None, gso=None, seq_offset: int = 0,
           tagged: bool = False, timeout: float = 5.0, first_seq: int = 0) -> int:
    return guest.flood(frame, count, seq_offset=seq_offset, tagged=tagged, timeout=timeout, csum=csum, gso=gso,
                       first_seq=first_seq)
