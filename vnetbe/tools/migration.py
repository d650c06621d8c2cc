"""Live migration of a QEMU guest whose NIC is ``vnetbe serve`` (or another vhost-user back end), on
one machine: what tests/e2e/test_migration.py drives and measures.

The guest boots a self-contained initramfs (a 9p or virtiofs root blocks migration): busybox, the
virtio_net modules and ``vnb_stream`` (csrc/guest/vnb_stream.c, built static here), which moves a
TCP stream each way per round against the peer, every byte checked at its offset against a
generator both ends compute (``stream_bytes``). The guest's reader is slower than the network with a
large receive buffer, so at the switch its socket holds bytes the back end wrote and TCP already
acknowledged: the bytes a back end that does not log its RX writes loses (the source's copy of those
pages is stale), which TCP cannot resend.

Two QEMU processes (software emulation), each with its own back end on its own tap, the taps and the
peer's veth on one bridge: the source, and a destination started with ``-incoming``. QMP ``migrate``
moves the guest; ``query-migrate`` gives QEMU's own total time and downtime.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import SetupError, VnetError
from . import initramfs
from .needs import Need
from .topology import Bridge, Topology

GUEST_IP, PEER_IP = "10.80.0.2", "10.80.0.1"
MAC = "52:54:00:80:00:02"
TO_GUEST_PORT, FROM_GUEST_PORT = 5401, 5402
MEMORY_MB = 256
ROUNDS = 2
STREAM_BYTES = 48 << 20      # each way, per round
READ_PACE_US = 15000         # the guest reads 64 KiB per 15 ms: ~4 MB/s, below what the network brings
SEND_PACE_US = 10000         # and sends 64 KiB per 10 ms: both streams outlast a migration
MAX_BANDWIDTH = 40 << 20     # bytes/s QEMU may send: a 256 MiB guest takes seconds to move
MIGRATE_PORT = 5470          # + the round: the destination's -incoming port
_SRC = Path(__file__).resolve().parents[2] / "csrc" / "guest" / "vnb_stream.c"


def _static_libc() -> str | None:
    cc = shutil.which(os.environ.get("CC", "cc"))
    libc = [p for p in ("/usr/lib/x86_64-linux-gnu/libc.a", "/usr/lib/libc.a") if os.path.exists(p)]
    return f"{cc} with {libc[0]}" if cc and libc else None


NEEDS = (Need("static libc", "no C compiler with a static C library (the guest's vnb_stream is built static)",
              _static_libc, "migration", "a C compiler and the static C library, for the migrating guest",
              apt=("gcc", "libc6-dev")),)


def stream_bytes(offset: int, n: int, seed: int) -> bytes:
    """Bytes offset .. offset+n-1 of stream ``seed``: vnb_stream.c's generator (splitmix64 of each
    8-byte word's index, the seed xored in, little-endian)."""
    first, last = offset // 8, (offset + n + 7) // 8
    with np.errstate(over="ignore"):
        x = np.arange(first, last, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) ^ np.uint64(seed)
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    raw = x.astype("<u8").tobytes()
    return raw[offset - first * 8:offset - first * 8 + n]


def seeds(round_: int) -> tuple[int, int]:
    """(the stream to the guest, the stream from the guest) of a round."""
    return 1000 + round_, 2000 + round_


def build_stream_helper(out: Path) -> Path:
    """Compile vnb_stream statically (the initramfs has no C library)."""
    if not _SRC.exists():
        raise SetupError(f"{_SRC} is missing: the migration test runs from vnetbe's source tree")
    cc = os.environ.get("CC", "cc")
    r = subprocess.run([cc, "-static", "-O2", "-o", str(out), str(_SRC)], capture_output=True, text=True)
    if r.returncode:
        raise SetupError(f"{cc} -static failed (the static C library is in libc6-dev): {r.stderr.strip()[-300:]}")
    return out


