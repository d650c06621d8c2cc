"""The rig most end-to-end tests stand on: a guest on a bridge-mode macvtap, the peer on the far veth end."""
from __future__ import annotations

from vnetbe.device import VirtioNet
from vnetbe.tools.guest import GuestDriver
from vnetbe.memory import GuestMemory
from vnetbe.tools.peer import Peer
from vnetbe.tools.topology import Topology


class Net:
    """A guest on a bridge-mode macvtap, and the peer at the far end of the veth."""

    def __init__(self, tag, datapath, *, mtu=9000, offloads=True, guest_kw=None, peer_kw=None, mem_size=128 << 20,
                 queues=1):
        self.topo = Topology(tag, mtu=mtu, offloads=offloads)
        self.mem = self.dev = self.peer = None
        try:
            self.link = self.topo.macvtap("bridge", mtu=mtu)
            self.peer = Peer(self.topo.peer, self.topo.netns, **(peer_kw or {}))
            with self.topo.ns.ipr() as ipr:
                self.peer_mac = ipr.link("get", ifname=self.topo.peer)[0].get_attr("IFLA_ADDRESS")
            self.mem = GuestMemory(mem_size)
            self.dev = VirtioNet(self.mem, self.link, datapath=datapath, queues=queues)
            if queues == 1:
                self.guest = GuestDriver(self.dev, **(guest_kw or {}))
                self.guests = [self.guest]
            else:   # pair 0's driver with the control queue, then one per pair; the last starts the device
                self.guests = [GuestDriver(self.dev, ctrl=True, start=False, **(guest_kw or {}))]
                for p in range(1, queues):
                    self.guests.append(GuestDriver(self.dev, pair=p, start=p == queues - 1, **(guest_kw or {})))
                self.guest = self.guests[0]
            self.peer.flush()
        except BaseException:
            self.close()
            raise

    def close(self):
        for obj in (self.dev, self.mem, self.peer):
            if obj is not None:
                obj.close()
        self.topo.close()
