"""``vnetbe bench --frontend testpmd``: the same front end (DPDK's testpmd on virtio-user) against the same
peer through each back end, in one run.

Back ends, each given its own tap on one bridge whose other port is the veth to the peer's namespace:
- ``vnetbe-user`` / ``vnetbe-vhost``: ``vnetbe serve --tap ... --bridge ...`` on that datapath;
- ``dpdk-vhost``: DPDK's own vhost-user back end forwarding to a tap (a second testpmd, ``net_vhost`` +
  ``net_tap`` in io mode), the peer vnetbe is compared with;
- ``kernel``: testpmd on /dev/vhost-net directly (virtio-user's vhost-kernel back end), where it exists.

txonly: testpmd sends for ``seconds``; the rate is what *arrived* at the peer's interface in the timed
window; offered is what testpmd put in the ring, lost is offered less what arrived. rxonly: the peer
sends tagged 64-byte frames as fast as its socket takes them; the rate is what testpmd received over the
sender's time; lost is sent less received. CPU is the back end's: its process (or, for the kernel, the
vhost worker), per delivered frame. testpmd's lcores are pinned to CPU 1, a DPDK back end's to CPU 0.
"""
from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time

from ...datapath.vhost_ioctl import DEV_PATH
from ...errors import SetupError
from .. import dpdk
from ..peer import Peer
from ..topology import Bridge, Topology

BACKENDS = ("vnetbe-user", "vnetbe-uring", "vnetbe-vhost", "dpdk-vhost", "kernel")
VHOST_NET_BACKENDS = ("vnetbe-vhost", "kernel")
FRONTEND_LCORES = "0@1,1@1"
BACKEND_LCORES = "0@0,1@0"
_TICK = os.sysconf("SC_CLK_TCK")


def available(backends) -> tuple[list[str], list[str]]:
    """(backends that can run here, notes on those left out)."""
    ok, notes = [], []
    for b in backends:
        if b in ("vnetbe-vhost", "kernel") and not os.path.exists(DEV_PATH):
            notes.append(f"{b}: left out, no {DEV_PATH} here (run it in the lab: vnetbe lab -- vnetbe bench "
                         "--frontend testpmd)")
        else:
            ok.append(b)
    return ok, notes


def _cpu_s(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, IndexError):
        return 0.0


def _vhost_worker_cpu(pid: int) -> float:
    """CPU of the vhost worker(s) /dev/vhost-net made for ``pid`` (kernel threads vhost-<pid>, or the
    process's own threads on 6.4+)."""
    total = 0.0
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/comm") as f:
                    if f.read().strip() == f"vhost-{pid}":
                        total += _cpu_s(int(p))
            except OSError:
                continue
    return total


def _rx_packets(netns: str, ifname: str) -> int:
    out = subprocess.run(["ip", "-n", netns, "-s", "-j", "link", "show", ifname], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out)[0]["stats64"]["rx"]["packets"]


