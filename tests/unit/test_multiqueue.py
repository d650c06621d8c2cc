"""Multiqueue (VIRTIO 1.2 §5.1.6.5) on the userspace datapaths: a device of N queue pairs, each pair its
own C thread and its own link queue, driven by one GuestDriver per pair over a socketpair "tap" per
queue. Runs once per userspace datapath (conftest)."""
from __future__ import annotations

import os
import struct

import pytest

from vnetbe import spec
from vnetbe.device import VirtioNet
from vnetbe.errors import ConfigError
from vnetbe.memory import GuestMemory
from vnetbe.queue import QueueConfig
from vnetbe.tools.guest import GuestDriver
from vnbtest import device
from vnbtest.fakelink import PairLink


def frame(pair: int, seq: int, size: int = 200) -> bytes:
    head = bytes.fromhex("020000000002" "020000000001") + b"\x88\xb5" + struct.pack("<HI", pair, seq)
    return head + bytes((pair * 31 + seq + i) & 0xFF for i in range(size - len(head)))


class MqRig:
    def __init__(self, pairs: int, run: int | None = None, datapath: str | None = None):
        self.mem = GuestMemory(64 << 20)
        self.link = PairLink()
        self.dev = VirtioNet(self.mem, self.link, datapath=datapath or device.datapath, queues=pairs)
        self.guests = []
        try:
            for p in range(pairs):
                self.guests.append(GuestDriver(self.dev, pair=p, start=False, queue_size=64))
            if run is not None:
                self.dev.set_queue_pairs(run)
            self.dev.start()
        except BaseException:
            self.close()
            raise

    def close(self):
        self.dev.close()
        self.link.close()
        self.mem.close()


@pytest.fixture
def rigs():
    made = []

    def make(*a, **kw):
        made.append(MqRig(*a, **kw))
        return made[-1]
    yield make
    for r in made:
        r.close()


def _exchange_on_every_pair(rig, pairs: int, n: int = 20) -> None:
    hdr = rig.dev.hdr_len
    for p in range(pairs):
        for i in range(n):
            rig.guests[p].send(frame(p, i))
        rig.guests[p].drain_tx()
        q = rig.link.queue(p)
        for i in range(n):
            got = q.sent(2.0)
            assert got is not None and got[hdr:] == frame(p, i), (p, i)
        for i in range(n):
            q.inject(frame(p, 1000 + i), bytes(hdr))
        for i in range(n):
            assert rig.guests[p].receive(2.0) == frame(p, 1000 + i), (p, i)


@pytest.mark.parametrize("pairs", [2, 4])
def test_every_pair_moves_its_own_frames_byte_for_byte_on_its_own_link_queue(rigs, pairs):
    rig = rigs(pairs, run=pairs)
    _exchange_on_every_pair(rig, pairs)
    s = rig.dev.stats()
    assert s["queue_pairs"] == pairs and len(s["pairs"]) == pairs
    for p in range(pairs):
        assert (s["pairs"][p]["tx_frames"], s["pairs"][p]["rx_frames"]) == (20, 20), (p, s["pairs"])
    assert (s["tx_frames"], s["rx_frames"]) == (20 * pairs, 20 * pairs)
    assert len(set(rig.dev.threads())) == pairs   # a thread per pair


def test_only_the_first_pair_runs_until_the_driver_sets_more(rigs):
    rig = rigs(2)
    hdr = rig.dev.hdr_len
    rig.guests[1].send(frame(1, 0))
    assert rig.link.queue(1).sent(0.3) is None       # pair 1 is not served yet
    assert rig.dev.stats()["pairs"][1]["tx_frames"] == 0
    assert rig.link.attached.get(1) is False          # and the kernel steers nothing to its queue
    rig.dev.set_queue_pairs(2)
    got = rig.link.queue(1).sent(2.0)                 # the frame it posted goes out once it runs
    assert got is not None and got[hdr:] == frame(1, 0)
    assert rig.link.attached[1] is True
    rig.dev.set_queue_pairs(1)                         # ethtool -L combined 1
    assert rig.link.attached[1] is False
    _exchange_on_every_pair(rig, 1)


