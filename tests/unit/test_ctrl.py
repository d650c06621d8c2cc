"""The control virtqueue (VIRTIO 1.2 §5.1.6.5) served by the device: VQ_PAIRS_SET, RX modes and MAC
commands carried onto the link, and every malformed or unsupported command answered VIRTIO_NET_ERR
with its own counter while the device goes on. Driven by vnetbe's GuestDriver over a socketpair link."""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vnetbe import spec
from vnetbe.ctrl import CTRL_ERRORS, check
from vnetbe.device import VirtioNet
from vnetbe.errors import ConfigError
from vnetbe.memory import GuestMemory
from vnetbe.tools.guest import GuestDriver
from vnbtest.fakelink import PairLink

OK, ERR = spec.VIRTIO_NET_OK, spec.VIRTIO_NET_ERR
RX, MAC, MQ, ANNOUNCE = spec.VIRTIO_NET_CTRL_RX, spec.VIRTIO_NET_CTRL_MAC, spec.VIRTIO_NET_CTRL_MQ, spec.VIRTIO_NET_CTRL_ANNOUNCE
FRAME = bytes.fromhex("020000000002" "020000000001") + b"\x88\xb5" + bytes(range(100))


def table(unicast, multicast) -> bytes:
    return (struct.pack("<I", len(unicast)) + b"".join(unicast)
            + struct.pack("<I", len(multicast)) + b"".join(multicast))


class CtrlRig:
    def __init__(self, pairs: int = 2, packed: bool = False):
        self.mem = GuestMemory(64 << 20)
        self.link = PairLink()
        self.dev = VirtioNet(self.mem, self.link, queues=pairs)
        try:
            self.guests = [GuestDriver(self.dev, ctrl=True, start=False, queue_size=64, packed=packed)]
            for p in range(1, pairs):
                self.guests.append(GuestDriver(self.dev, pair=p, start=False, queue_size=64))
            self.dev.start()
        except BaseException:
            self.close()
            raise

    @property
    def g(self):
        return self.guests[0]

    def moves_frames(self, pair: int = 0) -> bool:
        self.guests[pair].send(FRAME)
        got = self.link.queue(pair).sent(2.0)
        return got is not None and got[self.dev.hdr_len:] == FRAME

    def close(self):
        self.dev.close()
        self.link.close()
        self.mem.close()


@pytest.fixture(params=["split", "packed"])
def rig(request):
    r = CtrlRig(packed=request.param == "packed")
    yield r
    r.close()


def test_vq_pairs_set_runs_that_many_pairs_as_ethtool_combined_asks(rig):
    assert rig.dev.device_features & spec.bit(spec.VIRTIO_NET_F_MQ)
    assert rig.link.queue(1).sent(0.05) is None
    rig.guests[1].send(FRAME)
    assert rig.link.queue(1).sent(0.3) is None            # pair 1 waits for VQ_PAIRS_SET
    assert rig.g.set_queue_pairs(2) == OK
    assert rig.link.queue(1).sent(2.0)[rig.dev.hdr_len:] == FRAME
    assert rig.moves_frames(1) and rig.moves_frames(0)
    assert rig.g.set_queue_pairs(1) == OK                  # ethtool -L combined 1
    assert rig.dev.queue_pairs == 1 and rig.link.attached[1] is False
    assert rig.moves_frames(0)
    assert rig.dev.stats()["ctrl_commands"]["none"] == 2


def test_rx_modes_and_mac_commands_are_carried_onto_the_link(rig):
    assert rig.g.ctrl_command(RX, spec.VIRTIO_NET_CTRL_RX_PROMISC, b"\x01") == OK
    assert rig.g.ctrl_command(RX, spec.VIRTIO_NET_CTRL_RX_ALLMULTI, b"\x01") == OK
    assert rig.link.promisc and rig.link.allmulti
    assert rig.g.ctrl_command(RX, spec.VIRTIO_NET_CTRL_RX_PROMISC, b"\x00") == OK
    assert not rig.link.promisc
    mc = [bytes.fromhex("333300000001"), bytes.fromhex("01005e000001")]
    own = bytes.fromhex(rig.link.mac.replace(":", ""))
    assert rig.g.ctrl_command(MAC, spec.VIRTIO_NET_CTRL_MAC_TABLE_SET, table([own], mc)) == OK
    assert rig.link.multicast == mc
    assert rig.g.ctrl_command(MAC, spec.VIRTIO_NET_CTRL_MAC_ADDR_SET, bytes.fromhex("020000aabbcc")) == OK
    assert rig.link.mac == "02:00:00:aa:bb:cc" and rig.dev.config_space()[:6] == bytes.fromhex("020000aabbcc")