def guest_init(rounds: int = ROUNDS, nbytes: int = STREAM_BYTES, pace_us: int = READ_PACE_US,
               send_pace_us: int = SEND_PACE_US) -> str:
    """The guest's /init body: the NIC up, then per round both streams at once, their lines on the
    console (the source's, then after the switch the destination's)."""
    lines = [
        'IF=""',
        'for d in /sys/class/net/*; do',
        '  [ "$(basename "$(readlink "$d/device/driver" 2>/dev/null)")" = virtio_net ] && IF=$(basename "$d")',
        'done',
        'ip link set lo up',
        'ip link set "$IF" up',
        f'ip addr add {GUEST_IP}/24 dev "$IF"',
        'echo 16777216 > /proc/sys/net/core/rmem_max',
        'echo "GUEST up $IF"',
    ]
    for r in range(1, rounds + 1):
        to_guest, from_guest = seeds(r)
        lines += [
            f'/bin/vnb_stream recv {PEER_IP} {TO_GUEST_PORT} {nbytes} {to_guest} {pace_us} > /tmp/r{r} 2>&1 &',
            f'/bin/vnb_stream send {PEER_IP} {FROM_GUEST_PORT} {nbytes} {from_guest} {send_pace_us} > /tmp/s{r} 2>&1 &',
            'wait',
            f'echo "GUEST round {r} $(cat /tmp/r{r}) | $(cat /tmp/s{r})"',
            # What the guest's kernel said meanwhile (virtio_net's rx errors, a BAD_RING): for a failure's report.
            'dmesg -c | tail -15 | sed "s/^/GUEST dmesg /"',
        ]
    lines += ['echo "GUEST done"', 'while :; do sleep 3600; done']
    return "\n".join(lines)


def qemu_argv(kernel: str, initrd: str, sock: str, console: str, qmp: str, *, incoming: str | None = None,
              memory_mb: int = MEMORY_MB) -> list[str]:
    """A QEMU (TCG) with the guest's NIC on the vhost-user socket ``sock``; ``incoming``: the
    destination of a migration (``tcp:HOST:PORT``). QEMU 7.2 under TCG needs vectors=0 for a
    vhost-user NIC (docs/vhost-user.md); the memory is a shared memfd the back end maps."""
    argv = ["qemu-system-x86_64", "-machine", "pc", "-accel", "tcg", "-m", f"{memory_mb}M", "-smp", "1",
            "-object", f"memory-backend-memfd,id=vnbmem,size={memory_mb}M,share=on", "-numa", "node,memdev=vnbmem",
            "-kernel", kernel, "-initrd", initrd, "-append", "console=ttyS0 panic=-1 quiet",
            "-chardev", f"socket,id=vnbchr,path={sock}", "-netdev", "vhost-user,id=vnbnet,chardev=vnbchr",
            "-device", f"virtio-net-pci,netdev=vnbnet,mac={MAC},vectors=0",
            "-serial", f"file:{console}", "-display", "none", "-monitor", "none", "-no-reboot",
            "-qmp", f"unix:{qmp},server=on,wait=off"]
    return argv + (["-incoming", incoming] if incoming else [])


class Qmp:
    """A QMP connection (QEMU's JSON machine protocol over a unix socket)."""

    def __init__(self, path: str, timeout: float = 60.0):
        deadline = time.monotonic() + timeout
        while True:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise VnetError(f"QEMU's QMP socket {path} did not open within {timeout:.0f} s") from None
                time.sleep(0.1)
        self.sock.settimeout(timeout)
        self.f = self.sock.makefile("rwb")
        self.events: list[dict] = []
        self._read()                      # the greeting
        self.execute("qmp_capabilities")

    def _read(self) -> dict:
        line = self.f.readline()
        if not line:
            raise VnetError("QEMU closed its QMP socket")
        return json.loads(line)

    def execute(self, command: str, **arguments) -> object:
        msg = {"execute": command, **({"arguments": arguments} if arguments else {})}
        self.f.write(json.dumps(msg).encode() + b"\n")
        self.f.flush()
        while True:
            r = self._read()
            if "event" in r:
                self.events.append(r)
                continue
            if "error" in r:
                raise VnetError(f"QMP {command}: {r['error'].get('desc', r['error'])}")
            return r.get("return")

    def close(self) -> None:
        try:
            self.f.close()
        finally:
            self.sock.close()


def migrate(src: Qmp, uri: str, *, max_bandwidth: int | None = None, timeout: float = 300) -> dict:
    """Migrate the source to ``uri`` and wait until it completes: query-migrate's last answer
    (total-time and downtime in ms, status, ram figures). Raises if it fails or takes too long."""
    if max_bandwidth:
        src.execute("migrate-set-parameters", **{"max-bandwidth": max_bandwidth})
    src.execute("migrate", uri=uri)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = src.execute("query-migrate")
        status = info.get("status")
        if status == "completed":
            return info
        if status in ("failed", "cancelled"):
            raise VnetError(f"migration {status}: {info.get('error-desc', info)}")
        time.sleep(0.2)
    raise VnetError(f"migration still {status} after {timeout:.0f} s")


