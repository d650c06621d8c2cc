"""VirtioNet.save() / VirtioNet.restore() (vnetbe/snapshot.py): a stopped device's state moves to
another process over the same guest memory, and its rings go on from where they stood, no frame lost
or repeated; the control queue and the RX filters its driver set come along. A snapshot that does not
fit (corrupt, newer, another memory, a used index the memory does not hold, features not offered,
rings outside the memory, missing fds) is refused with the reason, and nothing is left open."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from vnbtest.device import DeviceRig
from vnbtest.fakelink import PairLink
from vnetbe import spec
from vnetbe.device import VirtioNet
from vnetbe.errors import ConfigError, SnapshotRefused
from vnetbe.memory import GuestMemory
from vnetbe import snapshot

ROOT = Path(__file__).resolve().parents[2]
QSIZE = 64

# The other process: restores the device from the snapshot on stdin over the memory fds and link socket
# it inherited, runs it until told, then stops it and prints its own snapshot.
CHILD = r"""
import json, os, socket, sys
from vnbtest.fakelink import PairLink
from vnetbe.device import VirtioNet
from vnetbe.memory import GuestMemory
a = json.loads(sys.argv[1])
mem = GuestMemory.from_fds([(g, s, fd, 0) for g, s, fd in a["regions"]])
link = PairLink.from_socket(socket.socket(fileno=a["link_fd"]))
snap = sys.stdin.buffer.readline().rstrip(b"\n")
dev = VirtioNet.restore(snap, mem, link, {int(q): tuple(v) for q, v in a["fds"].items()}, a["datapath"])
dev.start()
print(json.dumps({"promisc": link.promisc, "mac": dev.mac}), flush=True)
sys.stdin.readline()
dev.stop()
sys.stdout.buffer.write(dev.save() + b"\n")
sys.stdout.flush()
dev.close(); link.close(); mem.close()
"""


def frame(i: int, size: int = 200) -> bytes:
    return bytes.fromhex("020000000002" "020000000001") + b"\x88\xb5" + i.to_bytes(4, "big") + \
        bytes((i + k) & 0xFF for k in range(size - 18))


def _both_ways(guest, link, start: int, n: int = 100) -> None:
    """n frames out and n in, each checked: the ring indices pass the ring size (64) and wrap."""
    for i in range(start, start + n):
        guest.send(frame(i))
        got = link.sent(2.0)
        assert got is not None and got[-len(frame(i)):] == frame(i), f"TX frame {i}: {got!r}"
        link.inject(frame(i, 120))
        assert guest.receive(2.0) == frame(i, 120), f"RX frame {i}"


def _fds(guest) -> dict[int, tuple[int, int]]:
    fds = {q: (guest.kick_fd[q], guest.call_fd[q]) for q in guest.kick_fd}
    fds[2] = (guest.ctrl_kick, guest.ctrl_call)
    return fds


@pytest.fixture(params=["split", "packed"])
def rig(request):
    r = DeviceRig(GuestMemory(16 << 20), queue_size=QSIZE, packed=request.param == "packed", ctrl=True)
    yield r
    r.close()


def test_a_device_restored_in_another_process_goes_on_from_where_its_rings_stood(rig, userspace_datapath):
    g = rig.guest
    assert g.ctrl_command(spec.VIRTIO_NET_CTRL_RX, spec.VIRTIO_NET_CTRL_RX_PROMISC, b"\x01") == spec.VIRTIO_NET_OK
    _both_ways(g, rig.link, 0)
    rig.dev.stop()
    snap = rig.dev.save()

    there, here = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    fds = _fds(g)
    args = {"regions": [(r.gpa, r.size, r.fd) for r in rig.mem.regions], "link_fd": there.fileno(),
            "fds": fds, "datapath": userspace_datapath}
    inherited = [there.fileno()] + [r.fd for r in rig.mem.regions] + [fd for p in fds.values() for fd in p]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join((str(ROOT), str(ROOT / "tests")))}
    child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(args)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=inherited, env=env)
    try:
        there.close()
        child.stdin.write(snap + b"\n")
        child.stdin.flush()
        line = child.stdout.readline()
        assert line, child.stderr.read().decode()[-2000:]
        assert json.loads(line) == {"promisc": True, "mac": rig.dev.mac}    # the driver's filter came along
        here.settimeout(2.0)     # this end is the network's
        for i in range(100, 200):
            g.send(frame(i))
            got = here.recv(1 << 17)
            assert got[-len(frame(i)):] == frame(i), f"TX frame {i} in the other process"
            here.send(bytes(rig.link.vnet_hdr_len) + frame(i, 120))
            assert g.receive(2.0) == frame(i, 120), f"RX frame {i} in the other process"
        # the control queue goes on there too
        assert g.ctrl_command(spec.VIRTIO_NET_CTRL_RX, spec.VIRTIO_NET_CTRL_RX_ALLMULTI, b"\x01") == spec.VIRTIO_NET_OK
        out, err = child.communicate(b"stop\n", timeout=30)
        assert child.returncode == 0, err.decode()[-2000:]
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        here.close()
    back = snapshot.decode(out.strip())
    assert back["rx_filters"] == {"promisc": True, "allmulti": True}
    # And back here, over a new link: the rings stand where the other process left them.
    with PairLink() as link, VirtioNet.restore(out.strip(), rig.mem, link, fds, userspace_datapath) as dev:
        g.dev = dev
        dev.start()
        _both_ways(g, link, 200, 40)
        assert g.stats()["bad_used"] == 0
        assert dev.stats()["tx_frames"] == dev.stats()["rx_frames"] == 40
        g.dev = rig.dev


def test_save_refuses_a_running_device_and_the_snapshot_holds_every_ring(rig):
    with pytest.raises(ConfigError, match="stop"):
        rig.dev.save()
    _both_ways(rig.guest, rig.link, 0, 70)
    rig.dev.stop()
    body = snapshot.decode(rig.dev.save())
    packed = rig.guest.packed
    assert [q["index"] for q in body["queues"]] == [0, 1, 2]
    for q in body["queues"][:2]:
        # split: 70 chains each way; packed: position 70 - 64 = 6 with the wrap counter flipped to 0
        assert (q["last_avail_idx"], q["used_idx"]) == ((6, 6) if packed else (70, 70)), q
    assert body["driver_features"] == rig.dev.driver_features and body["mac"] == rig.dev.mac


def _refused(rig, body_or_data, match: str, fds=None, mem=None) -> None:
    data = body_or_data if isinstance(body_or_data, bytes) else snapshot.encode(body_or_data)
    before = len(os.listdir("/proc/self/fd"))
    with PairLink() as link:
        with pytest.raises(SnapshotRefused, match=match):
            VirtioNet.restore(data, mem or rig.mem, link, _fds(rig.guest) if fds is None else fds)
    assert len(os.listdir("/proc/self/fd")) == before


@pytest.fixture
def saved(rig):
    _both_ways(rig.guest, rig.link, 0, 5)
    rig.dev.stop()
    return rig, rig.dev.save()


def test_a_corrupt_newer_or_foreign_snapshot_is_refused_with_the_reason(saved):
    rig, data = saved
    doc = json.loads(data)
    _refused(rig, data.replace(b'"mtu":', b'"mtu" :', 1)[:-3], "not JSON")
    _refused(rig, json.dumps({**doc, "format": "qemu"}).encode(), "format 'qemu'")
    _refused(rig, json.dumps({**doc, "version": 2}).encode(), "version 2 is newer")
    flipped = dict(doc, body=dict(doc["body"], mtu=doc["body"]["mtu"] + 1))
    _refused(rig, json.dumps(flipped).encode(), "sha256 does not match")
    for key, value, why in (("mtu", 1 << 20, "mtu"), ("mac", "zz", "mac"), ("queue_pairs", 3, "queue_pairs"),
                            ("driver_features", 1 << 63, "driver_features"), ("queues", {}, "queues")):
        _refused(rig, dict(doc["body"], **{key: value}), why)


def test_a_snapshot_over_other_memory_or_rings_is_refused(saved):
    rig, data = saved
    body = snapshot.decode(data)
    with GuestMemory(8 << 20) as other:
        _refused(rig, data, "guest memory does not match", mem=other)
    q0 = body["queues"][0]
    _refused(rig, dict(body, queues=[dict(q0, desc=1 << 40)] + body["queues"][1:]),
             "queue 0: .* not inside one guest memory region")
    _refused(rig, dict(body, queues=[dict(q0, index=7)] + body["queues"][1:]), "index")
    _refused(rig, dict(body, queues=body["queues"] + [q0]), "appears twice")
    _refused(rig, data, r"no \(kick_fd, call_fd\) for queue\(s\) \[2\]", fds={q: p for q, p in _fds(rig.guest).items() if q < 2})
    # a feature the device model cannot offer, negotiated on the saved side
    rss = spec.bit(60)
    _refused(rig, dict(body, device_features=body["device_features"] | rss,
                       driver_features=body["driver_features"] | rss), "does not offer")
    if not rig.guest.packed:
        used_idx = int.from_bytes(rig.mem.read(q0["used"] + 2, 2), "little")
        _refused(rig, dict(body, queues=[dict(q0, used_idx=used_idx + 1)] + body["queues"][1:]),
                 f"used->idx in guest memory is {used_idx}, the snapshot says {used_idx + 1}")