# (name, class, command, data): each refused with VIRTIO_NET_ERR and counted under its name.
HOSTILE = [
    ("class", 9, 0, b""),
    ("command", RX, 6, b"\x01"),
    ("command", MQ, 7, b""),
    ("size", RX, spec.VIRTIO_NET_CTRL_RX_PROMISC, b"\x01\x01"),
    ("size", MQ, spec.VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, b"\x02"),
    ("size", MAC, spec.VIRTIO_NET_CTRL_MAC_ADDR_SET, b"\x02\x00\x00"),
    ("pairs", MQ, spec.VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, struct.pack("<H", 0)),
    ("pairs", MQ, spec.VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, struct.pack("<H", 3)),
    ("pairs", MQ, spec.VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, struct.pack("<H", 0x8000)),
    ("mac_table", MAC, spec.VIRTIO_NET_CTRL_MAC_TABLE_SET, struct.pack("<I", 5) + bytes(6)),
    ("mac_table", MAC, spec.VIRTIO_NET_CTRL_MAC_TABLE_SET, table([], []) + b"\x00"),
    ("mac_table", MAC, spec.VIRTIO_NET_CTRL_MAC_TABLE_SET, struct.pack("<I", 0xFFFFFFFF)),
    ("mac_table", MAC, spec.VIRTIO_NET_CTRL_MAC_TABLE_SET, table([], [bytes.fromhex("020000000009")])),  # unicast as multicast
    ("unsupported", MAC, spec.VIRTIO_NET_CTRL_MAC_TABLE_SET, table([bytes.fromhex("020000000009")], [])),
    ("not_negotiated", RX, 2, b"\x01"),                   # ALLUNI needs CTRL_RX_EXTRA, not offered
    ("command", ANNOUNCE, 1, b""),                        # ANNOUNCE has only ACK (0)
    ("not_negotiated", 2, 0, b"\x01\x00"),                # VLAN
    ("not_negotiated", 5, 0, bytes(8)),                   # GUEST_OFFLOADS
    ("not_negotiated", MQ, 1, bytes(16)),                 # RSS_CONFIG
]


@pytest.mark.parametrize("name,cls,cmd,data", HOSTILE, ids=[f"{h[0]}-{i}" for i, h in enumerate(HOSTILE)])
def test_each_malformed_or_unsupported_command_answers_err_under_its_name_and_the_device_goes_on(rig, name, cls, cmd,
                                                                                                   data):
    assert rig.g.ctrl_command(cls, cmd, data) == ERR
    counts = rig.dev.stats()["ctrl_commands"]
    assert counts[name] == 1 and sum(counts.values()) == 1, counts
    assert not rig.dev.faults() and rig.moves_frames(0)
    assert rig.g.set_queue_pairs(2) == OK and rig.moves_frames(1)


def test_a_command_without_an_ack_byte_or_header_or_too_long_is_used_and_counted_and_the_device_goes_on(rig):
    buf = rig.g.ctrl_buf
    assert rig.g.ctrl_command(MQ, 0, struct.pack("<H", 2), segs=[(buf, 4, False)]) is None     # no ack slot
    assert rig.g.ctrl_command(MQ, 0, b"", segs=[(buf, 1, False), (buf + 8192, 1, True)]) == ERR    # 1 header byte
    too_long = [(buf, 2 + 4097, False), (buf + 8192, 1, True)]     # more data than any command has
    assert rig.g.ctrl_command(MAC, 0, b"", segs=too_long) == ERR
    counts = rig.dev.stats()["ctrl_commands"]
    assert counts["no_ack"] == 1 and counts["short"] == 1 and counts["too_long"] == 1, counts
    assert rig.dev.queue_pairs == 1                       # neither was carried out
    assert rig.g.set_queue_pairs(2) == OK and rig.moves_frames(1)


def test_a_control_ring_fault_stops_only_that_queue_and_needs_a_reset(rig):
    huge = rig.mem.size + (1 << 20)
    assert rig.g.ctrl_command(MQ, 0, b"", segs=[(huge, 2, False), (rig.g.ctrl_buf, 1, True)], timeout=0.5) is None
    assert rig.dev.wait_fault(2.0) is not None
    assert rig.dev.faults() == {rig.dev.ctrl_index: 1}    # desc_addr, on the control queue's index
    assert rig.dev.status & spec.DEVICE_NEEDS_RESET
    assert rig.moves_frames(0)                            # the data queues go on


def test_the_control_queue_needs_ctrl_vq_negotiated():
    with GuestMemory(1 << 20) as mem, PairLink() as link:
        dev = VirtioNet(mem, link)
        try:
            dev.set_driver_features(spec.DEVICE_FEATURES & dev.device_features)
            with pytest.raises(ConfigError, match="CTRL_VQ"):
                dev.set_queue(dev.ctrl_index, size=16, desc=0, avail=0x1000, used=0x2000, kick_fd=0, call_fd=0)
        finally:
            dev.close()


