"""Cloud Hypervisor's vhost-user-net front end, replayed message for message against vnetbe's server.

Cloud Hypervisor is not installable here, so its side is rebuilt from its source (cloud-hypervisor
ae44c2971c83: virtio-devices/src/vhost_user/net.rs, vu_common_ctrl.rs, mod.rs; rust-vmm/vhost
4e217d992c57: vhost/src/vhost_user/frontend.rs) for ``--net vhost_user=true,socket=...,num_queues=2``:
SET_OWNER before GET_FEATURES; protocol features 0x8920B asked; GET_QUEUE_NUM compared with num_queues
(virtqueues); GET_CONFIG of 17 bytes with flags 1, the reply's offset and size checked; nothing more
until the guest's DRIVER_OK, then SET_FEATURES (bit 30 included), SET_MEM_TABLE, SET_VRING_NUM for
both rings, per ring ADDR, BASE, CALL, KICK, then SET_VRING_ENABLE for both; every request after
REPLY_ACK carries NEED_REPLY, and only the SET_* ones wait for an ack. A guest reset is
SET_VRING_ENABLE(0) and GET_VRING_BASE per ring; a back-end restart is SET_OWNER, GET_FEATURES and the
saved SET_PROTOCOL_FEATURES without asking again, then the activation.

``num_queues=4`` (two pairs) is the same sequence over rings 0..3: CH's net.rs asks the back end for
num_queues virtqueues (GET_QUEUE_NUM must answer at least that), sets up every ring and enables them
all at activation; the guest's VQ_PAIRS_SET stays in CH's own control queue handler."""
from __future__ import annotations

import os
import socket
import tempfile

import pytest
from vnbtest.fakelink import PairLink
from vnbtest.wait import wait_for

from vnetbe.errors import VnetError
from vnetbe.memory import GuestMemory
from vnetbe.tools.guest import GuestDriver
from vnetbe.tools.vhost_user_frontend import VhostUserFrontend
from vnetbe.vhost_user import VhostUserServer, channel
from vnetbe.vhost_user import protocol as P
from vnetbe.vhost_user.protocol import Request

PF = P.ProtocolFeature
CH_PROTOCOL = (1 << PF.MQ | 1 << PF.LOG_SHMFD | 1 << PF.REPLY_ACK | 1 << PF.CONFIG | 1 << PF.INFLIGHT_SHMFD
               | 1 << PF.CONFIGURE_MEM_SLOTS | 1 << 19)          # 19: DEVICE_STATE
assert CH_PROTOCOL == 0x8920B
CH_FEATURE_MASK = 0x597462FFAB      # what CH keeps of the back end's offer (net.rs avail_features)
CONFIG_READ = 17                    # CH's GET_CONFIG size
ETH = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00"


def _frame(n: int, seed: int = 0) -> bytes:
    return ETH + bytes((i * 7 + seed) & 0xFF for i in range(n - len(ETH)))