def test_pairs_keep_their_ring_positions_across_a_change_of_running_pairs(rigs):
    rig = rigs(2, run=2)
    _exchange_on_every_pair(rig, 2, n=10)
    rig.dev.set_queue_pairs(1)
    rig.dev.set_queue_pairs(2)
    _exchange_on_every_pair(rig, 2, n=10)
    s = rig.dev.stats()
    assert [p["tx_frames"] for p in s["pairs"]] == [20, 20]


def test_a_hand_over_between_userspace_datapaths_keeps_every_pair(rigs):
    rig = rigs(2, run=2, datapath="user")
    _exchange_on_every_pair(rig, 2, n=10)
    rig.dev.switch_datapath("uring")
    _exchange_on_every_pair(rig, 2, n=10)
    assert (rig.dev.stats()["tx_frames"], rig.dev.stats()["rx_frames"]) == (40, 40)


def test_the_device_offers_mq_and_says_its_pairs_in_the_config_space():
    with GuestMemory(1 << 20) as mem, PairLink() as link:
        one = VirtioNet(mem, link)
        try:
            assert not one.device_features & spec.bit(spec.VIRTIO_NET_F_MQ)   # one pair: no MQ to offer
            assert struct.unpack_from("<H", one.config_space(), 8)[0] == 1
        finally:
            one.close()
        four = VirtioNet(mem, link, queues=4)
        try:
            assert four.device_features & spec.MQ_FEATURES == spec.MQ_FEATURES
            assert struct.unpack_from("<H", four.config_space(), 8)[0] == 4
            assert len(link.queue_fds) == 4
        finally:
            four.close()


@pytest.mark.parametrize("queues", [0, spec.MAX_QUEUE_PAIRS + 1, "2"])
def test_a_pair_count_outside_the_documented_range_is_refused(queues):
    with GuestMemory(1 << 20) as mem, PairLink() as link:
        with pytest.raises(ConfigError, match="queue pairs"):
            VirtioNet(mem, link, queues=queues)


def test_queues_and_pair_counts_beyond_the_device_are_refused_by_name():
    with GuestMemory(1 << 20) as mem, PairLink() as link:
        dev = VirtioNet(mem, link, queues=2)
        try:
            cfg = QueueConfig(64, 0x1000, 0x2000, 0x3000, 0, 0)
            with pytest.raises(ConfigError, match=r"queues 0 \.\. 3"):
                dev.set_queue(5, cfg)
            with pytest.raises(ConfigError, match="control queue: negotiate VIRTIO_NET_F_CTRL_VQ"):
                dev.set_queue(4, cfg)              # 2N: the control queue, once CTRL_VQ is negotiated
            for n in (0, 3):
                with pytest.raises(ConfigError, match="1 .. 2"):
                    dev.set_queue_pairs(n)
            dev.set_driver_features(spec.DEVICE_FEATURES & dev.device_features)   # MQ not acked
            with pytest.raises(ConfigError, match="VIRTIO_NET_F_MQ"):
                dev.set_queue_pairs(2)
        finally:
            dev.close()


def test_a_pair_that_faulted_still_counts_after_the_driver_turns_it_off(rigs):
    rig = rigs(2, run=2)
    cfg = rig.dev.queues[3]                       # pair 1's TX ring: a head beyond the ring
    idx = struct.unpack("<H", rig.mem.read(cfg.avail + 2, 2))[0]
    rig.mem.write(cfg.avail + 4 + 2 * (idx % cfg.size), struct.pack("<H", cfg.size + 5))
    rig.mem.write(cfg.avail + 2, struct.pack("<H", (idx + 1) & 0xFFFF))
    os.eventfd_write(cfg.kick_fd, 1)
    assert rig.dev.wait_fault(2.0) is not None
    assert 3 in rig.dev.faults()
    rig.dev.set_queue_pairs(1)
    assert 3 in rig.dev.faults() and rig.dev.status & spec.DEVICE_NEEDS_RESET
