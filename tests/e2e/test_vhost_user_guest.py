"""A real Linux guest's virtio_net driver on vnetbe: QEMU boots the stock kernel with a vhost-user NIC
served by ``vnetbe serve`` (user datapath, a bridge-mode macvtap), and the guest pings the peer and
moves 50 MB each way over TCP at MTU 9000 with TSO and checksum offload on, checked by sha256 at both
ends. And a QEMU started with ``reconnect=1`` is served again by a new ``vnetbe serve`` after the
first was killed with -9: the guest's link drops, comes back, and the peer answers again."""
from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import threading

import pytest

from test_vhost_user_clients import Serve
from vnetbe import spec
from vnetbe.tools import linux_guest as LG
from vnetbe.tools import lab
from vnetbe.tools.topology import Topology

pytestmark = [pytest.mark.root, pytest.mark.lab]


def _guest_result(out: str) -> dict:
    lines = [line for line in out.splitlines() if line.startswith("GUEST ")]
    assert lines, "the guest printed no result:\n" + out[-3000:]
    return json.loads(lines[-1][len("GUEST "):])


@pytest.mark.parametrize("ring", ["split", "packed"])
def test_a_linux_guest_pings_and_moves_50_mb_each_way_through_vnetbe_serve(tmp_path, ring):
    topo = Topology("vg", mtu=9000)
    sock = str(tmp_path / "vu.sock")
    serve = peer = None
    try:
        serve = Serve("--socket", sock, "--parent", topo.parent, "--mode", "bridge", "--name", "vnbvgm0",
                      "--mac", LG.GUEST_MAC, "--mtu", "9000")
        serve.wait_line("listening on")
        for cmd in (["ip", "addr", "add", f"{LG.PEER_IP}/24", "dev", topo.peer], ["ip", "link", "set", topo.peer, "up"]):
            subprocess.run(["ip", "-n", topo.netns, *cmd[1:]], check=True)
        peer = subprocess.Popen(["ip", "netns", "exec", topo.netns, sys.executable, "-c", LG.PEER_SCRIPT, LG.PEER_IP,
                                 str(LG.PORT), str(LG.DATA_BYTES)], stdout=subprocess.PIPE, text=True)
        assert peer.stdout.readline().strip() == "listening"
        out = tmp_path / "guest.out"
        with open(out, "w") as f:
            rc = lab.run([sys.executable, "-c", LG.GUEST_SCRIPT, LG.GUEST_IP, LG.PEER_IP, "9000", str(LG.PORT),
                          str(LG.DATA_BYTES)], memory=LG.MEMORY,
                         qemu_opts=LG.qemu_opts(sock, packed=ring == "packed"), timeout=600, stdout=f, stderr=f)
        serve.stop()
        guest = _guest_result(out.read_text())
        assert rc == 0, out.read_text()[-3000:] + "\nserve: " + "".join(serve.lines[-40:]) + serve.stderr[-2000:]
        peer_out = json.loads(peer.communicate(timeout=60)[0].split("PEER ", 1)[1])
    finally:
        if peer is not None and peer.poll() is None:
            peer.kill()
            peer.communicate()
        if serve is not None:
            serve.stop()
        topo.close()
    assert guest["ifname"] and guest["mtu"] == 9000
    bits = guest["features"]
    negotiated = {b for b in (spec.VIRTIO_F_RING_PACKED, spec.VIRTIO_RING_F_EVENT_IDX, spec.VIRTIO_NET_F_MRG_RXBUF)
                  if b < len(bits) and bits[b] == "1"}
    assert (spec.VIRTIO_F_RING_PACKED in negotiated) == (ring == "packed"), bits
    assert {spec.VIRTIO_RING_F_EVENT_IDX, spec.VIRTIO_NET_F_MRG_RXBUF} <= negotiated, bits
    for feature in ("tx-checksumming", "rx-checksumming", "tcp-segmentation-offload", "scatter-gather"):
        assert guest["offloads"][feature] == "on", (feature, guest["offloads"][feature])
    assert guest["ping_rc"] == 0, guest["ping_tail"]
    sent_by_guest = hashlib.sha256(LG.data(1)).hexdigest()
    sent_by_peer = hashlib.sha256(LG.data(2)).hexdigest()
    assert guest["sent_sha"] == sent_by_guest and peer_out["recv_sha"] == sent_by_guest
    assert guest["peer_got_sha"] == sent_by_guest
    assert peer_out["sent_sha"] == sent_by_peer and guest["recv_sha"] == sent_by_peer
    assert guest["recv_bytes"] == peer_out["recv_bytes"] == LG.DATA_BYTES
    gone = [line for line in serve.lines if "disconnected" in line]
    assert gone, serve.lines            # QEMU's exit ended the connection, and vnetbe noticed
    print(f"guest -> peer {LG.DATA_BYTES * 8 / guest['sent_s'] / 1e6:.0f} Mbit/s, "
          f"peer -> guest {LG.DATA_BYTES * 8 / guest['recv_s'] / 1e6:.0f} Mbit/s")