class CloudHypervisorFrontend(VhostUserFrontend):
    """The device door GuestDriver drives, speaking in Cloud Hypervisor's order."""

    def __init__(self, path: str, mem, *, saved_protocol: int | None = None, num_queues: int = 2):
        self.path, self.mem, self.timeout, self.poll_rings = path, mem, 5.0, False
        self.num_queues, self.max_queue_pairs = num_queues, num_queues // 2
        self.sock = self._connect(path, 5.0)
        self._on_close: list = []
        self.queues: dict = {}
        self.err_fd: dict[int, int] = {}
        self.driver_features = 0
        self.closed = False
        self.protocol_features = 0
        self.sent: list[str] = []
        try:
            self._handshake(saved_protocol)
        except BaseException:
            self.sock.close()
            raise

    def _send(self, req: Request, payload: bytes = b"", fds=None, *, ack: bool) -> None:
        """One request as CH sends it: NEED_REPLY once REPLY_ACK is on; the ack read when it waits."""
        self.sent.append(req.name)
        channel.send_message(self.sock, P.request(req, payload, need_reply=self.acks), fds)
        if ack and self.acks and self._reply(req) != 0:
            raise VnetError(f"the back end refused {req.name}")

    def _ask(self, req: Request, payload: bytes = b"") -> bytes:
        self.sent.append(req.name)
        channel.send_message(self.sock, P.request(req, payload, need_reply=self.acks))
        head = self.sock.recv(P.HEADER_SIZE, socket.MSG_WAITALL)
        assert len(head) == P.HEADER_SIZE, f"the back end closed the connection after {req.name}"
        code, flags, size = P.HEADER.unpack(head)
        body = self.sock.recv(size, socket.MSG_WAITALL) if size else b""
        assert code == req and flags & P.FLAG_REPLY and len(body) == size, (req.name, code, flags, size)
        return body

    def _handshake(self, saved_protocol: int | None) -> None:
        self._send(Request.SET_OWNER, ack=False)
        offered = P.U64.unpack(self._ask(Request.GET_FEATURES))[0]
        self.offered = offered
        if saved_protocol is None:
            protocol = P.U64.unpack(self._ask(Request.GET_PROTOCOL_FEATURES))[0] & CH_PROTOCOL
        else:
            protocol = saved_protocol            # a reconnect sends what it acked before, unasked
        self._send(Request.SET_PROTOCOL_FEATURES, P.U64.pack(protocol), ack=False)
        self.protocol_features = protocol        # REPLY_ACK from here on
        if saved_protocol is None:
            if protocol & 1 << PF.MQ:
                backend_queues = P.U64.unpack(self._ask(Request.GET_QUEUE_NUM))[0]
                assert backend_queues <= 0x8000
                if self.num_queues > backend_queues:   # net.rs: Error::BadQueueNum
                    raise VnetError(f"vhost-user-net requested too many queues ({self.num_queues}) since the "
                                    f"backend only supports {backend_queues}")
            if protocol & 1 << PF.CONFIG:
                body = self._ask(Request.GET_CONFIG, P.config_payload(0, CONFIG_READ, 1))
                offset, size, _ = P.CONFIG_HDR.unpack_from(body)
                if (offset, size) != (0, CONFIG_READ) or len(body) != P.CONFIG_HDR.size + CONFIG_READ:
                    raise VnetError(f"GET_CONFIG answered offset {offset} size {size} ({len(body)} bytes)")
                self.config = body[P.CONFIG_HDR.size:]
        self.device_features = offered & CH_FEATURE_MASK & ~(1 << P.VHOST_USER_F_PROTOCOL_FEATURES)

    # --- what GuestDriver calls ---
    def set_driver_features(self, features: int) -> int:
        self.driver_features = features           # CH sends SET_FEATURES only at DRIVER_OK
        return features

    def start(self) -> None:
        """The guest's DRIVER_OK: setup_vhost_user."""
        acked = (self.driver_features | 1 << P.VHOST_USER_F_PROTOCOL_FEATURES) & self.offered
        self._send(Request.SET_FEATURES, P.U64.pack(acked), ack=True)
        regions = self.memory_regions()
        self._send(Request.SET_MEM_TABLE, P.mem_table_payload([r for r, _ in regions]), [fd for _, fd in regions],
                   ack=True)
        for q in sorted(self.queues):
            self._send(Request.SET_VRING_NUM, P.VRING_STATE.pack(q, self.queues[q].size), ack=True)
        for q, cfg in sorted(self.queues.items()):
            self._send(Request.SET_VRING_ADDR, P.VRING_ADDR.pack(q, 0, self.mem.hva(cfg.desc), self.mem.hva(cfg.used),
                                                                 self.mem.hva(cfg.avail), 0), ack=True)
            self._send(Request.SET_VRING_BASE, P.VRING_STATE.pack(q, cfg.base(False)[0]), ack=True)
            self._send(Request.SET_VRING_CALL, P.U64.pack(q), [cfg.call_fd], ack=True)
            self._send(Request.SET_VRING_KICK, P.U64.pack(q), [cfg.kick_fd], ack=True)
        for q in sorted(self.queues):
            self._send(Request.SET_VRING_ENABLE, P.VRING_STATE.pack(q, 1), ack=True)

    def guest_reset(self) -> None:
        """reset_vhost_user: per ring, disable it and take its base (which the next start resumes at)."""
        for q, cfg in sorted(self.queues.items()):
            self._send(Request.SET_VRING_ENABLE, P.VRING_STATE.pack(q, 0), ack=True)
            cfg.last_avail_idx = P.VRING_STATE.unpack(self._ask(Request.GET_VRING_BASE, P.VRING_STATE.pack(q, 0)))[1]


