"""Traffic scenarios shared by ``vnetbe bench``, the pytest-benchmark files in bench/ and the tests.

A ``BenchTopology`` is a throwaway namespace with a veth whose root end is the parent of bridge-mode
macvtaps, and whose other end (inside the namespace) is "the network": a Peer that sends and counts
frames. Each scenario returns a ``RunResult`` with rates, per-packet counts and the CPU time of every
thread involved (datapath thread or vhost worker, guest thread(s), the peer's thread), measured in the
same run as its baseline.

Scenarios (``SCENARIOS``):

- ``tx``: the guest floods frames to the peer; rate = frames the guest queued / time until the device
  consumed them all. Baseline ``raw_tx``: one thread write()s the same frames to the macvtap fd.
- ``rx``: the peer floods tagged frames to the guest; rate = frames the guest got / time to the last
  one. Baseline ``raw_rx``: one thread read()s them from the macvtap fd.
- ``rxsat``: ``rx`` under saturating load: more peer threads than CPUs send at once, more than the
  path carries. They share the peer's socket, whose send buffer holds them back (a queued skb is
  charged to its sender until the reader frees it), so the tap's queue stays well filled and little
  or nothing is dropped; what is, the kernel counts (drops ``macvtap_queue``, ``veth_backlog``).
  (Senders on sockets of their own with huge buffers were tried: they overflow the tap's queue, but
  burn the CPU the path needs on frames that are dropped, and interrupts per frame came out no
  lower.) This is where notification suppression shows: kicks and interrupts per frame. Baseline
  ``raw_rx`` with the same senders.
- ``vm2vm``: guest A floods tagged frames to guest B's MAC through two bridge-mode macvtaps of one
  parent (each guest has its own memory, device and driver); B checks every byte; rate = frames B
  got / time. No baseline.
- ``rr``: request/response. The peer sends one small tagged frame, the guest receives it and sends a
  reply, the peer receives that; ``count`` round trips, one at a time. Reports p50/p99 latency in µs;
  the rate is round trips per second and the per-packet counts are per round trip. Baseline
  ``raw_rr``: the same with a thread answering straight on the macvtap fd.

Sizes are Ethernet frame bytes without FCS (26 .. 9014 on the default MTU 9000), or ``"64k"``: one
65535-byte TCP/IPv4 frame sent with TSO (``gso=("tcpv4", 1448)``, checksum offload): pps counts
these super-frames and Gbit/s their TCP payload. ``64k`` exists for ``tx`` and ``vm2vm`` only: the
peer is an AF_PACKET socket, which cannot send a frame larger than its MTU.
"""
from __future__ import annotations

import errno
import functools
import os
import statistics
import struct
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator

from . import packet

from .. import spec
from ._native import ffi, lib
from ..cputime import current_tid, thread_cpu_ns, voluntary_switches
from ..device import VirtioNet
from ..errors import ConfigError, VnetError
from .guest import GuestDriver
from ..memory import GuestMemory
from .peer import Peer
from .topology import Topology
from .results import SCENARIOS, TSO_LABEL, nearest_rank, size_label, supported

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


# --------------------------------------------------------------------------------------------- sizes


@dataclass
class RunResult:
    datapath: str              # "user", "vhost" or "raw" (the baseline loop)
    scenario: str              # "tx", "rx", "vm2vm" or "rr"
    size: int                  # Ethernet frame bytes (no FCS, no virtio header)
    frames: int                # frames moved end to end (rr: round trips)
    seconds: float
    pps: float                 # frames/s (64k: super-frames/s; rr: round trips/s)
    gbps: float                # frame bits/s (64k: TCP payload; rr: both directions)
    offered: int = 0           # frames the source tried to move
    per_packet: dict = field(default_factory=dict)
    cpu_ns: dict = field(default_factory=dict)   # thread -> CPU ns per packet
    drops: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    latency: dict = field(default_factory=dict)  # rr: p50_us, p99_us, min_us, max_us, mean_us

    def as_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------- helpers

def _rate(frames: int, size: int, seconds: float, bits_per_frame: float | None = None) -> tuple[float, float]:
    if seconds <= 0:
        return 0.0, 0.0
    bits = size * 8 if bits_per_frame is None else bits_per_frame
    return frames / seconds, frames * bits / seconds / 1e9