MQ_PAIRS = 2
MQ_BYTES = 16 << 20


def test_a_multiqueue_linux_guest_sets_its_pairs_and_moves_tcp_on_every_tx_queue(tmp_path):
    """QEMU queues=2, mq=on: the guest's ethtool -L combined 1 then 2 (VQ_PAIRS_SET, which QEMU turns
    into SET_VRING_ENABLE on rings 2 and 3), then two flows each way at once, one sent per TX queue,
    every byte checked by sha256; the guest's ethtool -S shows packets on every TX queue and vnetbe
    counts frames on both of its pairs."""
    topo = Topology("vq", mtu=1500)
    sock = str(tmp_path / "vu.sock")
    serve = peer = None
    try:
        serve = Serve("--socket", sock, "--parent", topo.parent, "--mode", "bridge", "--name", "vnbvqm0",
                      "--mac", LG.GUEST_MAC, "--queues", str(MQ_PAIRS))
        serve.wait_line("listening on")
        for cmd in (["ip", "addr", "add", f"{LG.PEER_IP}/24", "dev", topo.peer], ["ip", "link", "set", topo.peer, "up"]):
            subprocess.run(["ip", "-n", topo.netns, *cmd[1:]], check=True)
        peer = subprocess.Popen(["ip", "netns", "exec", topo.netns, sys.executable, "-c", LG.MQ_PEER_SCRIPT, LG.PEER_IP,
                                 str(LG.PORT), str(MQ_BYTES), str(MQ_PAIRS)], stdout=subprocess.PIPE, text=True)
        assert peer.stdout.readline().strip() == "listening"
        out = tmp_path / "guest.out"
        with open(out, "w") as f:
            rc = lab.run([sys.executable, "-c", LG.MQ_GUEST_SCRIPT, LG.GUEST_IP, LG.PEER_IP, "1500", str(LG.PORT),
                          str(MQ_BYTES), str(MQ_PAIRS)], memory=LG.MEMORY, cpus=2,
                         qemu_opts=LG.qemu_opts(sock, mtu=1500, queues=MQ_PAIRS), timeout=600, stdout=f, stderr=f)
        text = out.read_text()
        served = serve.stats()
        assert rc == 0, text[-3000:] + "\nserve: " + "".join(serve.lines[-40:]) + serve.stderr[-2000:]
        guest = _guest_result(text)
        peer_out = json.loads(peer.communicate(timeout=60)[0].split("PEER ", 1)[1])
        serve.stop()
    finally:
        if peer is not None and peer.poll() is None:
            peer.kill()
            peer.communicate()
        if serve is not None:
            serve.stop()
        topo.close()
    bits = guest["features"]
    assert bits[spec.VIRTIO_NET_F_MQ] == "1" and bits[spec.VIRTIO_NET_F_CTRL_VQ] == "1", bits
    assert guest["combined_rc"] == [0, 0], guest["combined_err"]
    for p in range(MQ_PAIRS):
        sent = hashlib.sha256(LG.data(1 + p, MQ_BYTES)).hexdigest()
        got = hashlib.sha256(LG.data(2 + p, MQ_BYTES)).hexdigest()
        assert guest[f"sent_{p}"] == sent == peer_out[f"recv_{p}"] == guest[f"peer_got_{p}"], p
        assert peer_out[f"sent_{p}"] == got == guest[f"recv_{p}"], p
        assert guest[f"recv_bytes_{p}"] == peer_out[f"recv_bytes_{p}"] == MQ_BYTES
    qs = guest["queue_stats"]
    tx = [qs.get(f"tx_queue_{p}_packets", 0) for p in range(MQ_PAIRS)]
    assert all(n > 100 for n in tx), qs            # each TX queue carried a flow (TSO: 64 KB a packet)
    pairs = served["last_device"]["pairs"]         # QEMU has gone: the counters its connection left
    assert len(pairs) == MQ_PAIRS and all(p["tx_frames"] > 100 for p in pairs), pairs
    print(f"guest TX queue packets {tx}, rx {[qs.get(f'rx_queue_{p}_packets', 0) for p in range(MQ_PAIRS)]}; "
          f"vnetbe pairs tx {[p['tx_frames'] for p in pairs]} rx {[p['rx_frames'] for p in pairs]}")


