"""The test peer on real kernel objects: a namespace, veth pairs and a macvtap, all named vnbP*.

    vnbPa (this namespace) <-- veth --> vnbPb (namespace vnbP-ns)   tagged floods, single frames
      '-- vnbPt (macvtap, bridge) -> /dev/tap<ifindex>                   raw write/read loops
    vnbPc (this namespace) <-- veth --> vnbPd (vnbP-ns, 10.77.0.2/24, fd00:77::2/64)
                                                                     the Linux stack checks our checksums

Nothing else is touched; everything is removed at the end, also on failure, and leftovers of a
killed run (same names) are removed first.  Rates: ``python3 -m pytest tests/e2e/test_peer.py -k rate -s``.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import struct
import subprocess
import threading
import time
from types import SimpleNamespace

import pytest

from vnetbe.tools import packet as P
from vnetbe.errors import KernelRefused, LinkError, SetupError

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces, veth, macvtap"),
]

pyroute2 = pytest.importorskip("pyroute2")
from pyroute2 import IPRoute, NetNS, netns  # noqa: E402

from vnetbe.link.base import silence_host_stack  # noqa: E402
from vnetbe.tools.peer import Peer, run_in_netns  # noqa: E402

NS = "vnbP-ns"
A, B = "vnbPa", "vnbPb"
C, D = "vnbPc", "vnbPd"
TAP = "vnbPt"
MTU = 9000
TUNSETVNETHDRSZ = 0x400454D8
NUD_PERMANENT = 0x80
IFA_F_NODAD = 0x02


def _cleanup() -> None:
    """Remove our objects (and only ours).  Deleting one end of a veth deletes both."""
    with IPRoute() as ipr:
        for name in (TAP, A, C):
            for idx in ipr.link_lookup(ifname=name):
                ipr.link("del", index=idx)
    if NS in netns.listnetns():
        netns.remove(NS)


def _link_mac(ipr, idx: int) -> bytes:
    return P.mac(ipr.get_links(idx)[0].get_attr("IFLA_ADDRESS"))


@pytest.fixture(scope="module")
def lab():
    _cleanup()
    netns.create(NS)
    try:
        with IPRoute() as ipr:
            ipr.link("add", ifname=A, kind="veth", peer={"ifname": B, "net_ns_fd": NS})
            ipr.link("add", ifname=C, kind="veth", peer={"ifname": D, "net_ns_fd": NS})
            for name in (A, C):
                silence_host_stack(name)
            a, c = ipr.link_lookup(ifname=A)[0], ipr.link_lookup(ifname=C)[0]
            ipr.link("set", index=a, mtu=MTU, state="up")
            ipr.link("set", index=c, state="up")
            a_mac, c_mac = _link_mac(ipr, a), _link_mac(ipr, c)
        run_in_netns(NS, lambda: silence_host_stack(B))
        with NetNS(NS) as ns:
            b, d = ns.link_lookup(ifname=B)[0], ns.link_lookup(ifname=D)[0]
            ns.link("set", index=b, mtu=MTU, state="up")
            ns.addr("add", index=d, address="10.77.0.2", prefixlen=24)
            ns.addr("add", index=d, address="fd00:77::2", prefixlen=64, flags=IFA_F_NODAD)
            ns.link("set", index=d, state="up")
            # Static neighbours: the stack answers our frames without ARP / ND, and no address
            # is ever put in this (the host's) namespace.
            ns.neigh("add", dst="10.77.0.1", lladdr=P.mac_str(c_mac), ifindex=d, state=NUD_PERMANENT)
            ns.neigh("add", dst="fd00:77::1", lladdr=P.mac_str(c_mac), ifindex=d, state=NUD_PERMANENT)
            b_mac, d_mac = _link_mac(ns, b), _link_mac(ns, d)
        # Turn off TX checksum offload on the stack's side, so the frames it sends carry finished
        # checksums (a veth passes CHECKSUM_PARTIAL frames to its peer as they are).
        tx_csum_off = shutil.which("ethtool") is not None and subprocess.run(
            ["ip", "netns", "exec", NS, "ethtool", "-K", D, "tx", "off"],
            capture_output=True).returncode == 0
        yield SimpleNamespace(a_mac=a_mac, b_mac=b_mac, c_mac=c_mac, d_mac=d_mac,
                              tx_csum_off=tx_csum_off)
    finally:
        _cleanup()


@pytest.fixture(params=[False, True], ids=["recvmmsg", "ring"])
def pair(lab, request):
    with Peer(A, rx_ring=request.param) as a, Peer(B, NS, rx_ring=request.param) as b:
        a.flush()
        b.flush()
        yield a, b


def _recv_in_thread(peer: Peer, *args, **kw):
    box: dict = {}

    def run():
        try:
            box["res"] = peer.recv_tagged(*args, **kw)
        except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
            box["err"] = e

    t = threading.Thread(target=run)
    t.start()
    time.sleep(0.05)   # let the receiver reach its poll; frames sent earlier still wait in the socket

    def join() -> dict:
        t.join(60)
        assert not t.is_alive(), "receiver did not stop"
        if "err" in box:
            raise box["err"]
        return box["res"]

    return join


# ------------------------------------------------------------------------------- the Peer itself


def test_peer_knows_its_interface(lab):
    with Peer(A) as a, Peer(B, NS) as b:
        assert a.mac == lab.a_mac and b.mac == lab.b_mac
        assert b.netns == NS and "vnbPb" in repr(b)


def test_peer_errors(lab):
    with pytest.raises(LinkError):
        Peer("vnbPnope", NS)
    with pytest.raises(LinkError):
        Peer(B)                      # vnbPb lives in the namespace, not here
    with pytest.raises(SetupError):
        Peer(B, "vnbP-no-such-ns")


@pytest.mark.parametrize("size", [60, 1514, 9014])
def test_single_frames_both_ways(pair, size):
    a, b = pair
    f1 = P.raw_frame(size, b.mac, a.mac, seed=size)
    f2 = P.tagged_frame(9, size, a.mac, b.mac, flow=4)
    a.send(f1)
    assert b.recv(2.0) == f1
    b.send(f2)
    assert a.recv(2.0) == f2
    # PACKET_IGNORE_OUTGOING: a peer never receives what it sent itself.
    assert a.recv(0.1) is None and b.recv(0.1) is None


def test_capture_and_flush(pair):
    a, b = pair
    for i in range(5):
        a.send(P.raw_frame(60, b.mac, a.mac, seed=i))
    a.send(P.tagged_frame(1, 60, b.mac, a.mac))
    got = b.capture(10, 1.0, match=lambda f: f[12:14] == b"\x88\xb6")
    assert got == [P.raw_frame(60, b.mac, a.mac, seed=i) for i in range(5)]
    assert b.flush() == 0    # the tagged frame was read (and not matched) by capture
    for _ in range(3):
        a.send(P.raw_frame(60, b.mac, a.mac))
    time.sleep(0.05)
    assert b.flush() == 3
    assert b.recv(0.05) is None


@pytest.mark.parametrize("size,count", [(60, 50_000), (1514, 20_000), (9014, 3000)])
def test_tagged_flood_in_order_and_byte_exact(pair, size, count):
    a, b = pair
    join = _recv_in_thread(b, count, 2.0, 7)
    tx = a.send_tagged(count, size, b.mac, flow=7, first_seq=1000)
    rx = join()
    assert tx["sent"] == count and tx["err"] == 0 and tx["next_seq"] == 1000 + count
    assert rx["tp_drops"] == 0, rx
    assert rx["received"] == count and rx["bad"] == 0, rx
    assert (rx["out_of_order"], rx["duplicates"], rx["missing"]) == (0, 0, 0), rx
    assert (rx["first_seq"], rx["last_seq"]) == (1000, 1000 + count - 1)
    assert rx["bytes"] == count * size and rx["ok"]
    st = b.stats()
    assert st["tp_drops"] == 0 and st["received"] >= count


def test_flows_are_kept_apart(pair):
    a, b = pair
    a.send_tagged(500, 100, b.mac, flow=2)
    a.send_tagged(300, 100, b.mac, flow=1)
    a.send_tagged(200, 100, b.mac, flow=2, first_seq=500)
    r1 = b.recv_tagged(0, 0.3, flow=1)      # 0: everything until quiet
    assert r1["received"] == 300 and r1["ignored"] >= 500 and r1["ok"] is False  # expect was 0
    assert (r1["bad"], r1["missing"], r1["out_of_order"]) == (0, 0, 0)


def test_recv_tagged_continues_across_calls(pair):
    a, b = pair
    a.send_tagged(1000, 64, b.mac, flow=5)
    r = b.recv_tagged(400, 1.0, flow=5)
    assert r["got"] == 400 and r["last_seq"] == 399
    r = b.recv_tagged(600, 1.0, flow=5, reset=False)
    assert r["got"] == 600 and r["received"] == 1000 and r["ok"] is False   # 1000 != 600
    assert (r["missing"], r["duplicates"], r["out_of_order"]) == (0, 0, 0)


def test_pacing(pair):
    a, b = pair
    tx = a.send_tagged(500, 60, b.mac, flow=3, pace_ns=50_000)   # 20 kpps
    assert tx["sent"] == 500
    assert 499 * 50e-6 * 0.99 <= tx["elapsed_s"] < 499 * 50e-6 * 3
    rx = b.recv_tagged(500, 1.0, flow=3)
    assert rx["ok"]


def test_frame_over_mtu_is_refused(lab):
    with Peer(A) as a:
        with pytest.raises(KernelRefused) as ei:
            a.send_tagged(1, MTU + 14 + 1, "02:00:00:00:00:09")
        assert ei.value.errno == 90    # EMSGSIZE: AF_PACKET sends at most MTU + 14 without GSO


def test_drops_are_accounted(lab):
    # A receiver that does not read: the socket buffer fills and the kernel counts the rest.
    with Peer(A) as a, Peer(B, NS, rcvbuf=256 * 1024) as b:
        b.flush()
        a.send_tagged(5000, 1514, b.mac, flow=1)
        rx = b.recv_tagged(0, 0.2, flow=1)
        assert rx["received"] + rx["tp_drops"] == 5000, rx
        assert rx["tp_drops"] > 0 and rx["bad"] == 0, rx
        # `missing` only knows the gaps below the highest seq seen; drops at the head or the tail
        # (here: everything after the buffer filled) are the caller's to count from first/max seq.
        lost = rx["first_seq"] + rx["missing"] + (4999 - rx["max_seq"])
        assert lost == rx["tp_drops"], rx


# ---------------------------------------------------------------- the Linux stack as a checksum oracle


def _stack_reply(p: Peer, frame: bytes, match, timeout: float = 1.0):
    p.flush()
    p.send(frame)
    got = p.capture(1, timeout, match=match)
    return got[0] if got else None


def _is_tcp(f: bytes) -> bool:
    return P.parse_tcp(f) is not None


def _snmp(proto: str, field: str) -> int:
    # thread-self: /proc/net is /proc/self/net, i.e. the namespace of the main thread.
    def read() -> int:
        lines = [ln.split() for ln in open("/proc/thread-self/net/snmp") if ln.startswith(proto + ":")]
        return int(lines[1][lines[0].index(field)])
    return run_in_netns(NS, read)  # type: ignore[return-value]


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_stack_accepts_our_tcp(lab, v6):
    build = P.tcp_ipv6_frame if v6 else P.tcp_ipv4_frame
    src, dst = ("fd00:77::1", "fd00:77::2") if v6 else ("10.77.0.1", "10.77.0.2")
    with Peer(C) as p:
        syn = build(lab.d_mac, lab.c_mac, src, dst, 40000, 9, b"hello", seq=1000, flags=P.TCP_SYN)
        rst = _stack_reply(p, syn, _is_tcp)
        assert rst is not None, "the stack did not answer a SYN to a closed port: checksum refused?"
        seg = P.parse_tcp(rst)
        assert seg.flags & P.TCP_RST and seg.ack == 1000 + 1 + 5 and seg.dport == 40000
        if lab.tx_csum_off:
            assert P.checksums_ok(rst)          # our verifier agrees with the kernel's sums
        bad = bytearray(syn)
        bad[-1] ^= 0x40
        assert _stack_reply(p, bytes(bad), _is_tcp, 0.3) is None   # control: a bad sum is dropped


def test_stack_accepts_our_udp(lab):
    with Peer(C) as p:
        for v6 in (False, True):
            if v6:
                f = P.udp_ipv6_frame(lab.d_mac, lab.c_mac, "fd00:77::1", "fd00:77::2", 40000, 9, b"abc")
                icmp = lambda x: x[12:14] == b"\x86\xdd" and x[20] == 58      # noqa: E731
            else:
                f = P.udp_ipv4_frame(lab.d_mac, lab.c_mac, "10.77.0.1", "10.77.0.2", 40000, 9, b"abc")
                icmp = lambda x: x[12:14] == b"\x08\x00" and x[23] == 1       # noqa: E731
            reply = _stack_reply(p, f, icmp)
            assert reply is not None, f"no port unreachable for UDP/IPv{6 if v6 else 4}"
            if not v6:
                assert P.ipv4_header_ok(reply) and P.internet_checksum(reply[34:]) == 0


def test_stack_and_partial_checksum_frames(lab):
    with Peer(C) as p:
        frame, start, off = P.tcp_ipv4_frame_partial(lab.d_mac, lab.c_mac, "10.77.0.1", "10.77.0.2",
                                                     40001, 9, b"x" * 300, seq=5, flags=P.TCP_SYN)
        errs = _snmp("Tcp", "InCsumErrors")
        assert _stack_reply(p, frame, _is_tcp, 0.3) is None      # unfinished: the stack drops it
        assert _snmp("Tcp", "InCsumErrors") == errs + 1
        assert _stack_reply(p, P.complete_partial_csum(frame, start, off), _is_tcp) is not None


# ------------------------------------------------------------------------------- macvtap raw loops


@pytest.fixture
def tap(lab):
    fd = -1
    try:
        with IPRoute() as ipr:
            ipr.link("add", ifname=TAP, kind="macvtap", link=ipr.link_lookup(ifname=A)[0],
                     macvtap_mode="bridge")
            idx = ipr.link_lookup(ifname=TAP)[0]
            silence_host_stack(TAP)
            ipr.link("set", index=idx, state="up")
            mac = _link_mac(ipr, idx)
        path = f"/dev/tap{idx}"
        for _ in range(100):       # devtmpfs creates the node asynchronously
            if os.path.exists(path):
                break
            time.sleep(0.02)
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", 12))
        yield SimpleNamespace(fd=fd, mac=mac)
    finally:
        if fd >= 0:
            os.close(fd)
        with IPRoute() as ipr:
            for idx in ipr.link_lookup(ifname=TAP):
                ipr.link("del", index=idx)


def test_raw_write_loop_through_macvtap(lab, tap):
    from vnetbe.tools._native import ffi, lib
    n = 20_000
    with Peer(B, NS) as b:
        b.flush()
        frame = bytes(12) + P.tagged_frame(77, 60, b.mac, tap.mac, flow=6)
        join = _recv_in_thread(b, n, 2.0, 6)
        st = ffi.new("struct vnb_raw_stats *")
        assert lib.vnb_raw_write_loop_ex(tap.fd, frame, len(frame), n, st) == n
        rx = join()
        assert st.err == 0 and st.bytes == n * len(frame)
        # The same frame n times: one good seq, n - 1 duplicates, nothing damaged.
        assert rx["received"] == n and rx["bad"] == 0 and rx["duplicates"] == n - 1, rx
        assert rx["first_seq"] == rx["last_seq"] == 77


def test_raw_read_loop_through_macvtap(lab, tap):
    from vnetbe.tools._native import ffi, lib
    n = 20_000
    buf = ffi.new("uint8_t[2048]")
    st = ffi.new("struct vnb_raw_stats *")
    box = {}
    t = threading.Thread(target=lambda: box.update(n=lib.vnb_raw_read_loop_ex(tap.fd, buf, 2048, n,
                                                                            1000, st)))
    t.start()
    with Peer(B, NS) as b:
        tx = b.send_tagged(n, 60, tap.mac, flow=8)
    t.join(30)
    assert tx["sent"] == n
    assert box["n"] == n and st.err == 0 and st.bytes == n * (12 + 60)
    # The last frame read: a 12-byte vnet header (no flags, no GSO) and the last tagged frame.
    assert bytes(buf[0:2]) == b"\0\0"
    assert P.check_tagged(bytes(buf[12:72])) == (True, n - 1, 8)


# ------------------------------------------------------------------------------------ rates


def test_rate_report(lab, capsys):
    """Sender and receiver rates on the veth pair (printed with -s); checks integrity only."""
    rows = []
    for ring in (False, True):
        for size, n in ((60, 200_000), (1514, 100_000)):
            with Peer(A) as a, Peer(B, NS, rx_ring=ring) as b:
                b.flush()
                join = _recv_in_thread(b, n, 2.0, 1)
                tx = a.send_tagged(n, size, b.mac, flow=1)
                rx = join()
            assert rx["bad"] == rx["duplicates"] == rx["out_of_order"] == 0, rx
            assert rx["received"] >= 0.9 * n, rx
            rows.append(f"{'ring' if ring else 'recvmmsg':8} {size:5} B  tx {tx['pps'] / 1e3:7.0f} kpps "
                        f"{tx['gbps']:5.2f} Gb/s  rx {rx['pps'] / 1e3:7.0f} kpps  "
                        f"received {rx['received']}/{n} drops {rx['tp_drops']}")
    with capsys.disabled():
        print("\nveth pair, one sender thread, one receiver thread:")
        print("\n".join(rows))
