"""A real Linux guest on vnetbe: QEMU (software emulation, via the kernel lab) boots the stock kernel
with a virtio-net-pci NIC whose back end is ``vnetbe serve`` over vhost-user. The guest's own
virtio_net driver is the test of vnetbe's device (tests/e2e/test_vhost_user_guest.py) and the load of
the guest TCP bench (bench/guest_tcp.py).

Inside the guest, GUEST_SCRIPT finds the virtio_net interface, gives it an address and MTU, reports
its offloads, pings the peer and moves DATA_BYTES each way over TCP; PEER_SCRIPT is the far end in the
topology's namespace. Both print one JSON line; sha256 of what each side sent and received is compared
by the test.
"""
from __future__ import annotations

import json
import random
import shutil

from .needs import Need

GUEST_IP = "10.78.0.2"
PEER_IP = "10.78.0.1"
PORT = 5201
DATA_BYTES = 50 << 20
GUEST_MAC = "52:54:00:78:00:02"
MEMORY = "1G"

# The guest runs on the host's file system (virtme-ng): GUEST_SCRIPT's tools come from this host.
_STEP = "ping and ethtool for the Linux guest's script"
NEEDS = (Need("ping", "ping not found", lambda: shutil.which("ping"), "qemu", _STEP, apt=("iputils-ping",)),
         Need("ethtool", "ethtool not found", lambda: shutil.which("ethtool"), "qemu", _STEP, apt=("ethtool",)))

# QEMU 7.2 under TCG segfaults starting a vhost-user NIC with MSI-X (its vector notifiers assume KVM):
# vectors=0 makes the device use INTx. The guest's memory must be a shared fd the back end can map.
QEMU_OPTS = ("-object memory-backend-memfd,id=vnbmem,size={mem},share=on -numa node,memdev=vnbmem "
             "-chardev socket,id=vnbchr,path={sock}{reconnect} "
             "-netdev vhost-user,id=vnbnet,chardev=vnbchr{queues} "
             "-device virtio-net-pci,netdev=vnbnet,mac={mac},vectors=0,host_mtu={mtu}{packed}{mq}")


def qemu_opts(sock: str, mtu: int = 9000, reconnect: int = 0, packed: bool = False, queues: int = 1) -> str:
    """``packed``: the NIC offers packed rings (``packed=on``), so the guest's driver uses them.
    ``queues`` > 1: a multi-queue NIC (``queues=N`` on the netdev, ``mq=on`` on the device)."""
    return QEMU_OPTS.format(mem=MEMORY, sock=sock, mac=GUEST_MAC, mtu=mtu,
                            reconnect=f",reconnect={reconnect}" if reconnect else "",
                            packed=",packed=on" if packed else "",
                            queues=f",queues={queues}" if queues > 1 else "", mq=",mq=on" if queues > 1 else "")


def data(seed: int, n: int = DATA_BYTES) -> bytes:
    return random.Random(seed).randbytes(n)


# The guest's side: argv ip, peer, mtu, then the body's own. Finds the virtio_net interface, sets it up.
PRELUDE = r'''
import glob, hashlib, json, os, random, socket, subprocess, sys, time
ip, peer, mtu = sys.argv[1], sys.argv[2], int(sys.argv[3])
out = {}
subprocess.run(["modprobe", "virtio_net"], check=False)
ifname = None
for _ in range(200):
    for d in glob.glob("/sys/class/net/*/device/driver"):
        if os.path.basename(os.path.realpath(d)) == "virtio_net":
            ifname = d.split("/")[4]
    if ifname:
        break
    time.sleep(0.05)
out["ifname"] = ifname
if ifname is None:
    print(json.dumps(out)); sys.exit(3)
sh = lambda *a: subprocess.run(a, check=True, capture_output=True, text=True).stdout
sh("ip", "link", "set", ifname, "mtu", str(mtu), "up")
sh("ip", "addr", "add", ip + "/24", "dev", ifname)
sh("ip", "link", "set", "lo", "up")
k = sh("ethtool", "-k", ifname)
out["offloads"] = {l.split(":")[0].strip(): l.split(":")[1].split()[0] for l in k.splitlines()[1:] if ":" in l}
out["mtu"] = int(open(f"/sys/class/net/{ifname}/mtu").read())
# The virtio device's negotiated feature bits, one character per bit from bit 0 (drivers/virtio).
out["features"] = open(f"/sys/class/net/{ifname}/device/features").read().strip()
'''