class _Watch(io.TextIOBase):
    """The lab's output, to a file, with an event set once ``marker`` was printed."""

    def __init__(self, path, marker: str):
        self.f, self.marker, self.seen, self.text = open(path, "w"), marker, threading.Event(), ""

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        self.f.write(s)
        self.f.flush()
        self.text += s
        if self.marker in self.text:
            self.seen.set()
        return len(s)

    def close(self) -> None:
        self.f.close()
        super().close()


def test_a_qemu_with_reconnect_is_served_again_by_a_restarted_server_after_kill_9(tmp_path):
    topo = Topology("vr", mtu=1500)
    sock = str(tmp_path / "vu.sock")
    macvtap = "vnbvrm0"
    serves: list[Serve] = []
    watch = _Watch(tmp_path / "guest.out", "PHASE1")
    result: dict = {}
    try:
        subprocess.run(["ip", "link", "add", "link", topo.parent, "name", macvtap, "address", LG.GUEST_MAC, "type",
                        "macvtap", "mode", "bridge"], check=True)
        subprocess.run(["ip", "link", "set", macvtap, "up"], check=True)
        for cmd in (["addr", "add", f"{LG.PEER_IP}/24", "dev", topo.peer], ["link", "set", topo.peer, "up"]):
            subprocess.run(["ip", "-n", topo.netns, *cmd], check=True)
        serves.append(Serve("--socket", sock, "--macvtap", macvtap))
        serves[0].wait_line("listening on")

        def guest():
            result["rc"] = lab.run([sys.executable, "-c", LG.RECONNECT_SCRIPT, LG.GUEST_IP, LG.PEER_IP, "1500"],
                                   memory=LG.MEMORY, qemu_opts=LG.qemu_opts(sock, mtu=1500, reconnect=1),
                                   timeout=600, stdout=watch, stderr=watch)
        th = threading.Thread(target=guest)
        th.start()
        assert watch.seen.wait(300), watch.text[-3000:]
        os.kill(serves[0].proc.pid, signal.SIGKILL)
        serves[0].stop()
        serves.append(Serve("--socket", sock, "--macvtap", macvtap))
        serves[1].wait_line("listening on")
        serves[1].wait_line("connected: front end pid", timeout=120)
        th.join(400)
        assert not th.is_alive()
    finally:
        for s in serves:
            s.stop()
        watch.close()
        topo.close()
    assert result.get("rc") == 0, watch.text[-3000:]
    guest = _guest_result(watch.text)
    assert guest["ping_before"] and guest["carrier_lost"] and guest["carrier_back"], guest
    assert guest["ping_after"], guest
    print(f"traffic resumed {guest['resumed_s']:.1f} s after the back end was killed")
