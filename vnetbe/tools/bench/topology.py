"""The bench's topology: a throwaway namespace, a veth whose root end is the parent of bridge-mode
macvtaps, and the peer inside the namespace; devices and guests made on it; one run of a scenario."""
from __future__ import annotations

import functools
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from ... import spec
from ...device import VirtioNet
from ...dirtylog import DirtyLog
from ...errors import ConfigError
from ...memory import GuestMemory
from ..guest import DEFAULT_FEATURES, GuestDriver
from ..peer import Peer
from ..results import SCENARIOS, TSO_LABEL, supported
from ..topology import Topology
from . import rr as _rr
from . import rx as _rx
from . import tx as _tx
from . import vm2vm as _vm2vm
from .frames import SAT_SENDERS, TSO_MSS, TSO_PAYLOAD
from .measure import RunResult, add
from .pinning import pin_tids, pinned


class BenchTopology:
    """Namespace + veth + bridge-mode macvtaps + a Peer on the far end, all named vnb<tag>*.

    ``link`` (vnb<tag>m0) carries tx, rx and rr; ``link_b`` (vnb<tag>m1, made on first use) is the
    second guest's macvtap in vm2vm."""

    def __init__(self, tag: str = "B", mtu: int = 9000, mode: str = "bridge", pin: dict | None = None):
        self.topo = Topology(tag, mtu=mtu)
        self.mode = mode
        self.pin = pin or {}          # role -> cpu (pinning.py); empty: the scheduler places threads
        self.pin_failed: list[str] = []
        self.dirty_log = False        # the run's devices log their writes (the dirty_log option) ...
        self.logged_pages = 0         # ... and this many pages were in their logs at the end
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

    # The scenarios, one module each; their functions take the topology as ``self``.
    tx, tx_run, tx_pairs_run, raw_tx = _tx.tx, _tx.tx_run, _tx.tx_pairs_run, _tx.raw_tx
    rx, rx_run, rxsat, raw_rx = _rx.rx, _rx.rx_run, _rx.rxsat, _rx.raw_rx
    vm2vm = _vm2vm.vm2vm
    rr, raw_rr = _rr.rr, _rr.raw_rr
    _rr_peer, _latency, _rr_measure, _rr_result = _rr._rr_peer, staticmethod(_rr._latency), _rr._rr_measure, _rr._rr_result

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
        # The guest's own default (split rings): the ring format is the ``ring`` option, never implied.
        f = DEFAULT_FEATURES
        if not event_idx:
            f &= ~spec.bit(spec.VIRTIO_RING_F_EVENT_IDX)
        return f

    @contextmanager
    def guest(self, datapath: str, *, link=None, queue_size: int = 256, event_idx: bool = True,
              busyloop_us: int = 0, ring: str = "split") -> Iterator[tuple[VirtioNet, GuestDriver]]:
        """A started device on ``link`` (default ``self.link``) with its GuestDriver; closed after. With
        a placement the device's threads and the calling (guest) thread are pinned meanwhile."""
        mem, dev = self.device(datapath, link=link, busyloop_us=busyloop_us)
        with mem, self._dirty_log(mem) as log, dev:
            if log is not None:
                dev.start_dirty_log(log)
            g = GuestDriver(dev, queue_size=queue_size, features=self._features(event_idx), packed=ring == "packed")
            self.pin_failed += pin_tids(dev.threads(), self.cpu("device"))
            with pinned(self.cpu("guest")):
                yield dev, g

    @contextmanager
    def guest_pairs(self, datapath: str, queues: int, *, queue_size: int = 256, event_idx: bool = True,
                    busyloop_us: int = 0, ring: str = "split") -> Iterator[tuple[VirtioNet, list[GuestDriver]]]:
        """A started device of ``queues`` pairs, every pair running (as after a driver's VQ_PAIRS_SET),
        with a GuestDriver per pair; the macvtap gets a queue per pair. Nothing is pinned: a placement
        of one device thread and one guest thread says nothing of 2N of them (``options.pin`` is absent)."""
        mem, dev = self.device(datapath, busyloop_us=busyloop_us, queues=queues)
        try:
            with mem, self._dirty_log(mem) as log, dev:
                if log is not None:
                    dev.start_dirty_log(log)
                feats = self._features(event_idx) | spec.MQ_FEATURES
                gs = [GuestDriver(dev, queue_size=queue_size, features=feats, packed=ring == "packed", start=False)]
                gs += [GuestDriver(dev, pair=p, queue_size=queue_size, start=False) for p in range(1, queues)]
                dev.set_queue_pairs(queues)
                dev.start()
                yield dev, gs
        finally:
            # The link goes back to one attached queue: the next scenario's reader (the raw loops read
            # link.fd) would otherwise miss the frames the kernel steers to a queue left open.
            self.link.set_queues(1)
            self.link.set_queue_attached(0, True)

    @contextmanager
    def _dirty_log(self, mem) -> Iterator[DirtyLog | None]:
        """With the ``dirty_log`` option on: a log over the device's memory, as during a live migration's
        pre-copy. Nobody harvests it during the run: what is measured is the device writing it. The pages
        it holds at the end are counted in ``logged_pages`` (the run's options show them)."""
        if not self.dirty_log:
            yield None
            return
        with DirtyLog.for_memory(mem) as log:
            try:
                yield log
            finally:
                self.logged_pages += len(log.dirty_pages())

    def cpu(self, role: str) -> int | None:
        return self.pin.get(role)

    def _options(self, queue_size: int, event_idx: bool, busyloop_us: int, size, *, packed: bool = False,
                 **extra) -> dict:
        o = {"queue_size": queue_size, "event_idx": event_idx, "busyloop_us": busyloop_us,
             "ring": "packed" if packed else "split"}
        if self.dirty_log:
            o["dirty_log"] = True
        if self.pin:
            o["pin"] = dict(self.pin)
        if size == TSO_LABEL:
            o.update({"tso": True, "gso": "tcpv4", "mss": TSO_MSS, "payload": TSO_PAYLOAD})
        o.update(extra)
        return o

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
                with pinned(self.cpu("peer")):
                    parts[k].update(self.peer.send_tagged(max(min(share, count - first), 0), size,
                                                          dst or self.link.mac, self.peer_mac, pace_ns=pace_ns,
                                                          first_seq=first))
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
            return functools.reduce(add, parts, {})
        return finish

    # --- dispatch ---
    def run(self, scenario: str, datapath: str, size: int | str, count: int, **opts) -> RunResult:
        """One run of ``scenario`` on ``datapath`` ("raw" = the baseline, where there is one)."""
        if scenario not in SCENARIOS:
            raise ConfigError(f"unknown scenario {scenario!r}: choose from {', '.join(SCENARIOS)}")
        if not supported(scenario, size):
            raise ConfigError(f"{scenario} at {size}: the peer (AF_PACKET) cannot send frames above its MTU")
        self.dirty_log, self.logged_pages = bool(opts.pop("dirty_log", False)), 0
        if datapath == "raw":
            fn = {"tx": self.raw_tx, "rx": self.raw_rx, "rr": self.raw_rr,
                  "rxsat": lambda size, count: self.raw_rx(size, count, senders=SAT_SENDERS)}.get(scenario)
            if fn is None:
                raise ConfigError(f"{scenario} has no raw baseline")
            return fn(size, count)
        result = getattr(self, scenario)(datapath, size, count, **opts)
        if self.dirty_log:
            result.options["dirty_pages"] = self.logged_pages
        return result
