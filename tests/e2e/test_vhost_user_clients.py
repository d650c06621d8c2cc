"""``vnetbe serve`` driven by front ends nobody here wrote: DPDK's testpmd (virtio-user PMD) moving
frames both ways through a macvtap to the peer, counted at both ends, on each datapath (vhost in the
kernel lab); and the CLI's own promises
(one line when a front end connects, counters on SIGUSR1, a clean exit on SIGTERM)."""
from __future__ import annotations

import json
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time

import pytest

from vnbtest.wait import wait_for
from vnetbe import spec
from vnetbe.tools import dpdk
from vnetbe.tools.peer import Peer
from vnetbe.tools.topology import Topology

pytestmark = pytest.mark.root

RING = 256          # virtio-user's default queue size: frames testpmd queued that the device may not have taken
VQ = {"split": "", "packed": ",packed_vq=1"}   # virtio-user's ring format


class Serve:
    """``vnetbe serve`` in a subprocess; its stdout lines collected by a reader thread, so that waiting
    for a line that never comes fails the test after its timeout instead of blocking it for good."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "vnetbe", "serve", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []      # every line read so far (waited for or not)
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.stderr = ""

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._queue.put(line)
        self._queue.put(None)           # EOF: the process closed its stdout

    def wait_line(self, needle: str, timeout: float = 120.0) -> str:
        """The next line with ``needle`` in it, waiting at most ``timeout`` s (generous: in the kernel
        lab, under software emulation, serve takes well over 10 s to start)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                self._queue.put(None)   # stays at EOF for the next waiter
                break
            self.lines.append(line)
            if needle in line:
                return line
        raise AssertionError(f"vnetbe serve never said {needle!r} within {timeout:.0f} s; said {self.lines}; "
                             f"stderr {self.proc.stderr.read() if self.proc.poll() is not None else ''}")

    def stats(self) -> dict:
        self.proc.send_signal(signal.SIGUSR1)
        return json.loads(self.wait_line('{"stats"'))["stats"]

    def stop(self) -> int:
        """SIGTERM, then the exit status; the lines it printed meanwhile join ``lines``. Again: the same."""
        if self.proc.stdout.closed:
            return self.proc.returncode
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(10)
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self._queue.put(None)
                break
            self.lines.append(line)
        self.stderr = self.proc.stderr.read()
        self.proc.stdout.close()
        self.proc.stderr.close()
        return self.proc.returncode


def _link_counter(netns: str, ifname: str, key: str) -> int:
    out = subprocess.run(["ip", "-n", netns, "-s", "-j", "link", "show", ifname], capture_output=True, text=True,
                         check=True).stdout
    rx = json.loads(out)[0]["stats64"]["rx"]
    return rx[key]


@pytest.fixture
def topo():
    t = Topology("vd")
    yield t
    t.close()


def _rings_as_asked(st: dict, ring: str, datapath: str) -> bool:
    """Packed negotiated exactly when asked for and offered (vhost-net has no packed rings: split)."""
    packed = bool(st["device"]["features"] & spec.bit(spec.VIRTIO_F_RING_PACKED))
    return packed == (ring == "packed" and datapath != "vhost")


@pytest.mark.parametrize("ring", ["split", "packed"])
def test_testpmd_txonly_frames_reach_the_peer_through_vnetbe_serve(topo, tmp_path, datapath, ring):
    sock = str(tmp_path / "vu.sock")
    serve = Serve("--socket", sock, "--parent", topo.parent, "--mode", "bridge", "--name", "vnbvdm0",
                  "--datapath", datapath)
    pmd = None
    try:
        serve.wait_line("listening on")
        before = _link_counter(topo.netns, topo.peer, "packets")
        pmd = dpdk.Testpmd(dpdk.command(f"net_virtio_user0,path={sock},queues=1{VQ[ring]}", "txonly",
                                        prefix="vnbtx"))
        serve.wait_line("connected: front end pid")
        assert wait_for(lambda: serve.stats()["device"]["tx_frames"] > 20_000, 30.0)
        assert _rings_as_asked(serve.stats(), ring, datapath)
        _, pmd_tx = pmd.stop()
        serve.wait_line("disconnected")
        st = serve.stats()
        assert not st["connected"]
    finally:
        if pmd is not None:
            pmd.kill()
        rc = serve.stop()
    gone = [line for line in serve.lines if "disconnected" in line][0]
    dev_tx = int(gone.split(" tx ")[1].split()[0])
    arrived = _link_counter(topo.netns, topo.peer, "packets") - before
    # Every frame the device took arrived at the peer (a veth does not drop at this rate), and the
    # device took what testpmd queued, less what was still in the ring when testpmd stopped.
    assert pmd_tx - RING <= dev_tx <= pmd_tx, (pmd_tx, dev_tx)
    assert dev_tx <= arrived <= dev_tx + 16, (dev_tx, arrived)
    assert rc == 0 and not os.path.exists(sock), serve.stderr


