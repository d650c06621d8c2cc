"""The far end of end-to-end tests and benchmarks: an AF_PACKET socket on one interface.

``Peer(ifname, netns)`` opens a raw packet socket bound to ``ifname`` inside network namespace
``netns`` (a name under /var/run/netns, a path, or None for the caller's namespace).  A socket stays
in the namespace it was created in, so only its creation happens in a short-lived thread that has
entered the namespace; afterwards it is used from any thread.

Single frames go through Python (:meth:`Peer.send`, :meth:`Peer.recv`, :meth:`Peer.capture`);
sequence-tagged floods go through the C loops in csrc/tools/vnb_peer_tx.c, vnb_peer_rx.c and
vnb_peer_ring.c (:meth:`Peer.send_tagged`, :meth:`Peer.recv_tagged`), which release the GIL, so a
sender and a receiver can run in two Python threads at full speed.

The socket ignores its own outgoing frames (PACKET_IGNORE_OUTGOING): a capture holds only what
arrived on the interface.  With ``rx_ring=True`` frames are received through a TPACKET_V3 ring (set
up before the socket is bound, so none are lost in between): cheaper per frame for high-rate
receivers, but a partly filled ring block only reaches the reader after ``ring_retire_ms``.
"""
from __future__ import annotations

import errno as _errno
import os
import select
import socket
import struct
import threading
import time
from typing import Callable

from ..errors import ConfigError, KernelRefused, LinkError, NotRoot
from . import packet
from ._native import ffi, lib
from .topology import in_netns

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_QDISC_BYPASS = 20
PACKET_IGNORE_OUTGOING = 23
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32

_RECV_CAP = 256 * 1024   # above any GRO'd frame a veth or tap delivers (64 KiB + headers)



def _lib():
    return ffi, lib


def run_in_netns(netns: str | None, fn: Callable[[], object]) -> object:
    """Call ``fn`` in a short-lived thread that entered ``netns`` (a name or a path under /var/run/netns)."""
    return in_netns(os.path.basename(netns) if netns else None, fn)


def _check(rc: int, call: str, hint: str = "") -> int:
    if rc < 0:
        raise KernelRefused(call, -rc, hint)
    return rc


def _stats_dict(st, extra: dict | None = None) -> dict:
    d = {name: int(getattr(st, name)) for name in (
        "received", "bad", "out_of_order", "duplicates", "missing", "ignored", "bytes", "truncated",
        "first_seq", "last_seq", "max_seq", "seen_any", "tp_packets", "tp_drops", "tp_freeze_q_cnt")}
    el = max(0, int(st.t_last_ns) - int(st.t_first_ns)) / 1e9
    d["elapsed_s"] = el
    d["t_first_ns"], d["t_last_ns"] = int(st.t_first_ns), int(st.t_last_ns)
    # first->last spans received-1 intervals; with one frame there is no rate to speak of.
    d["pps"] = (d["received"] - 1) / el if el > 0 and d["received"] > 1 else 0.0
    d["gbps"] = d["bytes"] * 8 * (d["received"] - 1) / max(d["received"], 1) / el / 1e9 if el > 0 else 0.0
    if extra:
        d.update(extra)
    return d


