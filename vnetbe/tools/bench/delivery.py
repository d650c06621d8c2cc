"""What arrived and where the rest went: the peer's receiver for TX runs, the kernel's drop counters
on the way (macvtap, the veth pair, the peer's socket), and the accounting every throughput result
carries: ``offered == delivered + sum(drops)``, where ``drops["unaccounted"]`` is whatever no
counter explains (negative only if more frames arrived than were offered, duplicates say)."""
from __future__ import annotations

import threading
import time

from .frames import RX_IDLE_S
from .measure import delta, ns_link_stats, root_link_stats
from .pinning import pinned

UNACCOUNTED = "unaccounted"


def kernel_counters(bt, link) -> dict:
    """The raw drop counters of every kernel queue a bench frame passes, either direction:
    ``kernel_drops`` turns two readings into drops by reason."""
    m = link.stats()
    parent = root_link_stats(bt.topo.parent)
    peer = ns_link_stats(bt.topo, bt.topo.peer)
    return {"macvtap_tx": m.tx_dropped, "macvtap_rx": m.rx_dropped,
            "parent_tx": parent.get("tx_dropped", 0), "parent_rx": parent.get("rx_dropped", 0),
            "peer_tx": peer.get("tx_dropped", 0), "peer_rx": peer.get("rx_dropped", 0)}


TX_KERNEL = ("macvtap_tx_queue", "veth_to_peer")
RX_KERNEL = ("macvtap_rx_queue", "veth_from_peer")


def kernel_drops(before: dict, after: dict, keys: tuple[str, ...]) -> dict:
    """Drops by reason between two kernel_counters readings. On a macvtap what the fd writes is
    *transmitted* (tx_dropped: macvlan could not queue it on the veth); what the fd should read but
    had no room for is rx_dropped (its ptr_ring full)."""
    d = delta(after, before)
    # A frame veth_xmit refuses (partner's backlog full, too long for its MTU) is counted by the
    # sending end (tx_dropped) and, from Linux 6.x, by the partner too (rx_dropped): one drop, not two.
    to_peer = max(d["parent_tx"], d["peer_rx"])
    from_peer = max(d["peer_tx"], d["parent_rx"])
    # macvlan counts a frame the veth refused as its own tx_dropped as well: only the rest is its own.
    out = {"macvtap_tx_queue": max(d["macvtap_tx"] - to_peer, 0), "macvtap_rx_queue": d["macvtap_rx"],
           "veth_to_peer": to_peer, "veth_from_peer": from_peer}
    return {k: out[k] for k in keys}


def account(offered: int, delivered: int, named: dict, kernel: dict | None = None) -> tuple[dict, dict]:
    """(drops, foreign). drops: by reason, zero reasons left out, plus the residual that makes
    ``offered == delivered + sum(drops)`` exact. ``named`` are the bench's own counts (the device's,
    damaged frames); ``kernel`` are interface and socket counters, which also count frames that were
    not the bench's (a VMM's or the host's own traffic on the same interface): each is attributed up to
    what is still missing, in order, and any excess is returned as ``foreign``, not hidden."""
    out = {k: int(v) for k, v in named.items() if v}
    foreign = {}
    missing = offered - delivered - sum(out.values())
    for k, v in (kernel or {}).items():
        take = max(min(int(v), missing), 0)
        if take:
            out[k] = take
            missing -= take
        if v > take:
            foreign[k] = int(v) - take
    if missing:
        out[UNACCOUNTED] = missing
    return out, foreign


class PeerReceiver:
    """Counts the run's tagged frames (flow 0, every byte checked) at the peer's AF_PACKET socket in a
    thread of its own, started before the first frame is sent. ``finish()`` waits until ``count``
    frames arrived or none came for ``idle`` s and returns the peer's figures: got, bad,
    duplicates, t_last_ns (CLOCK_MONOTONIC of the last frame), tp_drops (the socket's own drops)."""

    def __init__(self, peer, count: int, idle: float = RX_IDLE_S, cpu: int | None = None):
        self.peer, self.count, self.idle, self.cpu = peer, count, idle, cpu
        self.out: dict = {}
        peer.flush()   # stale frames of an earlier run must not count for this one
        self._ready = threading.Event()
        self._th = threading.Thread(target=self._run, name="vnetbe-peer-receiver")
        self._th.start()
        self._ready.wait()

    def _run(self) -> None:
        c0 = time.thread_time_ns()
        self._ready.set()
        try:
            with pinned(self.cpu):
                self.out.update(self.peer.recv_tagged(self.count, timeout=self.idle))
        except Exception as e:  # reported by finish()
            self.out["error"] = e
        finally:
            self.out["cpu_ns"] = time.thread_time_ns() - c0

    def finish(self) -> dict:
        self._th.join()
        if "error" in self.out:
            raise self.out["error"]
        return self.out