# The peer, in the topology's namespace: argv ip, port, n, rounds. Each round: receive a stream and
# answer its sha256, then send n bytes of seed 2 + 100 * round. The first round's figures are also
# under the plain keys.
PEER_SCRIPT = r'''
import hashlib, json, random, socket, sys
ip, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 1
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); ls.bind((ip, port)); ls.listen(1)
print("listening", flush=True)
out = {"rounds": []}
for r in range(rounds):
    one = {}
    c, _ = ls.accept(); h = hashlib.sha256(); got = 0
    while True:
        b = c.recv(1 << 20)
        if not b:
            break
        h.update(b); got += len(b)
    one["recv_bytes"], one["recv_sha"] = got, h.hexdigest()
    c.sendall(one["recv_sha"].encode() + b"\n"); c.close()
    payload = random.Random(2 + 100 * r).randbytes(n)
    c, _ = ls.accept(); c.sendall(payload); c.close()
    one["sent_sha"] = hashlib.sha256(payload).hexdigest()
    out["rounds"].append(one)
out.update(out["rounds"][0])
print("PEER " + json.dumps(out), flush=True)
'''


# ... then: ping until it answers, say PHASE1 (the host then kills the back end and starts a new one),
# wait for the carrier to drop (QEMU's link goes down with its back end) and to come back, and ping
# until the peer answers again through the new back end.
RECONNECT_SCRIPT = PRELUDE + r"""
def ping_until(deadline):
    while time.monotonic() < deadline:
        if subprocess.run(["ping", "-c", "1", "-W", "1", peer], capture_output=True).returncode == 0:
            return True
    return False
def carrier_until(value, deadline):
    while time.monotonic() < deadline:
        try:
            if open(f"/sys/class/net/{ifname}/carrier").read().strip() == value:
                return True
        except OSError:
            pass
        time.sleep(0.05)
    return False
out["ping_before"] = ping_until(time.monotonic() + 30)
print("PHASE1", flush=True)
t0 = time.monotonic()
out["carrier_lost"] = carrier_until("0", t0 + 60)
out["carrier_back"] = carrier_until("1", time.monotonic() + 90)
out["ping_after"] = ping_until(time.monotonic() + 60)
out["resumed_s"] = time.monotonic() - t0
print("GUEST " + json.dumps(out), flush=True)
"""


# ... then ``rounds`` transfers each way with the peer on port (argv 4, 5, 6; rounds 1 if not given):
# the guest sends seed 1 + 100 * round and receives the peer's; times and sha256 per round, the first
# round's also under the plain keys.
TRANSFERS = r"""
port, n = int(sys.argv[4]), int(sys.argv[5])
rounds = int(sys.argv[6]) if len(sys.argv) > 6 else 1
def conn():
    deadline = time.monotonic() + 60
    while True:
        try:
            return socket.create_connection((peer, port), timeout=10)
        except OSError as e:
            if time.monotonic() > deadline:
                print("GUEST " + json.dumps({**out, "error": f"cannot reach the peer: {e}"}), flush=True)
                raise SystemExit(4)
            time.sleep(0.1)
out["rounds"] = []
for r in range(rounds):
    one = {}
    payload = random.Random(1 + 100 * r).randbytes(n)
    s = conn(); t0 = time.monotonic(); s.sendall(payload); s.shutdown(socket.SHUT_WR)
    one["peer_got_sha"] = s.makefile().read().strip(); one["sent_s"] = time.monotonic() - t0; s.close()
    one["sent_sha"] = hashlib.sha256(payload).hexdigest()
    s = conn(); h = hashlib.sha256(); got = 0; t0 = time.monotonic()
    while True:
        b = s.recv(1 << 20)
        if not b:
            break
        h.update(b); got += len(b)
    one["recv_s"] = time.monotonic() - t0; one["recv_bytes"] = got; one["recv_sha"] = h.hexdigest(); s.close()
    out["rounds"].append(one)
out.update(out["rounds"][0])
print("GUEST " + json.dumps(out), flush=True)
"""
BENCH_SCRIPT = PRELUDE + TRANSFERS

# ... ping first (the e2e test): argv ip, peer, mtu, port, n.
GUEST_SCRIPT = PRELUDE + r"""
r = subprocess.run(["ping", "-c", "3", "-W", "5", peer], capture_output=True, text=True)
out["ping_rc"], out["ping_tail"] = r.returncode, r.stdout.strip().splitlines()[-1:]
""" + TRANSFERS