def wait_console(path: Path, needle: str, timeout: float) -> str:
    """The console file's text once ``needle`` is in it; VnetError with its tail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if needle in text:
            return text
        time.sleep(0.25)
    raise VnetError(f"{needle!r} never on {path} within {timeout:.0f} s:\n"
                    f"{(path.read_text(errors='replace') if path.exists() else '')[-3000:]}")


class Qemu:
    """One QEMU process with its QMP connection and console file."""

    def __init__(self, argv: list[str], qmp_path: str, console: Path):
        self.console = console
        self.qmp = None
        self.log = console.with_suffix(".qemu.log")     # QEMU's own messages, for a failure's report
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, text=True)
        try:
            self.qmp = Qmp(qmp_path)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """``quit`` over QMP (a source stays paused after a migration: it must go), else kill."""
        if self.proc.poll() is None:
            try:
                self.qmp.execute("quit")
            except Exception:
                self.proc.kill()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.qmp is not None:
            self.qmp.close()
            self.qmp = None


def build_guest(tmp: Path, rounds: int, kernel: os.PathLike | str | None, busybox: str | None) -> tuple[str, str]:
    """(kernel, initrd) of the migrating guest: busybox, virtio_net, vnb_stream, ``rounds`` rounds.
    ``kernel`` and ``busybox`` are the kernel lab's (vnetbe.tools.lab.find_kernel, find_busybox)."""
    if busybox is None or kernel is None:
        raise SetupError("no stock kernel or static busybox for the migrating guest: run `vnetbe setup migration`")
    helper = build_stream_helper(tmp / "vnb_stream")
    initrd = tmp / "initrd.gz"
    kernel = initramfs.build(initrd, guest_init(rounds), kernel=kernel, busybox=busybox,
                             files={"bin/vnb_stream": (helper.read_bytes(), 0o755)})
    return str(kernel), str(initrd)


