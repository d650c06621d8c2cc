"""The dirty log on a real macvtap, on every datapath: the userspace datapaths' own log writer, and
the kernel's vhost-net logging straight into the same log (VHOST_SET_LOG_BASE, LOG_ALL,
VHOST_VRING_F_LOG; in the lab). Every RX buffer page the frames landed in, and the used rings, are in
the log; frames still cross byte for byte while it is on."""
from __future__ import annotations

import numpy as np
import pytest

from vnetbe.dirtylog import DirtyLog
from vnetbe.tools import packet
from vnbtest.net import Net

pytestmark = pytest.mark.root
PAGE = 4096
N = 100


@pytest.fixture
def net(tag, datapath):
    n = Net(tag, datapath, mtu=1500, mem_size=32 << 20, guest_kw={"queue_size": 256})
    yield n
    n.close()


def test_every_page_the_datapath_writes_is_in_the_dirty_log(net):
    g = net.guest
    area = (g.rx_buf_gpa, g.rx_buf_size * g.rings[0][0])
    with DirtyLog.for_memory(net.mem) as log:
        net.dev.start_dirty_log(log)
        before = bytes(net.mem.view(*area))
        sent = [packet.tagged_frame(i, 600, net.link.mac, net.peer_mac) for i in range(N)]
        for f in sent:
            net.peer.send(f)
        got = []
        while len(got) < N and (f := g.receive(timeout=2.0)) is not None:
            if packet.is_tagged(f):
                got.append(f)
        assert got == sent
        out = [packet.tagged_frame(1000 + i, 600, net.peer_mac, net.link.mac) for i in range(N)]
        for f in out:
            g.send(f)
        assert net.peer.capture(N, timeout=5.0, match=packet.is_tagged) == out
        net.dev.stop()
        dirty = set(log.dirty_pages())
        changed = np.flatnonzero(np.frombuffer(before, np.uint8) != np.frombuffer(bytes(net.mem.view(*area)), np.uint8))
        rx_pages = {(area[0] + int(b)) // PAGE for b in changed}
        assert rx_pages and rx_pages <= dirty, sorted(rx_pages - dirty)
        for q, (n, _, _, u) in g.rings.items():
            assert u // PAGE in dirty, (q, u // PAGE, sorted(dirty))
        net.dev.stop_dirty_log()