# Multiqueue: argv ip, peer, mtu, port, n, pairs. ethtool -L combined 1 then N (the guest's
# VQ_PAIRS_SET, which QEMU turns into SET_VRING_ENABLE), then at once, per pair p: a flow to the peer
# sent from a thread pinned to CPU p with XPS mapping CPU p to TX queue p (so every TX queue carries
# one), and a flow from the peer; sha256 of each, and the per-queue counters of ethtool -S.
MQ_GUEST_SCRIPT = PRELUDE + r"""
import threading
port, n, pairs = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
chan = lambda c: subprocess.run(["ethtool", "-L", ifname, "combined", str(c)], capture_output=True, text=True)
r1, rn = chan(1), chan(pairs)
out["combined_rc"] = [r1.returncode, rn.returncode]
out["combined_err"] = (r1.stderr + rn.stderr).strip()[-300:]
out["channels"] = sh("ethtool", "-l", ifname)
for p in range(pairs):
    open(f"/sys/class/net/{ifname}/queues/tx-{p}/xps_cpus", "w").write(format(1 << (p % os.cpu_count()), "x"))
def conn(i):
    deadline = time.monotonic() + 60
    while True:
        try:
            return socket.create_connection((peer, port + i), timeout=30)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
res = {}
def send(p):
    os.sched_setaffinity(0, {p % os.cpu_count()})
    payload = random.Random(1 + p).randbytes(n)
    s = conn(2 * p); s.sendall(payload); s.shutdown(socket.SHUT_WR)
    res[f"peer_got_{p}"] = s.makefile().read().strip(); s.close()
    res[f"sent_{p}"] = hashlib.sha256(payload).hexdigest()
def recv(p):
    s = conn(2 * p + 1); h = hashlib.sha256(); got = 0
    while True:
        b = s.recv(1 << 20)
        if not b:
            break
        h.update(b); got += len(b)
    res[f"recv_{p}"], res[f"recv_bytes_{p}"] = h.hexdigest(), got
ths = [threading.Thread(target=f, args=(p,)) for p in range(pairs) for f in (send, recv)]
[t.start() for t in ths]; [t.join(300) for t in ths]
out.update(res)
stats = sh("ethtool", "-S", ifname)
out["queue_stats"] = {l.split(":")[0].strip(): int(l.split(":")[1]) for l in stats.splitlines()[1:]
                      if ":" in l and l.split(":")[1].strip().isdigit()}
print("GUEST " + json.dumps(out), flush=True)
"""

# The peer of MQ_GUEST_SCRIPT: argv ip, port, n, pairs. On port + 2p it receives pair p's flow and
# answers its sha256; on port + 2p + 1 it sends seed 2 + p. All at once.
MQ_PEER_SCRIPT = r'''
import hashlib, json, random, socket, sys, threading
ip, port, n, pairs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
out = {}
def listen(i):
    ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); ls.bind((ip, port + i)); ls.listen(1)
    return ls
socks = [listen(i) for i in range(2 * pairs)]
print("listening", flush=True)
def take(p):
    c, _ = socks[2 * p].accept(); h = hashlib.sha256(); got = 0
    while True:
        b = c.recv(1 << 20)
        if not b:
            break
        h.update(b); got += len(b)
    out[f"recv_{p}"], out[f"recv_bytes_{p}"] = h.hexdigest(), got
    c.sendall(h.hexdigest().encode() + b"\n"); c.close()
def give(p):
    payload = random.Random(2 + p).randbytes(n)
    c, _ = socks[2 * p + 1].accept(); c.sendall(payload); c.close()
    out[f"sent_{p}"] = hashlib.sha256(payload).hexdigest()
ths = [threading.Thread(target=f, args=(p,)) for p in range(pairs) for f in (take, give)]
[t.start() for t in ths]; [t.join() for t in ths]
print("PEER " + json.dumps(out), flush=True)
'''


def tap_qemu_opts(ifname: str, mtu: int = 1500) -> str:
    """QEMU's own userspace virtio-net back end on an existing tap, the same NIC and memory otherwise."""
    return (f"-object memory-backend-memfd,id=vnbmem,size={MEMORY},share=on -numa node,memdev=vnbmem "
            f"-netdev tap,id=vnbnet,ifname={ifname},script=no,downscript=no,vhost=off "
            f"-device virtio-net-pci,netdev=vnbnet,mac={GUEST_MAC},vectors=0,host_mtu={mtu}")


def guest_result(out: str) -> dict:
    lines = [line for line in out.splitlines() if line.startswith("GUEST ")]
    if not lines:
        raise ValueError("the guest printed no result: " + " | ".join(out.strip().splitlines()[-5:]))
    return json.loads(lines[-1][len("GUEST "):])