def test_testpmd_with_two_queues_sends_on_both_pairs_and_every_frame_reaches_the_peer(topo, tmp_path, datapath):
    """virtio-user queues=2 (cq=1: DPDK requires a control queue for multiqueue, which it keeps and turns
    into SET_VRING_ENABLE), testpmd --txq=2 --rxq=2 txonly: both of vnetbe's pairs take frames, and
    every frame the device took reached the peer."""
    sock = str(tmp_path / "vu.sock")
    serve = Serve("--socket", sock, "--parent", topo.parent, "--mode", "bridge", "--name", "vnbvdm0",
                  "--datapath", datapath, "--queues", "2")
    pmd = None
    try:
        serve.wait_line("listening on")
        before = _link_counter(topo.netns, topo.peer, "packets")
        pmd = dpdk.Testpmd(dpdk.command(f"net_virtio_user0,path={sock},queues=2,cq=1", "txonly", prefix="vnbmq",
                                        extra=("--rxq=2", "--txq=2")))
        serve.wait_line("connected: front end pid")
        pairs = lambda: serve.stats().get("device", {}).get("pairs", [{"tx_frames": 0}])
        assert wait_for(lambda: all(p["tx_frames"] > 10_000 for p in pairs()), 60.0), (
            pairs(), [line for line in serve.lines if not line.startswith("{")])
        st = serve.stats()["device"]
        assert st["features"] & spec.bit(spec.VIRTIO_NET_F_MQ), hex(st["features"])
        pmd.stop()
        serve.wait_line("disconnected")
        last = serve.stats()["last_device"]
    finally:
        if pmd is not None:
            pmd.kill()
        rc = serve.stop()
    arrived = _link_counter(topo.netns, topo.peer, "packets") - before
    dev_tx = last["tx_frames"]
    assert dev_tx == sum(p["tx_frames"] for p in last["pairs"])
    assert dev_tx <= arrived <= dev_tx + 16, (dev_tx, arrived, last["pairs"])
    assert rc == 0


def test_testpmd_txonly_to_the_peers_mac_keeps_flowing_through_vnetbe_serve(topo, tmp_path, datapath):
    """The options of issue 19's reported stall (txonly to the peer's own MAC, one forwarding core,
    stats every 4 s): the device keeps taking frames, sampled three times after the first, and each
    one it took reached the peer."""
    sock = str(tmp_path / "vu.sock")
    serve = Serve("--socket", sock, "--parent", topo.parent, "--mode", "bridge", "--name", "vnbvdm0",
                  "--datapath", datapath)
    pmd = None
    try:
        serve.wait_line("listening on")
        with topo.ns.ipr() as ipr:
            peer_mac = ipr.link("get", ifname=topo.peer)[0].get_attr("IFLA_ADDRESS")
        before = _link_counter(topo.netns, topo.peer, "packets")
        pmd = dpdk.Testpmd(dpdk.command(f"net_virtio_user0,path={sock},queues=1", "txonly", prefix="vnbtp",
                                        extra=(f"--eth-peer=0,{peer_mac}", "--nb-cores=1", "--stats-period", "4")))
        serve.wait_line("connected: front end pid")
        tx = lambda: serve.stats()["device"]["tx_frames"]
        assert wait_for(lambda: tx() > 0, 120.0), "testpmd's frames never reached the device"
        for _ in range(3):                       # a stall after the first bursts fails here
            seen = tx()
            assert wait_for(lambda: tx() > seen + 2000, 30.0), f"the device stopped taking frames at {seen}"
        pmd.stop()
        serve.wait_line("disconnected")
    finally:
        if pmd is not None:
            pmd.kill()
        rc = serve.stop()
    gone = [line for line in serve.lines if "disconnected" in line][0]
    dev_tx = int(gone.split(" tx ")[1].split()[0])
    arrived = _link_counter(topo.netns, topo.peer, "packets") - before
    assert dev_tx <= arrived <= dev_tx + 16, (dev_tx, arrived)
    assert rc == 0