def _delta(after: dict, before: dict) -> dict:
    """after - before for every number (nested dicts too); other values as in ``after``."""
    out = {}
    for k, v in after.items():
        b = before.get(k)
        if isinstance(v, dict):
            out[k] = _delta(v, b if isinstance(b, dict) else {})
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = v - (b if isinstance(b, (int, float)) and not isinstance(b, bool) else 0)
        else:
            out[k] = v
    return out


def _add(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict):
            out[k] = _add(out.get(k) or {}, v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = out.get(k, 0) + v
        else:
            out.setdefault(k, v)
    return out


def _ns_link_stats(topo: Topology, ifname: str) -> dict:
    with topo.ns.ipr() as ipr:
        msg = ipr.link("get", ifname=ifname)[0]
    return dict(msg.get_attr("IFLA_STATS64") or {})


def _per_packet(frames: int, dev_stats: dict, guest_stats: dict, cpu: dict,
                peer_syscalls: float = 0, sleeps: dict | None = None) -> tuple[dict, dict]:
    """Per-packet counts. ``sleeps`` (from _Meter): device_sleeps (datapath thread, vhost worker or raw
    loop) and guest_sleeps (the guest's thread), the wake-ups that happened; ``wakeups`` and
    ``interrupts`` count signals, some of which found their thread still awake."""
    n = max(frames, 1)
    kicks = guest_stats.get("tx_kicks", 0) + guest_stats.get("rx_kicks", 0)
    # Interrupts as the guest saw them (call eventfd reads): the one count both datapaths share,
    # since the kernel keeps no count of vhost's eventfd signals.
    irqs = guest_stats.get("tx_interrupts", 0) + guest_stats.get("rx_interrupts", 0)
    dsys, gsys = dev_stats.get("syscalls", 0), guest_stats.get("syscalls", 0)
    pp = {
        "syscalls": (dsys + gsys + peer_syscalls) / n,
        "datapath_syscalls": dsys / n,
        "guest_syscalls": gsys / n,
        "peer_syscalls": peer_syscalls / n,
        "kicks": kicks / n,
        "interrupts": irqs / n,
        "wakeups": dev_stats.get("wakeups", 0) / n,
        "cpu_ns": sum(cpu.values()) / n,
    }
    if sleeps is not None:
        pp["device_sleeps"] = sleeps.get("device", 0) / n
        pp["guest_sleeps"] = sleeps.get("guest", 0) / n
    return pp, {k: v / n for k, v in cpu.items()}


class _Meter:
    """CPU ns over one run of: the calling thread (``self_name``), other threads of this process by
    name, and the vhost workers of ``devs`` (kernel threads before Linux 6.4, our own tasks after).
    ``sleeps`` after stop(): times the device side (named threads and workers) and the calling thread
    went to sleep, i.e. the wake-ups that really happened."""

    def __init__(self, self_name: str | None, named: dict[str, int], devs: list[VirtioNet] = ()):
        self.self_name = self_name
        self.named = {k: t for k, t in named.items() if t}
        self.workers = sorted({t for d in devs if d.datapath_name == "vhost" for t in d.threads()})
        self._t0: dict = {}
        self._s0: dict = {}
        self.sleeps = {"device": 0, "self": 0}

    def _read(self) -> dict:
        out = {k: thread_cpu_ns(t) for k, t in self.named.items()}
        out.update({("w", t): thread_cpu_ns(t, t) for t in self.workers})
        if self.self_name:
            out[self.self_name] = time.thread_time_ns()
        return out

    def _read_sleeps(self) -> dict:
        return {"device": sum(voluntary_switches(t) for t in self.named.values())
                + sum(voluntary_switches(t, t) for t in self.workers),
                "self": voluntary_switches(current_tid())}

    def start(self) -> "_Meter":
        self._s0 = self._read_sleeps()
        self._t0 = self._read()
        return self

    def stop(self) -> dict[str, int]:
        now = self._read()
        s1 = self._read_sleeps()
        self.sleeps = {k: s1[k] - self._s0.get(k, 0) for k in s1}
        out = {k: v - self._t0.get(k, 0) for k, v in now.items() if not isinstance(k, tuple)}
        if self.workers:
            out["vhost_worker"] = sum(v - self._t0.get(k, 0) for k, v in now.items() if isinstance(k, tuple))
        return out


def _dev_sleeps(meter: _Meter) -> dict:
    """A device run: the datapath thread or vhost worker, and the guest on the calling thread."""
    return {"device": meter.sleeps["device"], "guest": meter.sleeps["self"]}


def _raw_sleeps(meter: _Meter) -> dict:
    """A raw loop: the loop itself, on the calling thread, stands where the device would."""
    return {"device": meter.sleeps["self"], "guest": 0}


def _dev_threads(devs: dict[str, VirtioNet]) -> dict[str, int]:
    """name -> tid of the user datapath threads ("datapath", or "datapath_a"/"datapath_b")."""
    out = {}
    for name, dev in devs.items():
        if dev.datapath_name == "user":
            for i, t in enumerate(dev.threads()):
                out[name + (f"{i}" if i else "")] = t
    return out


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
    """What a guest floods at ``size``: (frame, flood() options, frame bytes, payload bits or None).
    64k is a TSO super-frame; any other size a tagged frame flooded with ``plain`` options."""
    if size == TSO_LABEL:
        frame, csum = tso_frame(dst, src)
        return frame, dict(csum=csum, gso=("tcpv4", TSO_MSS)), TSO_FRAME, TSO_PAYLOAD * 8
    return packet.tagged_frame(0, size, dst, src), plain, size, None


def _tso_hdr(csum: tuple[int, int]) -> bytes:
    """struct virtio_net_hdr_v1 (little-endian) for a TCPv4 GSO frame with NEEDS_CSUM."""
    return struct.pack("<BBHHHHH", spec.VIRTIO_NET_HDR_F_NEEDS_CSUM, spec.VIRTIO_NET_HDR_GSO_TCPV4,
                       packet.ETH_HLEN + 40, TSO_MSS, csum[0], csum[1], 0)


def _flood(guest: GuestDriver, frame: bytes, count: int, *, csum=None, gso=None, seq_offset: int = 0,
           tagged: bool = False, timeout: float = 5.0) -> int:
    return guest.flood(frame, count, seq_offset=seq_offset, tagged=tagged, timeout=timeout, csum=csum, gso=gso)


# ----------------------------------------------------------------------------------------- topology

class BenchTopology:
    """Namespace + veth + bridge-mode macvtaps + a Peer on the far end, all named vnb<tag>*.

    ``link`` (vnb<tag>m0) carries tx, rx and rr; ``link_b`` (vnb<tag>m1, made on first use) is the
    second guest's macvtap in vm2vm."""

    def __init__(self, tag: str = "B", mtu: int = 9000, mode: str = "bridge"):
        self.topo = Topology(tag, mtu=mtu)
        self.mode = mode
        self._link_b = None
        try:
            self.link = self.topo.macvtap(mode)
            self.peer = Peer(self.topo.peer, self.topo.netns)
            with self.topo.ns.ipr() as ipr:
                self.peer_mac = ipr.link("get", ifname=self.topo.peer)[0].get_attr("IFLA_ADDRESS")
        except BaseException:
            self.topo.close()
            raise

    @property
    def link_b(self):
        if self._link_b is None:
            self._link_b = self.topo.macvtap("bridge")
        return self._link_b

    def close(self) -> None:
        try:
            self.peer.close()
        finally:
            self.topo.close()

    def __enter__(self) -> "BenchTopology":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- devices ---
    def device(self, datapath: str, mem_size: int = 256 << 20, link=None, **kw):
        mem = GuestMemory(mem_size)
        try:
            dev = VirtioNet(mem, link or self.link, datapath=datapath, **kw)
        except BaseException:
            mem.close()
            raise
        return mem, dev

    @staticmethod
    def _features(event_idx: bool) -> int:
        f = spec.DEVICE_FEATURES
        if not event_idx:
            f &= ~spec.bit(spec.VIRTIO_RING_F_EVENT_IDX)
        return f

    @contextmanager
    def guest(self, datapath: str, *, link=None, queue_size: int = 256, event_idx: bool = True,
              busyloop_us: int = 0) -> Iterator[tuple[VirtioNet, GuestDriver]]:
        """A started device on ``link`` (default ``self.link``) with its GuestDriver; closed after."""
        mem, dev = self.device(datapath, link=link, busyloop_us=busyloop_us)
        with mem, dev:
            yield dev, GuestDriver(dev, queue_size=queue_size, features=self._features(event_idx))

    @staticmethod
    def _options(queue_size: int, event_idx: bool, busyloop_us: int, size, **extra) -> dict:
        o = {"queue_size": queue_size, "event_idx": event_idx, "busyloop_us": busyloop_us}
        if size == TSO_LABEL:
            o.update({"tso": True, "gso": "tcpv4", "mss": TSO_MSS, "payload": TSO_PAYLOAD})
        o.update(extra)
        return o

    # --- TX: guest -> peer ---
    def tx_run(self, dev: VirtioNet, guest: GuestDriver, size: int | str, count: int, *,
               count_delivered: bool = True) -> RunResult:
        """One TX run on an already started device (bench/ reuses one device over rounds).
        ``count_delivered=False`` skips reading the peer's counters afterwards (a netlink round trip
        and a 50 ms wait for the veth's backlog): ``frames`` is then what the device consumed."""
        frame, flood, nbytes, bits = guest_frame(size, self.peer_mac, dev.link.mac, dict(seq_offset=14))
        before = _ns_link_stats(self.topo, self.topo.peer) if count_delivered else {}
        dev0, g0 = dev.stats(), guest.stats()
        meter = _Meter("guest", _dev_threads({"datapath": dev}), [dev]).start()
        t0 = time.perf_counter()
        sent = _flood(guest, frame, count, **flood)
        guest.drain_tx()
        dt = time.perf_counter() - t0
        cpu = meter.stop()
        dstats, gstats = _delta(dev.stats(), dev0), _delta(guest.stats(), g0)
        if count_delivered:
            time.sleep(0.05)   # let the veth's backlog reach the peer before reading its counters
            after = _ns_link_stats(self.topo, self.topo.peer)
            delivered = after.get("rx_packets", 0) - before.get("rx_packets", 0)
        else:
            delivered = sent
        pps, gbps = _rate(sent, nbytes, dt, bits)
        pp, cpu_pp = _per_packet(sent, dstats, gstats, cpu, sleeps=_dev_sleeps(meter))
        return RunResult(dev.datapath_name, "tx", nbytes, delivered, dt, pps, gbps, offered=sent, per_packet=pp,
                         cpu_ns=cpu_pp, drops=dstats.get("drops", {}),
                         options=self._options(guest.rings[spec.TX_QUEUE][0], guest.event_idx, dev.busyloop_us, size))

    def tx(self, datapath: str, size: int | str, count: int, *, queue_size: int = 256, event_idx: bool = True,
           busyloop_us: int = 0) -> RunResult:
        with self.guest(datapath, queue_size=queue_size, event_idx=event_idx, busyloop_us=busyloop_us) as (dev, g):
            return self.tx_run(dev, g, size, count)

    def raw_tx(self, size: int | str, count: int) -> RunResult:
        """Baseline: one thread write()s the same frames straight to the macvtap fd (a zero vnet
        header; for 64k the TSO header, so the kernel segments exactly as for the device)."""
        self.link.set_vnet_hdr_len(HDR)
        self.link.set_offload(0)
        frame, flood, nbytes, bits = guest_frame(size, self.peer_mac, self.link.mac, {})
        buf = (_tso_hdr(flood["csum"]) if "csum" in flood else bytes(HDR)) + frame
        st = ffi.new("struct vnb_raw_stats *")
        meter = _Meter("writer", {}).start()
        n = lib.vnb_raw_write_loop_ex(self.link.fd, buf, len(buf), count, st)
        cpu = meter.stop()
        n = max(n, 0)
        dt = st.elapsed_ns / 1e9
        pps, gbps = _rate(n, nbytes, dt, bits)
        # Every EAGAIN costs the failed write() and a poll().
        pp, cpu_pp = _per_packet(n, {"syscalls": n + 2 * st.eagain}, {}, cpu, sleeps=_raw_sleeps(meter))
        return RunResult("raw", "tx", nbytes, n, dt, pps, gbps, offered=count, per_packet=pp, cpu_ns=cpu_pp,
                         options={"tso": True} if size == TSO_LABEL else {})

    # --- RX: peer -> guest ---
    def _send_async(self, size: int, count: int, pace_ns: int = 0, *, dst=None,
                    senders: int = 1) -> Callable[[], dict]:
        """Start the peer's sender(s), each in its own thread sending its share of sequence numbers.
        The function returned waits for them and returns their summed figures (sent, syscalls,
        retries, CPU time as cpu_ns) and the first error."""
        parts: list[dict] = [{} for _ in range(senders)]
        share = -(-count // senders)

        def run(k: int) -> None:
            c0 = time.thread_time_ns()
            first = k * share
            try:
                parts[k].update(self.peer.send_tagged(max(min(share, count - first), 0), size, dst or self.link.mac,
                                                      self.peer_mac, pace_ns=pace_ns, first_seq=first))
            except Exception as e:  # reported by the caller
                parts[k]["error"] = e
            finally:
                parts[k]["cpu_ns"] = time.thread_time_ns() - c0

        ths = [threading.Thread(target=run, args=(k,), name=f"vnetbe-peer-sender{k}") for k in range(senders)]
        for th in ths:
            th.start()

        def finish() -> dict:
            for th in ths:
                th.join()
            return functools.reduce(_add, parts, {})
        return finish

    def rx_run(self, dev: VirtioNet, guest: GuestDriver, size: int, count: int, pace_ns: int = 0,
               senders: int = 1) -> RunResult:
        if size == TSO_LABEL:
            raise ConfigError("rx at 64k: the peer (an AF_PACKET socket) cannot send frames above its MTU")
        kernel0 = self._kernel_drops(dev.link)
        dev0, g0 = dev.stats(), guest.stats()
        meter = _Meter("guest", _dev_threads({"datapath": dev}), [dev]).start()
        t0 = time.perf_counter()
        finish = self._send_async(size, count, pace_ns, senders=senders)
        got, ooo, _, t_last = receive_all(guest, count, seq_offset=14)
        sender = finish()
        cpu = meter.stop()
        cpu["peer_sender"] = sender.get("cpu_ns", 0)
        dt = t_last - t0
        dstats, gstats = _delta(dev.stats(), dev0), _delta(guest.stats(), g0)
        kernel = _delta(self._kernel_drops(dev.link), kernel0)
        if "error" in sender:
            raise sender["error"]
        pps, gbps = _rate(got, size, dt)
        pp, cpu_pp = _per_packet(got, dstats, gstats, cpu,
                                 peer_syscalls=sender.get("syscalls", 0) + sender.get("retries", 0),
                                 sleeps=_dev_sleeps(meter))
        # vhost reports the macvtap's own counters as its drops: those are macvtap_queue here already.
        drops = {k: v for k, v in dstats.get("drops", {}).items() if not k.startswith("macvtap_")}
        drops.update(kernel)
        drops["lost"] = max(sender.get("sent", 0) - got, 0)
        # Several senders interleave their sequences: out-of-order means nothing then.
        extra = {"out_of_order": ooo} if senders == 1 else {"senders": senders}
        return RunResult(dev.datapath_name, "rx" if senders == 1 else "rxsat", size, got, dt, pps, gbps,
                         offered=sender.get("sent", 0), per_packet=pp, cpu_ns=cpu_pp, drops=drops,
                         options=self._options(guest.rings[spec.RX_QUEUE][0], guest.event_idx,
                                               dev.busyloop_us, size, **extra))

    def _kernel_drops(self, link) -> dict:
        """Where the kernel drops frames on their way to a guest: the macvtap's queue, and the veth
        (the peer's end counts frames its partner's backlog refused as tx_dropped)."""
        m = link.stats()
        return {"macvtap_queue": m.rx_dropped + m.tx_dropped,
                "veth_backlog": _ns_link_stats(self.topo, self.topo.peer).get("tx_dropped", 0)}

    def rx(self, datapath: str, size: int, count: int, *, queue_size: int = 256, event_idx: bool = True,
           busyloop_us: int = 0, pace_ns: int = 0, senders: int = 1) -> RunResult:
        with self.guest(datapath, queue_size=queue_size, event_idx=event_idx, busyloop_us=busyloop_us) as (dev, g):
            return self.rx_run(dev, g, size, count, pace_ns, senders)

    def rxsat(self, datapath: str, size: int, count: int, **opts) -> RunResult:
        return self.rx(datapath, size, count, senders=SAT_SENDERS, **opts)

    def raw_rx(self, size: int, count: int, pace_ns: int = 0, senders: int = 1) -> RunResult:
        """Baseline: one thread read()s frames straight from the macvtap fd while the peer sends."""
        if size == TSO_LABEL:
            raise ConfigError("rx at 64k: the peer (an AF_PACKET socket) cannot send frames above its MTU")
        self.link.set_vnet_hdr_len(HDR)
        buf = ffi.new("uint8_t[]", 1 << 17)
        st = ffi.new("struct vnb_raw_stats *")
        kernel0 = self._kernel_drops(self.link)
        meter = _Meter("reader", {}).start()
        finish = self._send_async(size, count, pace_ns, senders=senders)
        timeout_ms = int(RX_IDLE_S * 1000)
        n = max(lib.vnb_raw_read_loop_ex(self.link.fd, buf, 1 << 17, count, timeout_ms, st), 0)
        sender = finish()
        cpu = meter.stop()
        cpu["peer_sender"] = sender.get("cpu_ns", 0)
        if "error" in sender:
            raise sender["error"]
        dt = st.elapsed_ns / 1e9
        if n < count:
            dt = max(dt - timeout_ms / 1000, 1e-9)   # the loop ended by waiting out its idle timeout
        pps, gbps = _rate(n, size, dt)
        pp, cpu_pp = _per_packet(n, {"syscalls": n + 2 * st.eagain}, {}, cpu,
                                 peer_syscalls=sender.get("syscalls", 0) + sender.get("retries", 0),
                                 sleeps=_raw_sleeps(meter))
        return RunResult("raw", "rx" if senders == 1 else "rxsat", size, n, dt, pps, gbps,
                         offered=sender.get("sent", 0), per_packet=pp, cpu_ns=cpu_pp,
                         drops={**_delta(self._kernel_drops(self.link), kernel0),
                                "lost": max(sender.get("sent", 0) - n, 0)},
                         options={} if senders == 1 else {"senders": senders})

    # --- VM to VM: guest A -> bridge-mode macvtap pair -> guest B ---
    def vm2vm(self, datapath: str, size: int | str, count: int, *, queue_size: int = 256, event_idx: bool = True,
              busyloop_us: int = 0) -> RunResult:
        kw = dict(queue_size=queue_size, event_idx=event_idx, busyloop_us=busyloop_us)
        link_b = self.link_b
        with self.guest(datapath, **kw) as (dev_a, ga), self.guest(datapath, link=link_b, **kw) as (dev_b, gb):
            tso = size == TSO_LABEL
            frame, flood, nbytes, bits = guest_frame(size, link_b.mac, self.link.mac, dict(tagged=True))
            links0 = (self.link.stats(), link_b.stats())
            s0 = [d.stats() for d in (dev_a, dev_b)] + [g.stats() for g in (ga, gb)]
            out: dict = {}
            ready = threading.Event()

            def receive() -> None:
                c0 = time.thread_time_ns()
                ready.set()
                try:
                    # A super-frame is TCP, not a tagged frame: count it, check nothing.
                    out["got"], out["ooo"], out["bad"], out["t_last"] = receive_all(
                        gb, count, seq_offset=0 if tso else 14, verify=not tso)
                except Exception as e:  # reported by the caller
                    out["error"] = e
                finally:
                    out["cpu_ns"] = time.thread_time_ns() - c0

            meter = _Meter("guest_a", _dev_threads({"datapath_a": dev_a, "datapath_b": dev_b}),
                           [dev_a, dev_b]).start()
            th = threading.Thread(target=receive, name="vnetbe-guest-b")
            th.start()
            ready.wait()
            t0 = time.perf_counter()
            try:
                sent = _flood(ga, frame, count, **flood)
                ga.drain_tx()
            finally:
                th.join()
            cpu = meter.stop()
            cpu["guest_b"] = out.get("cpu_ns", 0)
            if "error" in out:
                raise out["error"]
            s1 = [d.stats() for d in (dev_a, dev_b)] + [g.stats() for g in (ga, gb)]
            la, lb = self.link.stats() - links0[0], link_b.stats() - links0[1]
        got = out["got"]
        dt = out["t_last"] - t0
        dstats = _add(_delta(s1[0], s0[0]), _delta(s1[1], s0[1]))
        gstats = _add(_delta(s1[2], s0[2]), _delta(s1[3], s0[3]))
        pps, gbps = _rate(got, nbytes, dt, bits)
        pp, cpu_pp = _per_packet(got, dstats, gstats, cpu)
        drops = dict(dstats.get("drops", {}))
        drops.update({"macvtap_queue": la.tx_dropped + lb.rx_dropped, "lost": max(sent - got, 0),
                      "bad": out["bad"]})
        return RunResult(datapath, "vm2vm", nbytes, got, dt, pps, gbps, offered=sent, per_packet=pp, cpu_ns=cpu_pp,
                         drops=drops, options=self._options(queue_size, ga.event_idx, busyloop_us, size,
                                                            out_of_order=out["ooo"]))

    # --- request/response: peer -> guest -> peer, one frame at a time ---
    def _rr_peer(self, size: int, count: int, warmup: int, dst: bytes, timeout: float = 1.0
                 ) -> tuple[list[int], int, int]:
        """The peer's side, on the calling thread, in C (vnb_peer_rr): returns (round-trip ns of the
        measured ones, syscalls, CPU ns of this thread)."""
        req = packet.tagged_frame(0, size, dst, self.peer_mac, flow=RR_FLOW)
        total = warmup + count
        rtt = ffi.new("int64_t[]", max(total, 1))
        st = ffi.new("struct vnb_rr_stats *")
        c0 = time.thread_time_ns()
        n = lib.vnb_peer_rr(self.peer.sock.fileno(), req, len(req), 0, 14, total, int(timeout * 1000), rtt, st)
        cpu = time.thread_time_ns() - c0
        if n < 0:
            raise VnetError(f"rr: the peer's loop refused its arguments (errno {-n})")
        if n < total:
            why = "no reply" if st.err == errno.ETIMEDOUT else os.strerror(st.err)
            raise VnetError(f"rr: {why} for request {n} within {timeout:g} s "
                            f"({max(n - warmup, 0)} round trips measured)")
        return [rtt[i] for i in range(warmup, total)], int(st.syscalls), cpu

    @staticmethod
    def _latency(rtts: list[int]) -> dict:
        xs = sorted(rtts)
        return {"p50_us": nearest_rank(xs, 50) / 1e3, "p99_us": nearest_rank(xs, 99) / 1e3, "min_us": xs[0] / 1e3,
                "max_us": xs[-1] / 1e3, "mean_us": statistics.fmean(xs) / 1e3, "round_trips": len(xs)}

    def _rr_measure(self, responder, size: int, count: int, warmup: int, meter: _Meter) -> tuple:
        """Run ``responder(stop, out)`` in a thread while this thread is the peer. Returns
        (rtts, peer syscalls, cpu dict, seconds, responder's out)."""
        self.peer.flush()   # frames queued on the peer socket by earlier scenarios
        stop = ffi.new("int *")   # the responder's C loop polls it: 1 = stop
        out: dict = {}
        th = threading.Thread(target=responder, args=(stop, out), name="vnetbe-rr-responder")
        meter.start()
        th.start()
        try:
            t0 = time.perf_counter()
            rtts, syscalls, peer_cpu = self._rr_peer(size, count, warmup, self.link.mac)
            dt = time.perf_counter() - t0
        except BaseException:
            stop[0] = 1
            th.join()
            if "error" in out:
                raise out["error"] from None
            raise
        stop[0] = 1
        th.join()
        cpu = meter.stop()
        cpu["peer"] = peer_cpu
        if "error" in out:
            raise out["error"]
        # Warm-up round trips are in dt and in the counters: scale them out evenly.
        return rtts, syscalls, cpu, dt, out

    def rr(self, datapath: str, size: int, count: int, *, queue_size: int = 256, event_idx: bool = True,
           busyloop_us: int = 0, warmup: int = 50) -> RunResult:
        if size == TSO_LABEL:
            raise ConfigError("rr at 64k: the peer (an AF_PACKET socket) cannot send frames above its MTU")
        with self.guest(datapath, queue_size=queue_size, event_idx=event_idx, busyloop_us=busyloop_us) as (dev, g):
            reply = packet.tagged_frame(0, size, self.peer_mac, dev.link.mac, flow=RR_FLOW)

            def respond(stop, out: dict) -> None:
                c0 = time.thread_time_ns()
                try:
                    g.echo(reply, stop=stop, idle=RR_IDLE_S)   # answers every request until stop
                except Exception as e:  # reported by the caller
                    out["error"] = e
                finally:
                    out["cpu_ns"] = time.thread_time_ns() - c0

            dev0, g0 = dev.stats(), g.stats()
            meter = _Meter(None, _dev_threads({"datapath": dev}), [dev])
            rtts, psys, cpu, dt, out = self._rr_measure(respond, size, count, warmup, meter)
            cpu["guest"] = out["cpu_ns"]
            dstats, gstats = _delta(dev.stats(), dev0), _delta(g.stats(), g0)
        return self._rr_result(datapath, size, count, warmup, rtts, psys, cpu, dt, dstats, gstats,
                               self._options(queue_size, event_idx, busyloop_us, size))

    def raw_rr(self, size: int, count: int, warmup: int = 50) -> RunResult:
        """Baseline: a thread answers straight on the macvtap fd (poll, read, write): what rr costs
        without a virtio device in the way, with the same C loops on both ends as the device's rr."""
        if size == TSO_LABEL:
            raise ConfigError("rr at 64k: the peer (an AF_PACKET socket) cannot send frames above its MTU")
        self.link.set_vnet_hdr_len(HDR)
        self.link.set_offload(0)
        fd = self.link.fd
        reply = bytes(HDR) + packet.tagged_frame(0, size, self.peer_mac, self.link.mac, flow=RR_FLOW)

        def respond(stop, out: dict) -> None:
            c0 = time.thread_time_ns()
            st = ffi.new("struct vnb_rr_stats *")
            try:
                n = lib.vnb_raw_echo(fd, reply, len(reply), HDR, HDR + 14, 1 << 62, int(RR_IDLE_S * 1000),
                                     stop, st)
                if n < 0 or st.err:
                    raise VnetError(f"rr: the raw responder stopped: {os.strerror(st.err or -n)}")
            except Exception as e:  # reported by the caller
                out["error"] = e
            finally:
                out.update(syscalls=int(st.syscalls), cpu_ns=time.thread_time_ns() - c0)

        rtts, psys, cpu, dt, out = self._rr_measure(respond, size, count, warmup, _Meter(None, {}))
        cpu["responder"] = out["cpu_ns"]
        return self._rr_result("raw", size, count, warmup, rtts, psys, cpu, dt, {"syscalls": out["syscalls"]}, {},
                               {})

    def _rr_result(self, datapath, size, count, warmup, rtts, psys, cpu, dt, dstats, gstats, options) -> RunResult:
        total = count + warmup
        scale = count / total   # counters and time include the warm-up round trips
        cpu = {k: v * scale for k, v in cpu.items()}
        dstats = {k: v * scale for k, v in dstats.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        gstats = {k: v * scale for k, v in gstats.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        secs = dt * scale
        pps, gbps = _rate(len(rtts), size, secs, 2 * size * 8)
        pp, cpu_pp = _per_packet(len(rtts), dstats, gstats, cpu, peer_syscalls=psys * scale)
        return RunResult(datapath, "rr", size, len(rtts), secs, pps, gbps, offered=count, per_packet=pp,
                         cpu_ns=cpu_pp, options={**options, "per": "round trip"}, latency=self._latency(rtts))

    # --- dispatch ---
    def run(self, scenario: str, datapath: str, size: int | str, count: int, **opts) -> RunResult:
        """One run of ``scenario`` on ``datapath`` ("raw" = the baseline, where there is one)."""
        if scenario not in SCENARIOS:
            raise ConfigError(f"unknown scenario {scenario!r}: choose from {', '.join(SCENARIOS)}")
        if not supported(scenario, size):
            raise ConfigError(f"{scenario} at {size}: the peer (AF_PACKET) cannot send frames above its MTU")
        if datapath == "raw":
            fn = {"tx": self.raw_tx, "rx": self.raw_rx, "rr": self.raw_rr,
                  "rxsat": lambda size, count: self.raw_rx(size, count, senders=SAT_SENDERS)}.get(scenario)
            if fn is None:
                raise ConfigError(f"{scenario} has no raw baseline")
            return fn(size, count)
        return getattr(self, scenario)(datapath, size, count, **opts)


def has_baseline(scenario: str) -> bool:
    return scenario in ("tx", "rx", "rxsat", "rr")


def summarize(runs: list[RunResult]) -> dict:
    """Median of repeated runs with min and max, in the shape of ``vnetbe bench --json`` results.
    The per-packet counts and per-thread CPU are those of the median run (by pps)."""
    pps = [r.pps for r in runs]
    mid = sorted(runs, key=lambda r: r.pps)[len(runs) // 2]
    out = {
        "datapath": mid.datapath, "scenario": mid.scenario, "size": mid.size, "size_label": size_label(mid),
        "pps": statistics.median(pps), "gbps": statistics.median([r.gbps for r in runs]),
        "pps_min": min(pps), "pps_max": max(pps), "runs": len(runs),
        "frames": mid.frames, "offered": mid.offered,
        "per_packet": mid.per_packet, "cpu_ns_per_packet": mid.cpu_ns, "drops": mid.drops,
        "options": mid.options,
    }
    if mid.scenario == "rr":
        for k in ("p50_us", "p99_us"):
            xs = [r.latency[k] for r in runs]
            out[k] = statistics.median(xs)
            out[k + "_min"], out[k + "_max"] = min(xs), max(xs)
        out["latency"] = mid.latency
    return out
