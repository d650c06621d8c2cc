"""The embedding door: a VMM describes its queues itself (no GuestDriver) and brings its own memory fds."""
from __future__ import annotations

import os
import struct
import time

from vnbtest.fakelink import PairLink

from vnetbe import spec
from vnetbe.cputime import thread_cpu_ns
from vnetbe.device import VirtioNet
from vnetbe.memory import GuestMemory
from vnetbe.queue import QueueConfig
from vnetbe.tools.guest import GuestDriver
from vnbtest.device import DeviceRig
from vnbtest.wait import wait_for


def _vmm_memory(size: int) -> tuple[GuestMemory, int]:
    fd = os.memfd_create("vmm-guest-ram", os.MFD_CLOEXEC)
    os.ftruncate(fd, size)
    return GuestMemory.from_fds([(0x10000000, size, fd, 0)]), fd


def test_vmm_supplied_tx_queue_transmits_from_vmm_memory_and_idle_rx_does_not_spin():
    mem, memfd = _vmm_memory(1 << 20)
    base = 0x10000000
    num, desc, avail, used, buf = 8, base, base + 0x1000, base + 0x2000, base + 0x3000
    kick, call = os.eventfd(0, os.EFD_NONBLOCK), os.eventfd(0, os.EFD_NONBLOCK)
    try:
        with PairLink() as link, VirtioNet(mem, link) as dev:
            dev.set_driver_features(spec.bit(spec.VIRTIO_F_VERSION_1))
            dev.set_queue(spec.TX_QUEUE, QueueConfig(num, desc, avail, used, kick, call))
            dev.start()
            # Frames waiting on the tap while the VMM has no RX queue must not make the thread spin.
            for _ in range(4):
                link.inject(b"\x01" * 60)
            tid = dev.threads()[0]
            cpu0 = thread_cpu_ns(tid)
            time.sleep(0.3)
            assert thread_cpu_ns(tid) - cpu0 < 50_000_000

            # The VMM's own guest driver posts one frame: header + payload in one descriptor.
            frame = bytes(range(64))
            mem.write(buf, bytes(12) + frame)
            mem.write(desc, struct.pack("<QIHH", buf, 12 + len(frame), 0, 0))
            mem.write(avail + 4, struct.pack("<H", 0))
            mem.write(avail + 2, struct.pack("<H", 1))
            os.eventfd_write(kick, 1)
            assert link.sent(2.0) == bytes(12) + frame
            deadline = time.monotonic() + 2
            while struct.unpack("<H", mem.read(used + 2, 2))[0] != 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert struct.unpack("<HHII", mem.read(used, 12)) == (0, 1, 0, 0)
            assert dev.stats()["tx_frames"] == 1
    finally:
        mem.close()
        for fd in (kick, call, memfd):
            os.close(fd)


def test_config_space_is_the_specs_virtio_net_config():
    with GuestMemory(1 << 20) as mem, PairLink() as link, VirtioNet(mem, link, mac="02:11:22:33:44:55",
                                                                     mtu=9000) as dev:
        cfg = dev.config_space()
        # §5.1.4: mac[6], le16 status, le16 max_virtqueue_pairs, le16 mtu, le32 speed, u8 duplex, u8
        # rss_max_key_size, le16 rss_max_indirection_table_length, le32 supported_hash_types.
        assert cfg == (bytes.fromhex("021122334455") + struct.pack("<HHH", spec.VIRTIO_NET_S_LINK_UP, 1, 9000)
                       + struct.pack("<IBBHI", 0xFFFFFFFF, 0xFF, 0, 0, 0))
        assert len(cfg) == 24


def test_reset_after_a_guest_fault_gives_a_device_the_next_driver_can_use():
    rig = DeviceRig(GuestMemory(64 << 20), queue_size=64)
    try:
        num, desc, avail, _ = rig.guest.rings[spec.TX_QUEUE]
        mem = rig.mem
        mem.write(desc, struct.pack("<QIHH", 1 << 40, 100, 0, 0))      # outside guest memory
        mem.write(avail + 4, struct.pack("<H", 0))
        mem.write(avail + 2, struct.pack("<H", 1))
        os.eventfd_write(rig.guest.kick_fd[spec.TX_QUEUE], 1)
        assert rig.dev.wait_fault(2.0) is not None
        assert rig.dev.status & spec.DEVICE_NEEDS_RESET
        faults_before = rig.dev.stats()["faults"]

        rig.dev.reset()
        assert rig.dev.status == 0 and not rig.dev.running and rig.dev.queues == {}
        assert rig.dev.driver_features == 0
        rig.dev.check()                                          # the fault is history
        guest = GuestDriver(rig.dev, queue_size=64)              # a new driver negotiates afresh
        frame = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + b"after-reset" * 5
        guest.send(frame)
        assert rig.link.sent(2.0)[12:] == frame
        assert not rig.dev.status & spec.DEVICE_NEEDS_RESET
        assert wait_for(lambda: rig.dev.stats()["tx_frames"] >= 1)
        assert rig.dev.stats()["faults"] == faults_before          # counters carry on across the reset
    finally:
        rig.close()