class Peer:
    """A raw AF_PACKET endpoint on ``ifname`` in namespace ``netns``.  See the module docstring."""

    def __init__(self, ifname: str, netns: str | None = None, *, rcvbuf: int = 32 << 20,
                 sndbuf: int | None = None, promisc: bool = True, ignore_outgoing: bool = True,
                 rx_ring: bool = False, ring_block: int = 1 << 20, ring_blocks: int = 64,
                 ring_retire_ms: int = 2, qdisc_bypass: bool = False):
        self.ifname = ifname
        self.netns = netns
        self._ring = None
        self._closed = False
        self._rxbuf = bytearray(_RECV_CAP)
        self._tot = {"tp_packets": 0, "tp_drops": 0, "tp_freeze_q_cnt": 0, "sent": 0, "received": 0}
        self._rx_state: dict[int, object] = {}
        self._lock = threading.Lock()

        def make() -> tuple[socket.socket, int]:
            try:
                # Protocol 0: the socket receives nothing until bind() names interface and protocol,
                # so frames of other interfaces cannot slip in meanwhile.
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            except PermissionError:
                raise NotRoot("AF_PACKET sockets need root (CAP_NET_RAW)") from None
            try:
                idx = socket.if_nametoindex(ifname)
            except OSError:
                s.close()
                where = f"namespace {netns!r}" if netns else "this namespace"
                raise LinkError(f"no interface {ifname!r} in {where}") from None
            return s, idx

        self.sock, self.ifindex = run_in_netns(netns, make)  # type: ignore[misc]
        try:
            self._setup(rcvbuf, sndbuf, promisc, ignore_outgoing, rx_ring, ring_block, ring_blocks,
                        ring_retire_ms, qdisc_bypass)
        except BaseException:
            self.close()
            raise

    def _setup(self, rcvbuf, sndbuf, promisc, ignore_outgoing, rx_ring, ring_block, ring_blocks,
               ring_retire_ms, qdisc_bypass) -> None:
        s = self.sock
        if rcvbuf:
            try:
                s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
            except PermissionError:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # capped by rmem_max
        if sndbuf:
            try:
                s.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, sndbuf)
            except PermissionError:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        if ignore_outgoing:
            s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        if qdisc_bypass:
            s.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
        if rx_ring:
            if ring_block % 4096 or ring_block < 65536 + 4096:
                raise ConfigError("ring_block must be a multiple of 4096 above 64 KiB + 4 KiB "
                                  "(a block holds whole frames)")
            ffi, lib = _lib()
            err = ffi.new("int *")
            ring = lib.vnb_peer_ring_open(s.fileno(), ring_block, ring_blocks, ring_retire_ms, err)
            if ring == ffi.NULL:
                raise KernelRefused("PACKET_RX_RING", err[0],
                                    f"{ring_blocks} blocks of {ring_block} bytes")
            self._ring = ring
        if promisc:
            mreq = struct.pack("iHH8s", self.ifindex, PACKET_MR_PROMISC, 0, b"")
            s.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
        # Python resolves the name with an ioctl on this socket, i.e. in the socket's namespace.
        s.bind((self.ifname, ETH_P_ALL))
        s.setblocking(False)
        self.mac: bytes = s.getsockname()[4][:6]

    # ----------------------------------------------------------------------------------------------

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def rx_ring(self) -> bool:
        return self._ring is not None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._ring is not None:
            _, lib = _lib()
            lib.vnb_peer_ring_close(self._ring)
            self._ring = None
        sock = getattr(self, "sock", None)   # absent when the constructor failed before creating it
        if sock is not None:
            sock.close()

    def __del__(self) -> None:
        # A forgotten close() would otherwise keep the ring's mapping (tens of MiB) until exit.
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown may have torn down the modules
            pass

    def __enter__(self) -> "Peer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        where = f" netns={self.netns}" if self.netns else ""
        return f"<Peer {self.ifname}{where} mac={packet.mac_str(self.mac)}{' ring' if self._ring else ''}>"

    # ---------------------------------------------------------------- single frames, from Python

    def send(self, frame: bytes | bytearray | memoryview, timeout: float = 2.0) -> None:
        """Send one frame, waiting out a full queue (ENOBUFS/EAGAIN) for up to ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock.send(frame)
                self._tot["sent"] += 1
                return
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as e:
                if e.errno != _errno.ENOBUFS:
                    raise KernelRefused("send", e.errno or 0,
                                        f"{len(frame)}-byte frame on {self.ifname}") from None
            if time.monotonic() > deadline:
                raise KernelRefused("send", _errno.ENOBUFS, f"queue on {self.ifname} stayed full")
            select.select([], [self.sock], [], 0.001)

    def recv(self, timeout: float | None = 1.0) -> bytes | None:
        """The next frame that arrived, or None after ``timeout`` seconds (None: wait forever)."""
        ms = -1 if timeout is None else max(0, int(timeout * 1000))
        if self._ring is not None:
            ffi, lib = _lib()
            buf = ffi.from_buffer(self._rxbuf)
            while True:
                n = lib.vnb_peer_ring_recv(self._ring, buf, len(self._rxbuf),
                                           ms if ms >= 0 else 1 << 30)
                if n != 0 or ms >= 0:   # only "timed out" repeats, and only when waiting forever
                    break
            if n == 0:
                return None
            _check(n, "recv (ring)")
            self._tot["received"] += 1
            return bytes(self._rxbuf[:min(n, len(self._rxbuf))])
        deadline = None if timeout is None else time.monotonic() + timeout
        p = select.poll()
        p.register(self.sock, select.POLLIN)
        while True:
            try:
                n = self.sock.recv_into(self._rxbuf, 0, socket.MSG_TRUNC)
                self._tot["received"] += 1
                return bytes(self._rxbuf[:min(n, len(self._rxbuf))])
            except (BlockingIOError, InterruptedError):
                pass
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            p.poll(None if left is None else max(1, int(left * 1000)))

    def capture(self, n: int, timeout: float = 1.0,
                match: Callable[[bytes], bool] | None = None) -> list[bytes]:
        """Up to ``n`` frames (those for which ``match`` holds, if given) within ``timeout`` s in all."""
        out: list[bytes] = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            f = self.recv(left)
            if f is None:
                break
            if match is None or match(f):
                out.append(f)
        return out

    def flush(self) -> int:
        """Throw away whatever is queued; returns how many frames.  Also reads (and so restarts)
        the kernel's drop counters, so a following :meth:`recv_tagged` accounts only for itself."""
        n = 0
        if self._ring is not None:
            _, lib = _lib()
            n = _check(lib.vnb_peer_ring_flush(self._ring), "flush (ring)")
        else:
            while True:
                try:
                    self.sock.recv_into(self._rxbuf, 0)
                    n += 1
                except (BlockingIOError, InterruptedError):
                    break
        self._read_sock_stats()
        return n

    # ---------------------------------------------------------------- tagged floods, through C

    def send_tagged(self, count: int, size: int, dst: packet.MacLike, src: packet.MacLike | None = None,
                    flow: int = 0, pace_ns: int = 0, first_seq: int = 0) -> dict:
        """Send tagged frames ``first_seq .. first_seq+count-1`` (see :func:`packet.tagged_frame`).

        ``pace_ns``: average spacing between frames (0: as fast as the kernel takes them).
        Returns ``{sent, bytes, retries, syscalls, elapsed_s, pps, gbps, err, next_seq}``; raises
        KernelRefused only if not a single frame could be sent."""
        if not packet.TAG_MIN_SIZE <= size <= packet.TAG_MAX_SIZE:
            raise ConfigError(f"tagged frame size {size} outside {packet.TAG_MIN_SIZE}..{packet.TAG_MAX_SIZE}")
        if count < 0 or not 0 <= flow <= 0xFFFFFFFF or not 0 <= pace_ns <= 0xFFFFFFFF:
            raise ConfigError("count must be >= 0, flow and pace_ns 32-bit unsigned")
        ffi, lib = _lib()
        st = ffi.new("struct vnb_peer_tx_stats *")
        d, s = packet.mac(dst), packet.mac(src if src is not None else self.mac)
        rc = lib.vnb_peer_send_tagged(self.fileno(), d, s, flow, first_seq & 0xFFFFFFFF, count, size,
                                      pace_ns, st)
        _check(rc, "sendmmsg", f"{size}-byte tagged frames on {self.ifname} "
                               f"(EMSGSIZE: frame larger than MTU + 14)")
        self._tot["sent"] += int(st.sent)
        el = st.elapsed_ns / 1e9
        return {"sent": int(st.sent), "bytes": int(st.bytes), "retries": int(st.retries),
                "syscalls": int(st.syscalls), "elapsed_s": el,
                "pps": st.sent / el if el > 0 else 0.0,
                "gbps": st.bytes * 8 / el / 1e9 if el > 0 else 0.0,
                "err": int(st.err), "next_seq": int(st.next_seq)}

    def recv_tagged(self, expect: int, timeout: float = 1.0, flow: int = 0, *,
                    reset: bool = True) -> dict:
        """Receive and check tagged frames of ``flow`` until ``expect`` of them arrived in this call
        (0: no limit) or none arrived for ``timeout`` seconds.

        Every byte of every frame is checked.  Returns the counters of ``struct vnb_peer_rx_stats``
        (received, bad, out_of_order, duplicates, missing, ignored, bytes, truncated, first_seq,
        last_seq, max_seq, seen_any, tp_packets, tp_drops, tp_freeze_q_cnt) plus ``got`` (this
        call), ``elapsed_s`` / ``pps`` / ``gbps`` (first to last frame) and ``ok`` (exactly
        ``expect`` frames, all good, in order, none missing).  ``reset=False`` continues the
        accounting of the previous call for this flow.  tp_drops covers the time since the socket's
        counters were last read (by :meth:`flush`, :meth:`stats` or a previous recv_tagged)."""
        if expect < 0 or not 0 <= flow <= 0xFFFFFFFF:
            raise ConfigError("expect must be >= 0 and flow 32-bit unsigned")
        ffi, lib = _lib()
        st = None if reset else self._rx_state.get(flow)
        if st is None:
            st = ffi.new("struct vnb_peer_rx_stats *")
        self._rx_state[flow] = st
        ms = max(0, int(timeout * 1000))
        keys = ("tp_packets", "tp_drops", "tp_freeze_q_cnt")
        before = [int(getattr(st, k)) for k in keys]
        if self._ring is not None:
            got = lib.vnb_peer_ring_recv_tagged(self._ring, st, expect, ms, flow)
        else:
            got = lib.vnb_peer_recv_tagged(self.fileno(), st, expect, ms, flow)
        _check(got, "recv (tagged)")
        with self._lock:
            # st sums over every call it has seen (reset=False); add only what this call read.
            for k, b in zip(keys, before):
                self._tot[k] += int(getattr(st, k)) - b
        self._tot["received"] += int(got)
        d = _stats_dict(st, {"got": int(got)})
        d["ok"] = (d["received"] == expect and d["bad"] == 0 and d["out_of_order"] == 0
                   and d["duplicates"] == 0 and d["missing"] == 0)
        return d

    # ----------------------------------------------------------------------------------------------

    def _read_sock_stats(self) -> None:
        ffi, lib = _lib()
        v = ffi.new("uint64_t[3]")
        if lib.vnb_peer_sock_stats(self.fileno(), v, v + 1, v + 2) == 0:
            with self._lock:
                self._tot["tp_packets"] += int(v[0])
                self._tot["tp_drops"] += int(v[1])
                self._tot["tp_freeze_q_cnt"] += int(v[2])

    def stats(self) -> dict:
        """Totals since the Peer opened: frames sent/received through it, and the kernel's
        PACKET_STATISTICS (tp_packets: frames that reached the socket, tp_drops: frames it had no
        room for, tp_freeze_q_cnt: times a full ring made it stop)."""
        self._read_sock_stats()
        with self._lock:
            return dict(self._tot)