# --- the checker against a reference written from the spec ---
FEATS = [spec.bit(b) for b in (spec.VIRTIO_NET_F_CTRL_RX, spec.VIRTIO_NET_F_CTRL_RX_EXTRA, spec.VIRTIO_NET_F_CTRL_MAC_ADDR,
                               spec.VIRTIO_NET_F_GUEST_ANNOUNCE, spec.VIRTIO_NET_F_MQ)]


def reference(cls, cmd, data, features, max_pairs) -> str:
    has = lambda b: bool(features & spec.bit(b))
    n = len(data)
    if cls == RX:
        if cmd > 5:
            return "command"
        if not has(spec.VIRTIO_NET_F_CTRL_RX) or (cmd > 1 and not has(spec.VIRTIO_NET_F_CTRL_RX_EXTRA)):
            return "not_negotiated"
        return "none" if n == 1 else "size"
    if cls == MAC:
        if cmd == 0:
            if not has(spec.VIRTIO_NET_F_CTRL_RX):
                return "not_negotiated"
            at = 0
            for _ in range(2):
                if n - at < 4:
                    return "mac_table"
                k = struct.unpack_from("<I", data, at)[0]
                at += 4 + 6 * k
                if at > n:
                    return "mac_table"
            return "none" if at == n else "mac_table"
        if cmd == 1:
            return ("not_negotiated" if not has(spec.VIRTIO_NET_F_CTRL_MAC_ADDR)
                    else "none" if n == 6 else "size")
        return "command"
    if cls == 2:
        return "command" if cmd > 1 else "not_negotiated"
    if cls == ANNOUNCE:
        if cmd != 0:
            return "command"
        return "not_negotiated" if not has(spec.VIRTIO_NET_F_GUEST_ANNOUNCE) else "none" if n == 0 else "size"
    if cls == MQ:
        if cmd == 0:
            if not has(spec.VIRTIO_NET_F_MQ):
                return "not_negotiated"
            if n != 2:
                return "size"
            return "none" if 1 <= struct.unpack("<H", data)[0] <= max_pairs else "pairs"
        return "not_negotiated" if cmd in (1, 2) else "command"
    if cls == 5:
        return "not_negotiated" if cmd == 0 else "command"
    return "class"


@settings(max_examples=3000, deadline=None)
@given(cls=st.integers(0, 8), cmd=st.integers(0, 8), data=st.binary(max_size=40),
       feats=st.lists(st.sampled_from(FEATS), unique=True), max_pairs=st.integers(1, 16),
       table_=st.one_of(st.none(), st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(-2, 2))))
def test_the_command_checker_agrees_with_the_spec_on_any_command(cls, cmd, data, feats, max_pairs, table_):
    if table_ is not None:                    # well-formed MAC tables, give or take a few bytes
        u, m, extra = table_
        data = table([bytes(6)] * u, [b"\x01" + bytes(5)] * m)
        data = data[:len(data) + extra] if extra < 0 else data + bytes(extra)
    features = sum(feats)
    got = check(cls, cmd, data, features, max_pairs)
    assert got == reference(cls, cmd, data, features, max_pairs), (cls, cmd, data.hex(), hex(features))
    assert got in CTRL_ERRORS


def test_what_control_commands_changed_on_the_link_is_undone_at_reset_and_close(rig):
    mc = [bytes.fromhex("333300000001")]
    assert rig.g.ctrl_command(RX, spec.VIRTIO_NET_CTRL_RX_PROMISC, b"\x01") == OK
    assert rig.g.ctrl_command(MAC, spec.VIRTIO_NET_CTRL_MAC_TABLE_SET, table([], mc)) == OK
    mac0 = rig.link.mac
    assert rig.g.ctrl_command(MAC, spec.VIRTIO_NET_CTRL_MAC_ADDR_SET, bytes.fromhex("020000aabbcc")) == OK
    assert rig.link.promisc and rig.link.multicast == mc and rig.link.mac != mac0
    rig.dev.reset()
    assert not rig.link.promisc and rig.link.multicast == [] and rig.link.mac == mac0


def test_a_tap_keeps_its_own_mac_the_host_sides(rig):
    rig.link.kind = "tap"     # a tap's MAC is the host side's, which must differ from the guest's
    assert rig.g.ctrl_command(MAC, spec.VIRTIO_NET_CTRL_MAC_ADDR_SET, bytes.fromhex("020000aabbcc")) == ERR
    assert rig.dev.stats()["ctrl_commands"]["unsupported"] == 1 and rig.link.mac != "02:00:00:aa:bb:cc"


