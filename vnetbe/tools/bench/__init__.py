"""The bench: traffic scenarios shared by ``vnetbe bench``, the pytest-benchmark files in bench/ and the tests.

A ``BenchTopology`` is a throwaway namespace with a veth whose root end is the parent of bridge-mode
macvtaps, and whose other end (inside the namespace) is "the network": a Peer that sends and counts
frames. Each scenario returns a ``RunResult`` with rates, per-packet counts and the CPU time of every
thread involved (datapath thread or vhost worker, guest thread(s), the peer's thread), measured in the
same run as its baseline.

Scenarios (``SCENARIOS``):

- ``tx``: the guest floods tagged frames to the peer, which checks every byte; rate = frames delivered
  at the peer / time from the first sent to the last received (what the device consumed is
  ``options.consumed_pps``). Baseline ``raw_tx``: one thread write()s the same frames, each built
  fresh, to the macvtap fd, towards the same receiver.
- ``rx``: the peer floods tagged frames to the guest; rate = frames the guest got / time to the last
  one. Baseline ``raw_rx``: one thread read()s them from the macvtap fd.
- ``rxsat``: ``rx`` under saturating load: more peer threads than CPUs send at once, more than the
  path carries. They share the peer's socket, whose send buffer holds them back (a queued skb is
  charged to its sender until the reader frees it), so the tap's queue stays well filled and little
  or nothing is dropped; what is, the kernel counts (drops ``macvtap_rx_queue``, ``veth_from_peer``).
  This is where notification suppression shows: kicks and interrupts per frame. Baseline
  ``raw_rx`` with the same senders.
- ``vm2vm``: guest A floods tagged frames to guest B's MAC through two bridge-mode macvtaps of one
  parent (each guest has its own memory, device and driver); B checks every byte; rate = frames B
  got / time. No baseline.
- ``rr``: request/response. The peer sends one small tagged frame, the guest receives it and sends a
  reply, the peer receives that; ``count`` round trips, one at a time. Reports p50/p99 latency in µs;
  the rate is round trips per second and the per-packet counts are per round trip. Baseline
  ``raw_rr``: the same with a thread answering straight on the macvtap fd.

Every throughput result accounts for every frame offered: delivered, or in ``drops`` by reason, with
``unaccounted`` for what no counter explains (``delivery.py``). ``pinning.py`` places the threads.

Sizes are Ethernet frame bytes without FCS (26 .. 9014 on the default MTU 9000), or ``"64k"``: one
65535-byte TCP/IPv4 frame sent with TSO (``gso=("tcpv4", 1448)``, checksum offload): pps counts
these super-frames and Gbit/s their TCP payload. ``64k`` exists for ``tx`` and ``vm2vm`` only: the
peer is an AF_PACKET socket, which cannot send a frame larger than its MTU.
"""
from __future__ import annotations

from .frames import SAT_SENDERS, guest_frame, receive_all, tso_frame
from .measure import RunResult, summarize
from .topology import BenchTopology

__all__ = ["BenchTopology", "RunResult", "SAT_SENDERS", "guest_frame", "receive_all", "summarize", "tso_frame"]