class Rig:
    """The peer's namespace and a bridge for the back ends' taps, the peer's stream process, and the
    QEMUs: ``boot`` the source on one back end's socket, then each ``migrate`` moves the running guest
    to a new QEMU on another socket while a round's streams run. The caller starts the back ends (their
    taps on ``bridge``) and closes them after ``close``."""

    def __init__(self, tmp: Path, tag: str, kernel: str, initrd: str, nbytes: int = STREAM_BYTES):
        self.tmp, self.kernel, self.initrd, self.nbytes = tmp, kernel, initrd, nbytes
        self.qemus: list[Qemu] = []
        self.current: Qemu | None = None
        self.peer = self.bridge = None
        self.topo = Topology(tag, mtu=1500)
        try:
            self.bridge = Bridge(f"vnb{tag}br")
            self.bridge.add_port(self.topo.parent)
            for cmd in (["addr", "add", f"{PEER_IP}/24", "dev", self.topo.peer], ["link", "set", self.topo.peer, "up"]):
                subprocess.run(["ip", "-n", self.topo.netns, *cmd], check=True)
        except BaseException:
            self.close()
            raise

    def _qemu(self, sock: str, incoming: str | None) -> Qemu:
        i = len(self.qemus)
        qmp = str(self.tmp / f"qmp{i}")
        q = Qemu(qemu_argv(self.kernel, self.initrd, sock, str(self.tmp / f"console{i}.txt"), qmp,
                           incoming=incoming), qmp, self.tmp / f"console{i}.txt")
        self.qemus.append(q)
        return q

    def boot(self, sock: str, timeout: float = 300) -> None:
        """The peer's stream process, then the source QEMU on ``sock`` until its guest is up."""
        self.peer = subprocess.Popen(peer_command(self.topo.netns, self.nbytes), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        if self.peer.stdout.readline().strip() != "listening":
            raise SetupError("the migration's stream peer did not start in its namespace")
        self.current = self._qemu(sock, None)
        wait_console(self.current.console, "GUEST up", timeout)

    def migrate(self, rnd: int, sock: str, *, max_bandwidth: int = MAX_BANDWIDTH, timeout: float = 300) -> dict:
        """Round ``rnd``: both streams start, then QMP ``migrate`` to a new QEMU on ``sock``; the source
        goes and the round ends on the destination. QEMU's figures (ms, MiB), what the guest and the
        peer said, and ``ok``: every byte of both streams arrived, checked at its offset."""
        uri = f"tcp:127.0.0.1:{MIGRATE_PORT + rnd}"
        to = self._qemu(sock, uri)
        self.peer.stdin.write(f"{rnd}\n")
        self.peer.stdin.flush()
        time.sleep(3)                   # both streams under way, the guest's socket filling
        info = migrate(self.current.qmp, uri, max_bandwidth=max_bandwidth)
        self.current.stop()
        self.current = to
        try:
            text = wait_console(to.console, f"GUEST round {rnd} ", timeout)
        except VnetError as e:   # what QEMU said and where the destination stands, for the report
            try:
                status = to.qmp.execute("query-status")
            except Exception as q:
                status = f"no answer ({q})"
            raise VnetError(f"{e}\ndestination status: {status}; QEMU said: "
                            f"{to.log.read_text(errors='replace')[-1500:]!r}; migration: {info}") from None
        guest = re.search(rf"^GUEST round {rnd} (.*?)\r?$", text, re.M).group(1)
        peer = json.loads(self.peer.stdout.readline().split("PEER ", 1)[1])
        ok = (f"STREAM recv {TO_GUEST_PORT} ok {self.nbytes}" in guest
              and f"STREAM send {FROM_GUEST_PORT} ok {self.nbytes}" in guest
              and peer == {"round": rnd, "sent_s": peer.get("sent_s"), "recv_bytes": self.nbytes, "recv_bad": None})
        return {"round": rnd, "total_ms": info.get("total-time"), "downtime_ms": info.get("downtime"),
                "setup_ms": info.get("setup-time"), "ram_mb": round(info.get("ram", {}).get("transferred", 0) / 2**20),
                "guest": guest, "peer": peer, "ok": ok}

    def ping(self) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.topo.netns, "ping", "-c", "3", "-W", "2", GUEST_IP],
                              capture_output=True, text=True)

    def stop_qemus(self) -> None:
        for q in self.qemus:
            q.stop()

    def close(self) -> None:
        self.stop_qemus()
        if self.peer is not None:
            self.peer.kill()
            self.peer.communicate()
            self.peer = None
        if self.bridge is not None:
            self.bridge.close()
            self.bridge = None
        self.topo.close()


# The peer, in the topology's namespace: per round (a line on stdin), serve the stream to the guest and
# check the one from it at every offset; one JSON line per round.
PEER_SCRIPT = r'''
import json, socket, sys, threading, time
from vnetbe.tools.migration import stream_bytes, seeds, TO_GUEST_PORT, FROM_GUEST_PORT
ip, n = sys.argv[1], int(sys.argv[2])
to_g = socket.create_server((ip, TO_GUEST_PORT)); from_g = socket.create_server((ip, FROM_GUEST_PORT))
print("listening", flush=True)
CH = 1 << 20
for line in sys.stdin:
    r = int(line)
    to_seed, from_seed = seeds(r)
    out = {"round": r}
    def send():
        c, _ = to_g.accept(); t0 = time.monotonic()
        for off in range(0, n, CH):
            c.sendall(stream_bytes(off, min(CH, n - off), to_seed))
        c.close(); out["sent_s"] = round(time.monotonic() - t0, 2)
    def recv():
        c, _ = from_g.accept(); got = 0; bad = None; buf = bytearray()
        while True:
            chunk = c.recv(1 << 16)
            if not chunk:
                break
            buf += chunk
            while len(buf) >= CH or (buf and got + len(buf) >= n):
                k = min(len(buf), CH)
                if bad is None and bytes(buf[:k]) != stream_bytes(got, k, from_seed):
                    want = stream_bytes(got, k, from_seed)
                    bad = got + next(i for i in range(k) if buf[i] != want[i])
                got += k; del buf[:k]
        got += len(buf)
        out.update(recv_bytes=got, recv_bad=bad)
    ts = [threading.Thread(target=f) for f in (send, recv)]
    [t.start() for t in ts]; [t.join() for t in ts]
    print("PEER " + json.dumps(out), flush=True)
'''


def peer_command(netns: str, nbytes: int = STREAM_BYTES) -> list[str]:
    return ["ip", "netns", "exec", netns, sys.executable, "-c", PEER_SCRIPT, PEER_IP, str(nbytes)]