class Rig:
    def __init__(self, pairs: int = 1):
        self.pairs = pairs
        self.dir = tempfile.mkdtemp(prefix="vnb-ch-")
        self.path = os.path.join(self.dir, "sock")
        self.link = PairLink()
        self.events: list[tuple[str, str]] = []
        self.server = self._server()
        self.mem = GuestMemory(32 << 20)
        self.fe = None

    def _server(self) -> VhostUserServer:
        return VhostUserServer(self.path, self.link, on_event=lambda k, t: self.events.append((k, t)),
                               queues=self.pairs).start()

    def restart_server(self) -> None:
        self.server.close()
        self.server = self._server()

    def traffic(self, guest, n: int, seed: int) -> None:
        link = self.link.queue(guest.pair)
        for i in range(n):
            guest.send(_frame(60 + i, seed + i))
            assert link.sent(2.0)[12:] == _frame(60 + i, seed + i)
            link.inject(_frame(70 + i, seed + i))
            assert guest.receive(timeout=2.0) == _frame(70 + i, seed + i)

    def close(self) -> None:
        if self.fe is not None:
            self.fe.close()
        self.server.close()
        self.mem.close()
        self.link.close()
        os.rmdir(self.dir)


@pytest.fixture
def rig():
    r = Rig()
    yield r
    r.close()


@pytest.mark.parametrize("num_queues", [2, 4])
def test_cloud_hypervisor_num_queues_brings_up_that_many_virtqueues_as_pairs(num_queues):
    pairs = num_queues // 2
    r = Rig(pairs)
    try:
        r.fe = CloudHypervisorFrontend(r.path, r.mem, num_queues=num_queues)
        assert r.fe.offered & (1 << 22 | 1 << 17) == 1 << 22 | 1 << 17   # MQ and CTRL_VQ offered, so CH keeps them
        guests = [GuestDriver(r.fe, queue_size=64, rx_buf_size=2048, pair=p, start=False) for p in range(pairs)]
        r.fe.start()
        for p, guest in enumerate(guests):
            r.traffic(guest, 10, 10 * p)
        session = r.server.session
        assert sorted(session.dev.served_queues()) == list(range(num_queues))
        assert [x["tx_frames"] for x in session.dev.stats()["pairs"]] == [10] * pairs
        assert r.server.stats()["refused_messages"] == 0, r.events
    finally:
        r.close()


def test_cloud_hypervisor_asking_more_queues_than_the_back_end_has_is_refused_on_its_side():
    r = Rig(1)
    try:
        with pytest.raises(VnetError, match="requested too many queues"):
            r.fe = CloudHypervisorFrontend(r.path, r.mem, num_queues=4)
    finally:
        r.close()


def test_cloud_hypervisors_setup_order_is_served_and_frames_cross_both_ways(rig):
    rig.fe = CloudHypervisorFrontend(rig.path, rig.mem)
    assert rig.fe.protocol_features == CH_PROTOCOL & P.PROTOCOL_FEATURES
    assert rig.fe.config[:6] == bytes.fromhex(rig.link.mac.replace(":", ""))
    guest = GuestDriver(rig.fe, queue_size=256, rx_buf_size=2048)
    rig.traffic(guest, 20, 0)
    assert rig.server.stats()["refused_messages"] == 0, rig.events
    assert rig.fe.sent[:6] == ["SET_OWNER", "GET_FEATURES", "GET_PROTOCOL_FEATURES", "SET_PROTOCOL_FEATURES",
                               "GET_QUEUE_NUM", "GET_CONFIG"]


def test_a_cloud_hypervisor_guest_reset_and_new_driver_ok_resume_the_rings(rig):
    rig.fe = CloudHypervisorFrontend(rig.path, rig.mem)
    guest = GuestDriver(rig.fe, queue_size=256, rx_buf_size=2048)
    rig.traffic(guest, 10, 0)
    rig.fe.guest_reset()
    assert not rig.server.session.dev.running
    rig.fe.start()                                 # the guest's next DRIVER_OK
    rig.traffic(guest, 10, 50)
    assert rig.server.stats()["refused_messages"] == 0, rig.events


def test_cloud_hypervisor_reconnects_to_a_restarted_back_end_with_its_saved_protocol_features(rig):
    rig.fe = CloudHypervisorFrontend(rig.path, rig.mem)
    guest = GuestDriver(rig.fe, queue_size=256, rx_buf_size=2048)
    rig.traffic(guest, 10, 0)
    saved = rig.fe.protocol_features
    rig.fe.guest_reset()
    rig.restart_server()
    old, rig.fe = rig.fe, None
    new = CloudHypervisorFrontend(rig.path, rig.mem, saved_protocol=saved)
    new.queues, new.driver_features = old.queues, old.driver_features
    old.sock.close()
    rig.fe = new
    guest.dev = new
    new.start()
    assert wait_for(lambda: rig.server.session is not None and rig.server.session.dev.running, 2.0)
    rig.traffic(guest, 10, 100)
    assert new.sent[:3] == ["SET_OWNER", "GET_FEATURES", "SET_PROTOCOL_FEATURES"]
    assert rig.server.stats()["refused_messages"] == 0, rig.events