@pytest.mark.parametrize("ring", ["split", "packed"])
def test_frames_from_the_peer_reach_testpmd_rxonly_through_vnetbe_serve(topo, tmp_path, datapath, ring):
    sock = str(tmp_path / "vu.sock")
    mac = "02:00:00:78:00:05"
    serve = Serve("--socket", sock, "--parent", topo.parent, "--mode", "bridge", "--name", "vnbvdm0", "--mac", mac,
                  "--datapath", datapath)
    pmd = None
    peer = Peer(topo.peer, topo.netns)
    count = 20_000
    try:
        serve.wait_line("listening on")
        pmd = dpdk.Testpmd(dpdk.command(f"net_virtio_user0,path={sock},queues=1,mac={mac}{VQ[ring]}", "rxonly",
                                        prefix="vnbrx"))
        serve.wait_line("connected: front end pid")
        assert wait_for(lambda: serve.stats()["device"]["status"] & spec.DRIVER_OK, 10.0)   # rings running
        assert _rings_as_asked(serve.stats(), ring, datapath)
        pmd.wait_forwarding()
        sent = 0
        for i in range(count // 1000):
            sent += peer.send_tagged(1000, 128, dst=mac, first_seq=i * 1000, pace_ns=2000)["sent"]
        assert wait_for(lambda: serve.stats()["device"]["rx_frames"] >= sent, 10.0)
        dev = serve.stats()["device"]
        pmd_rx, _ = pmd.stop()
    finally:
        if pmd is not None:
            pmd.kill()
        peer.close()
        serve.stop()
    assert sent == count
    assert dev["rx_frames"] == sent, dev            # every frame the peer sent reached the ring
    assert pmd_rx == dev["rx_frames"], (pmd_rx, dev["rx_frames"])   # and testpmd received each of them


def test_serve_in_client_mode_connects_to_a_listening_testpmd_and_again_after_it_restarts(topo, tmp_path):
    """--client: the front end listens (virtio-user server=1, as Cloud Hypervisor can), vnetbe connects,
    and connects again to the next front end on the same path."""
    sock = str(tmp_path / "vu.sock")
    serve = Serve("--socket", sock, "--client", "--parent", topo.parent, "--mode", "bridge", "--name", "vnbvdm0")
    pmds = []
    try:
        serve.wait_line("connecting to")
        for run in range(2):
            before = _link_counter(topo.netns, topo.peer, "packets")
            pmds.append(dpdk.Testpmd(dpdk.command(f"net_virtio_user0,path={sock},queues=1,server=1", "txonly",
                                                  prefix=f"vnbcl{run}")))
            serve.wait_line("connected: front end pid", timeout=30)
            assert wait_for(lambda: _link_counter(topo.netns, topo.peer, "packets") - before > 10_000, 30.0)
            pmds[-1].stop()
            serve.wait_line("disconnected")
    finally:
        for p in pmds:
            p.kill()
        rc = serve.stop()
    assert rc == 0, serve.stderr


@pytest.mark.skipif(os.path.exists("/dev/vhost-net"), reason="this host has /dev/vhost-net: nothing to refuse")
def test_serve_on_vhost_without_vhost_net_says_so_in_one_line_with_the_lab(topo, tmp_path):
    r = subprocess.run([sys.executable, "-m", "vnetbe", "serve", "--socket", str(tmp_path / "s"), "--parent",
                        topo.parent, "--name", "vnbvdm0", "--datapath", "vhost"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert "/dev/vhost-net does not exist" in r.stderr and "vnetbe lab" in r.stderr
    assert not os.path.exists("/sys/class/net/vnbvdm0")      # the macvtap it made is gone again


def test_serve_says_what_is_wrong_in_one_line():
    r = subprocess.run([sys.executable, "-m", "vnetbe", "serve", "--socket", "/tmp/vnb-none.sock", "--parent",
                        "vnb-nosuch0"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "vnb-nosuch0 does not exist" in r.stderr, r.stderr


def test_a_burst_of_stats_signals_while_stdout_is_full_is_answered_and_serve_lives(topo, tmp_path):
    """SIGUSR1 asks for the counters. Hundreds of them while nobody reads serve's stdout fill the pipe:
    a write blocks, and more signals arrive during it. serve answers with whole lines once the pipe
    drains (signals that arrive while one is pending merge: up to one line each), answers the next
    request, and exits cleanly (a handler that wrote itself re-entered stdout's buffer: serve died of
    RuntimeError, or hung)."""
    sock = str(tmp_path / "vu.sock")
    p = subprocess.Popen([sys.executable, "-m", "vnetbe", "serve", "--socket", sock, "--parent", topo.parent,
                          "--mode", "bridge", "--name", "vnbvdm0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = b""
    stats_line = b'{"stats"'

    def read_until(pred, timeout: float) -> bool:
        nonlocal out
        deadline = time.monotonic() + timeout
        while not pred(out):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([p.stdout], [], [], left)[0]:
                return False
            chunk = os.read(p.stdout.fileno(), 1 << 16)
            if not chunk:
                return pred(out)
            out += chunk
        return True

    try:
        assert read_until(lambda o: b"listening" in o, 60), out
        out = b""
        n, t0 = 0, time.monotonic()
        while time.monotonic() - t0 < 1.5:   # ~1000 requests of ~1.4 KB lines: the 64 KiB pipe fills
            p.send_signal(signal.SIGUSR1)
            n += 1
            time.sleep(0.001)
        time.sleep(0.5)
        assert p.poll() is None, p.stderr.read().decode()
        read_until(lambda o: False, 3.0)  # everything it has to say, until 3 s of quiet
        first = out.count(stats_line)
        assert 100 <= first <= n, f"{first} stats lines for {n} requests"
        p.send_signal(signal.SIGUSR1)     # and it still answers
        assert read_until(lambda o: o.count(stats_line) > first, 20), "no answer after the burst"
        lines = out.decode().splitlines()
        assert all(json.loads(line)["stats"]["connected"] is False for line in lines), "a torn line"
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 0 and b"Traceback" not in err, err.decode()