def test_a_driver_posting_commands_without_end_does_not_hold_up_stop(rig):
    """The control thread looks for its stop between commands, not only once the ring is empty."""
    import threading
    import time
    stop = threading.Event()

    def flood():
        while not stop.is_set():
            rig.g.ctrl_command(RX, spec.VIRTIO_NET_CTRL_RX_ALLMULTI, b"\x01", timeout=0.2)
    t = threading.Thread(target=flood)
    t.start()
    try:
        time.sleep(0.3)
        t0 = time.monotonic()
        rig.dev.stop()
        assert time.monotonic() - t0 < 2.0
    finally:
        stop.set()
        t.join()
    assert rig.dev.stats()["ctrl_commands"]["none"] > 0


def test_a_vmm_closing_its_control_eventfds_while_running_costs_only_their_notifications(rig):
    """The control thread holds its own references to the kick and call fds: the numbers a VMM frees
    (and may reuse) are never polled or written, the thread does not die, stop and a restart work."""
    import os
    import threading
    died = []
    old_hook, threading.excepthook = threading.excepthook, died.append
    try:
        assert rig.g.ctrl_command(RX, spec.VIRTIO_NET_CTRL_RX_ALLMULTI, b"\x01") == OK
        os.close(rig.g.ctrl_kick)
        os.close(rig.g.ctrl_call)
        reused = os.eventfd(0, os.EFD_NONBLOCK)   # most likely the number the kick fd had
        try:
            import time
            time.sleep(0.2)
            assert rig.dev.stop() is not None
            with pytest.raises(BlockingIOError):
                os.eventfd_read(reused)           # nothing was written to a number no longer ours
        finally:
            os.close(reused)
        assert not died and "ctrl_error" not in rig.dev.stats()
        rig.g.ctrl_kick, rig.g.ctrl_call = os.eventfd(0, os.EFD_NONBLOCK), os.eventfd(0, os.EFD_NONBLOCK)
        cfg = rig.dev.queues[rig.dev.ctrl_index]
        cfg.kick_fd, cfg.call_fd = rig.g.ctrl_kick, rig.g.ctrl_call
        rig.dev.start()
        assert rig.g.ctrl_command(RX, spec.VIRTIO_NET_CTRL_RX_ALLMULTI, b"\x00") == OK
        assert rig.dev.stats()["ctrl_commands"]["none"] == 2
    finally:
        threading.excepthook = old_hook


def test_a_control_thread_that_fails_says_why_and_needs_a_reset(rig, monkeypatch):
    def broken(*_):
        raise RuntimeError("vnb test: a bug in a command")
    monkeypatch.setattr("vnetbe.ctrl.ControlQueue._apply", lambda *a: broken())
    assert rig.g.ctrl_command(RX, spec.VIRTIO_NET_CTRL_RX_ALLMULTI, b"\x01", timeout=0.5) is None
    import time
    deadline = time.monotonic() + 2
    while "ctrl_error" not in rig.dev.stats() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "a bug in a command" in rig.dev.stats()["ctrl_error"]
    assert rig.dev.status & spec.DEVICE_NEEDS_RESET and rig.moves_frames()


def test_announce_sets_the_config_status_bit_until_the_driver_acks_on_the_control_queue(rig):
    """After a migration the VMM asks the driver to announce the guest (VIRTIO_NET_S_ANNOUNCE in the
    config status, §5.1.6.5.4); the driver's ANNOUNCE_ACK clears it."""
    status = lambda: struct.unpack_from("<H", rig.dev.config_space(), 6)[0]
    assert rig.dev.has(spec.VIRTIO_NET_F_GUEST_ANNOUNCE) and not status() & spec.VIRTIO_NET_S_ANNOUNCE
    assert rig.dev.announce() and status() & spec.VIRTIO_NET_S_ANNOUNCE
    assert rig.g.ctrl_command(ANNOUNCE, spec.VIRTIO_NET_CTRL_ANNOUNCE_ACK) == OK
    assert not status() & spec.VIRTIO_NET_S_ANNOUNCE and status() & spec.VIRTIO_NET_S_LINK_UP


def test_without_guest_announce_negotiated_announce_sets_nothing_and_the_ack_is_refused():
    r = CtrlRig.__new__(CtrlRig)
    r.mem, r.link = GuestMemory(64 << 20), PairLink()
    r.dev = VirtioNet(r.mem, r.link, queues=1)
    try:
        feats = (r.dev.device_features & ~spec.bit(spec.VIRTIO_NET_F_GUEST_ANNOUNCE))
        r.guests = [GuestDriver(r.dev, ctrl=True, queue_size=64, features=feats)]
        assert not r.dev.announce()
        assert r.g.ctrl_command(ANNOUNCE, spec.VIRTIO_NET_CTRL_ANNOUNCE_ACK) == ERR
        assert r.dev.stats()["ctrl_commands"]["not_negotiated"] == 1
    finally:
        r.close()
