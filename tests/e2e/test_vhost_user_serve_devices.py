"""One ``vnetbe serve`` process, several devices: each ``--device`` its own socket and macvtap, frames
checked at each peer; and a front end that shrinks its memory file costs only its own connection
while the other device keeps delivering (the hostile memfd case on the CLI, on every datapath: vhost
in the kernel lab)."""
from __future__ import annotations

import json
import os
import signal
import threading

import pytest

from test_vhost_user_clients import Serve
from vnetbe.memory import GuestMemory
from vnetbe.tools import packet
from vnetbe.tools.guest import GuestDriver
from vnetbe.tools.peer import Peer
from vnetbe.tools.topology import Topology
from vnetbe.tools.vhost_user_frontend import VhostUserFrontend

pytestmark = pytest.mark.root


class Side:
    """One device's world: a topology, the peer in it, and (once connected) vnetbe's front end."""

    def __init__(self, tag: str, sock: str):
        self.topo = Topology(tag, mtu=1500)
        self.sock, self.macvtap = sock, f"vnb{tag}m0"
        self.peer = Peer(self.topo.peer, self.topo.netns)
        self.fe = self.mem = None

    def device_arg(self, datapath: str) -> str:
        return f"socket={self.sock},parent={self.topo.parent},name={self.macvtap},datapath={datapath}"

    def connect(self) -> None:
        with open(f"/sys/class/net/{self.macvtap}/address") as f:
            self.mac = f.read().strip()
        with self.topo.ns.ipr() as ipr:
            self.peer_mac = ipr.link("get", ifname=self.topo.peer)[0].get_attr("IFLA_ADDRESS")
        self.mem = GuestMemory(32 << 20)
        self.fe = VhostUserFrontend(self.sock, self.mem)
        self.guest = GuestDriver(self.fe, queue_size=256, rx_buf_size=2048)
        self.peer.flush()

    def tx(self, count: int, first_seq: int = 0) -> dict:
        frame = packet.tagged_frame(0, 256, self.peer_mac, self.mac)
        out: dict = {}
        th = threading.Thread(target=lambda: out.update(self.peer.recv_tagged(count, timeout=10.0)))
        th.start()
        assert self.guest.flood(frame, count, tagged=True, first_seq=first_seq) == count
        self.guest.drain_tx()
        th.join()
        return out

    def close(self) -> None:
        if self.fe is not None:
            self.fe.close()
        if self.mem is not None:
            self.mem.close()
        self.peer.close()
        self.topo.close()


def test_one_serve_process_serves_two_devices_and_a_shrunk_memory_costs_only_its_connection(tmp_path, datapath):
    a, b = Side("sda", str(tmp_path / "a.sock")), Side("sdb", str(tmp_path / "b.sock"))
    serve = None
    try:
        serve = Serve("--device", a.device_arg(datapath), "--device", b.device_arg(datapath))
        for _ in range(2):
            serve.wait_line("listening on")
        a.connect()
        b.connect()
        for side in (a, b):
            out = side.tx(2000)
            assert out["ok"], out
        # a's front end takes its memory away and kicks: only a's connection ends.
        os.ftruncate(a.mem.regions[0].fd, 0)
        os.eventfd_write(a.fe.queues[1].kick_fd, 1)
        line = serve.wait_line("took its guest memory away", timeout=60)
        assert "[a.sock]" in line, line
        out = b.tx(5000, first_seq=2000)
        assert out["ok"], out
        assert serve.proc.poll() is None
        serve.proc.send_signal(signal.SIGUSR1)
        stats = {}
        for _ in range(2):
            d = json.loads(serve.wait_line('{"stats"'))
            stats[os.path.basename(d["socket"])] = d["stats"]
        assert stats["a.sock"]["memory_gone"] == 1 and not stats["a.sock"]["connected"]
        assert stats["b.sock"]["connected"] and stats["b.sock"]["device"]["tx_frames"] == 7000
        assert stats["b.sock"]["memory_gone"] == 0
    finally:
        rc = serve.stop() if serve is not None else 0
        for side in (a, b):
            side.close()
    assert rc == 0, serve.stderr
    assert not os.path.exists("/sys/class/net/vnbsdam0") and not os.path.exists("/sys/class/net/vnbsdbm0")


def test_serve_takes_a_libvirt_vhostuser_interface_with_the_link_on_its_command_line(tmp_path):
    """libvirt's <interface type='vhostuser'> as a user configures it: mode='client' is QEMU's side, so
    vnetbe listens on the path; the MAC is the macvtap's; the frames reach the peer."""
    side = Side("sdl", str(tmp_path / "lv.sock"))
    xml = tmp_path / "iface.xml"
    xml.write_text(f"""<interface type='vhostuser'>
  <mac address='52:54:00:78:00:0a'/>
  <source type='unix' path='{side.sock}' mode='client'/>
  <model type='virtio'/>
  <driver queues='1'/>
</interface>""")
    serve = None
    try:
        serve = Serve("--libvirt", str(xml), "--parent", side.topo.parent, "--name", side.macvtap)
        line = serve.wait_line("listening on")
        assert side.sock in line and "52:54:00:78:00:0a" in line, line
        side.connect()
        assert side.mac == "52:54:00:78:00:0a"
        out = side.tx(1000)
        assert out["ok"], out
    finally:
        rc = serve.stop() if serve is not None else 0
        side.close()
    assert rc == 0, serve.stderr