def _wait_link(name: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(f"/sys/class/net/{name}"):
            return
        time.sleep(0.05)
    raise SetupError(f"the back end's tap {name} did not appear within {timeout:.0f} s")


def _wait_path(path: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise SetupError(f"the back end's socket {path} did not appear within {timeout:.0f} s")
        time.sleep(0.05)


class Backend:
    """One back end up, its tap on the bridge; ``vdev`` is what the front end testpmd is given."""

    def __init__(self, kind: str, tag: str, sock: str, bridge: Bridge, mac: str, ring: str = "split",
                 queues: int = 1):
        self.kind, self.proc, self.pmd, self.cpu_pid = kind, None, None, None
        tap = f"vnb{tag}t{BACKENDS.index(kind)}"
        vq = ",packed_vq=1" if ring == "packed" else ""   # virtio-user asks for packed rings
        # Several queues need virtio-user's control queue (cq=1): it turns VQ_PAIRS_SET into ring enables.
        mq = f",queues={queues}" + (",cq=1" if queues > 1 else "")
        self.vdev = f"net_virtio_user0,path={sock}{mq},mac={mac}{vq}"
        self.queues = queues
        if kind.startswith("vnetbe-"):
            self.proc = subprocess.Popen([sys.executable, "-m", "vnetbe", "serve", "--socket", sock, "--tap", tap,
                                          "--bridge", bridge.name, "--datapath", kind.split("-")[1],
                                          "--queues", str(queues)],
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            line = self.proc.stdout.readline()
            if "listening" not in line:
                raise SetupError(f"vnetbe serve did not start: {line.strip() or self.proc.stderr.read().strip()}")
            self.cpu_pid = self.proc.pid
        elif kind == "dpdk-vhost":
            cmd = dpdk.command(f"net_vhost0,iface={sock},queues={queues}", "io", pmds=("net_vhost", "net_tap"),
                               prefix=f"vnb{tag}be", lcores=BACKEND_LCORES, extra=_queue_args(queues))
            cmd.insert(cmd.index("--"), f"--vdev=net_tap0,iface={tap}")
            self.pmd = dpdk.Testpmd(cmd)
            self.pmd.wait_forwarding()
            _wait_link(tap)
            _wait_path(sock)
            bridge.add_port(tap)
            self.cpu_pid = self.pmd.pid
        else:
            self.vdev = f"net_virtio_user0,path={DEV_PATH}{mq},iface={tap},mac={mac}{vq}"
        self.tap, self.bridge = tap, bridge

    def pair_frames(self, direction: str) -> list[int] | None:
        """vnetbe's frames per queue pair so far (``tx_frames`` or ``rx_frames``), from serve's counters
        (SIGUSR1); None for the other back ends, which do not say."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith('{"stats"'):
                st = json.loads(line)["stats"]
                dev = st.get("device") or st.get("last_device") or {}
                return [p[direction] for p in dev.get("pairs", [])]
        return None

    def after_frontend_started(self, frontend: dpdk.Testpmd) -> None:
        if self.kind == "kernel":   # virtio-user made the tap itself: put it on the bridge
            _wait_link(self.tap)
            self.bridge.add_port(self.tap)
            self.cpu_pid = frontend.pid

    def cpu(self) -> float:
        """The back end's CPU: its process, plus the vhost worker /dev/vhost-net made for it (a kernel
        thread before 6.4, so not in the process's own times); for ``kernel``, that worker alone."""
        if self.cpu_pid is None:
            return 0.0
        if self.kind == "kernel":
            return _vhost_worker_cpu(self.cpu_pid)
        return _cpu_s(self.cpu_pid) + (_vhost_worker_cpu(self.cpu_pid) if self.kind == "vnetbe-vhost" else 0.0)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.communicate()
        if self.pmd is not None:
            try:
                self.pmd.stop()
            except SetupError:
                self.pmd.kill()


def _queue_args(queues: int) -> tuple[str, ...]:
    return (f"--rxq={queues}", f"--txq={queues}") if queues > 1 else ()


def _one(kind: str, mode: str, topo: Topology, bridge: Bridge, peer: Peer, seconds: float, tag: str,
         sockdir: str, ring: str = "split", queues: int = 1) -> dict:
    sock = os.path.join(sockdir, f"{kind}.sock")
    mac = "02:00:00:00:7e:01"
    # rx frames go to a MAC no port has, which the bridge floods to the one back end's tap: what the
    # bridge learned or keeps as local for the port's MAC cannot decide what a back end gets.
    rx_dst = "02:00:00:00:7e:ff"
    be = Backend(kind, tag, sock, bridge, mac, ring, queues)
    fe = None
    try:
        rx_before = _rx_packets(topo.netns, topo.peer)
        fe = dpdk.Testpmd(dpdk.command(be.vdev, "txonly" if mode == "tx" else "rxonly", prefix=f"vnb{tag}fe",
                                       lcores=FRONTEND_LCORES, extra=_queue_args(queues)))
        be.after_frontend_started(fe)
        fe.wait_forwarding()
        time.sleep(1.0)                                   # rings negotiated, first frames through
        if mode == "tx":
            rx0, cpu0, t0 = _rx_packets(topo.netns, topo.peer), be.cpu(), time.monotonic()
            time.sleep(seconds)
            rx1, cpu1, t1 = _rx_packets(topo.netns, topo.peer), be.cpu(), time.monotonic()
            pairs = be.pair_frames("tx_frames")
            _, offered = fe.stop()
            fe = None
            time.sleep(0.3)
            delivered_total = _rx_packets(topo.netns, topo.peer) - rx_before
            window = rx1 - rx0
            out = {"pps": window / (t1 - t0), "window_frames": window, "offered": offered,
                   "delivered": delivered_total, "cpu_ns_per_frame": (cpu1 - cpu0) * 1e9 / window if window else None}
        else:
            cpu0 = be.cpu()
            sent, t0 = 0, time.monotonic()
            while time.monotonic() - t0 < seconds:
                sent += peer.send_tagged(20_000, 64, dst=rx_dst, first_seq=sent)["sent"]
            elapsed = time.monotonic() - t0
            cpu1 = be.cpu()
            time.sleep(0.5)
            pairs = be.pair_frames("rx_frames")
            received, _ = fe.stop()
            fe = None
            out = {"pps": received / elapsed, "offered": sent, "delivered": received,
                   "cpu_ns_per_frame": (cpu1 - cpu0) * 1e9 / received if received else None}
        out["lost"] = out["offered"] - out["delivered"]
        out["pair_frames"] = pairs   # vnetbe's frames per queue pair (its own count), None elsewhere
        return out
    finally:
        if fe is not None:
            fe.kill()
        be.close()


def run(backends=BACKENDS, modes=("tx", "rx"), seconds: float = 5.0, repeat: int = 3, tag: str = "T",
        progress=lambda msg: None, rings=("split",), queues=(1,)) -> dict:
    """Every back end, every mode and ring format, ``repeat`` times, interleaved (a slow spell of the
    machine hits all of them alike). Medians, ranges and ratios to ``dpdk-vhost`` (same mode and ring)
    in ``rows``. Packed rings (virtio-user ``packed_vq=1``) leave out the back ends on vhost-net."""
    dpdk.testpmd()
    chosen, notes = available(backends)
    configs = [(ring, q, kind) for ring in rings for q in queues for kind in chosen
               if not (ring == "packed" and kind in VHOST_NET_BACKENDS)]
    if "packed" in rings and any(k in VHOST_NET_BACKENDS for k in chosen):
        notes.append("packed: " + ", ".join(k for k in chosen if k in VHOST_NET_BACKENDS)
                     + " left out, the kernel's vhost-net has no packed rings")
    topo = Topology(tag, mtu=1500)
    bridge = None
    sockdir = f"/tmp/vnb{tag}-testpmd"
    os.makedirs(sockdir, exist_ok=True)
    runs: dict[tuple[str, str], list[dict]] = {}
    try:
        bridge = Bridge(f"vnb{tag}br")
        bridge.add_port(topo.parent)
        peer = Peer(topo.peer, topo.netns)
        try:
            for r in range(repeat):
                for mode in modes:
                    for ring, q, kind in configs:
                        progress(f"testpmd {mode} via {kind} ({ring}, {q} queue pair{'s' if q > 1 else ''}), "
                                 f"run {r + 1}/{repeat}")
                        runs.setdefault((mode, ring, q, kind), []).append(
                            _one(kind, mode, topo, bridge, peer, seconds, tag, sockdir, ring, q))
        finally:
            peer.close()
    finally:
        if bridge is not None:
            bridge.close()
        topo.close()
        for f in os.listdir(sockdir):
            os.unlink(os.path.join(sockdir, f))
        os.rmdir(sockdir)
    rows = []
    for (mode, ring, q, kind), rs in runs.items():
        pps = [x["pps"] for x in rs]
        cpu = [x["cpu_ns_per_frame"] for x in rs if x["cpu_ns_per_frame"] is not None]
        per_pair = [x["pair_frames"] for x in rs if x.get("pair_frames")]
        rows.append({"mode": mode, "ring": ring, "queues": q, "backend": kind, "pair_frames": per_pair[-1] if per_pair else None,
                     "pps_median": statistics.median(pps), "pps_min": min(pps),
                     "pps_max": max(pps), "offered": sum(x["offered"] for x in rs),
                     "delivered": sum(x["delivered"] for x in rs), "lost": sum(x["lost"] for x in rs),
                     "cpu_ns_per_frame": statistics.median(cpu) if cpu else None, "runs": rs})
    for row in rows:
        ref = next((x for x in rows if x["mode"] == row["mode"] and x["ring"] == row["ring"]
                    and x["queues"] == row["queues"] and x["backend"] == "dpdk-vhost"), None)
        one = next((x for x in rows if x["mode"] == row["mode"] and x["ring"] == row["ring"]
                    and x["queues"] == 1 and x["backend"] == row["backend"]), None)
        row["vs_one_pair"] = row["pps_median"] / one["pps_median"] if one and one["pps_median"] else None
        row["vs_dpdk"] = row["pps_median"] / ref["pps_median"] if ref and ref["pps_median"] else None
        # Within noise: the two ranges overlap.
        row["within_noise_of_dpdk"] = bool(ref) and not (row["pps_min"] > ref["pps_max"] or row["pps_max"] < ref["pps_min"])
    return {"frontend": "testpmd", "seconds": seconds, "repeat": repeat, "size": 64, "rings": list(rings),
            "queues": list(queues), "rows": rows, "notes": notes}


def format_table(doc: dict) -> str:
    lines = [f"testpmd (virtio-user) through each back end, 64 B, {doc['repeat']} x {doc['seconds']:g} s, "
             "rates are frames that arrived (tx: at the peer, rx: at testpmd)",
             f"{'mode':<5}{'ring':<7}{'pairs':>5}  {'back end':<14}{'kpps median':>12}{'range':>18}{'vs dpdk':>9}"
             f"{'vs 1 pair':>10}{'offered':>12}{'lost':>10}{'cpu ns/f':>10}  per pair"]
    for r in sorted(doc["rows"], key=lambda x: (x["mode"], x.get("ring", "split") != "split", x.get("queues", 1),
                                                BACKENDS.index(x["backend"]))):
        vs = f"{r['vs_dpdk']:.2f}{'~' if r['within_noise_of_dpdk'] and r['backend'] != 'dpdk-vhost' else ''}" \
            if r["vs_dpdk"] is not None else "-"
        cpu = f"{r['cpu_ns_per_frame']:.0f}" if r["cpu_ns_per_frame"] is not None else "-"
        rng = f"[{r['pps_min'] / 1e3:.1f}..{r['pps_max'] / 1e3:.1f}]"
        one = f"{r['vs_one_pair']:.2f}" if r.get("vs_one_pair") is not None and r.get("queues", 1) > 1 else "-"
        per_pair = "/".join(str(n) for n in r["pair_frames"]) if r.get("pair_frames") else "-"
        lines.append(f"{r['mode']:<5}{r.get('ring', 'split'):<7}{r.get('queues', 1):>5}  {r['backend']:<14}"
                     f"{r['pps_median'] / 1e3:>12.1f}{rng:>18}{vs:>9}{one:>10}{r['offered']:>12}{r['lost']:>10}{cpu:>10}"
                     f"  {per_pair}")
    lines.append("~ : the ranges overlap, the difference is within this run's noise")
    lines += doc["notes"]
    return "\n".join(lines)
