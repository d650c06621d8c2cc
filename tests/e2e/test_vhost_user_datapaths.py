"""The vhost-user server on each datapath, on a real macvtap: frames cross byte-checked both ways
whether vnetbe's C thread or the kernel's vhost-net moves them (vhost gets the front end's memory
mapped in the server and its kick/call eventfds as they came), and a connected front end's rings move
between the two live."""
from __future__ import annotations

import os
import tempfile
import threading

import pytest

from vnetbe.memory import GuestMemory
from vnetbe.tools import packet
from vnetbe.tools.guest import GuestDriver
from vnetbe.tools.peer import Peer
from vnetbe.tools.topology import Topology
from vnetbe.tools.vhost_user_frontend import VhostUserFrontend
from vnetbe.vhost_user import VhostUserServer

pytestmark = pytest.mark.root


class Rig:
    def __init__(self, tag, datapath):
        self.topo = Topology(tag, mtu=1500)
        self.dir = tempfile.mkdtemp(prefix="vnb-vu-")
        self.server = self.fe = self.mem = self.peer = None
        try:
            self.link = self.topo.macvtap("bridge")
            self.peer = Peer(self.topo.peer, self.topo.netns)
            with self.topo.ns.ipr() as ipr:
                self.peer_mac = ipr.link("get", ifname=self.topo.peer)[0].get_attr("IFLA_ADDRESS")
            self.server = VhostUserServer(os.path.join(self.dir, "sock"), self.link, datapath,
                                          on_event=lambda k, t: None).start()
            self.mem = GuestMemory(32 << 20)
            self.fe = VhostUserFrontend(self.server.path, self.mem)
            self.guest = GuestDriver(self.fe, queue_size=256, rx_buf_size=2048)
            assert self.server.wait_connected(5)
            self.peer.flush()
        except BaseException:
            self.close()
            raise

    def tx(self, count, first_seq=0):
        frame = packet.tagged_frame(0, 256, self.peer_mac, self.link.mac)
        out = {}
        th = threading.Thread(target=lambda: out.update(self.peer.recv_tagged(count, timeout=10.0)))
        th.start()
        assert self.guest.flood(frame, count, tagged=True, seq_offset=first_seq) == count
        self.guest.drain_tx()
        th.join()
        return out

    def rx(self, count):
        """The peer sends ``count`` tagged frames in paced batches while the guest receives them."""
        out = {}
        th = threading.Thread(target=lambda: out.update(
            zip(("n", "ooo", "bad"), self.guest.receive_count(count, timeout=10.0, verify=True))))
        th.start()
        sent = 0
        for i in range(0, count, 100):
            sent += self.peer.send_tagged(100, 256, dst=self.link.mac, pace_ns=5000, first_seq=i)["sent"]
        th.join()
        return sent, out["n"], out["ooo"], out["bad"]

    def close(self):
        for obj in (self.fe, self.server, self.mem, self.peer):
            if obj is not None:
                obj.close()
        self.topo.close()
        os.rmdir(self.dir)


@pytest.fixture
def rig(tag, datapath):
    r = Rig(tag, datapath)
    yield r
    r.close()


def test_tagged_frames_cross_the_vhost_user_server_both_ways_on_each_datapath(rig):
    out = rig.tx(3000)
    assert (out["received"], out["bad"]) == (3000, 0), out
    assert rig.rx(3000) == (3000, 3000, 0, 0)


@pytest.mark.vhost
@pytest.mark.parametrize("datapath", ["user"])
def test_a_connected_front_ends_rings_move_between_user_and_vhost_live(rig):
    got = []
    for i, path in enumerate(["vhost", "user", "vhost"]):
        got.append(rig.tx(1000)["received"])
        rig.server.switch_datapath(path)
        assert rig.server.stats()["device"]["datapath"] == path
    got.append(rig.tx(1000)["received"])
    assert got == [1000] * 4
    assert rig.rx(1000) == (1000, 1000, 0, 0)
