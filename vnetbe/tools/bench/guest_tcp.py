"""``vnetbe bench --frontend qemu``: a Linux guest's TCP throughput through ``vnetbe serve`` (vhost-user)
against the same guest on QEMU's own userspace tap back end (``-netdev tap,vhost=off``): same kernel,
same NIC model and memory, same bridge and peer, one boot each, ``rounds`` transfers each way.

Each back end has its own tap on one bridge whose other port is the veth to the peer's namespace. A
transfer is ``nbytes`` of seeded random data, checked by sha256 at the receiving end; a round whose
hash does not match counts as failed, not as a rate.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile

from ...errors import SetupError
from .. import linux_guest as LG
from ..topology import Bridge, Topology

BACKENDS = ("vnetbe-user", "qemu-tap")


def _boot(boot, kind: str, tag: str, bridge: Bridge, sockdir: str, rounds: int, nbytes: int, timeout: float) -> dict:
    tap = f"vnb{tag}t{BACKENDS.index(kind)}"
    serve = None
    made_tap = False
    try:
        if kind == "vnetbe-user":
            sock = os.path.join(sockdir, "vu.sock")
            serve = subprocess.Popen([sys.executable, "-m", "vnetbe", "serve", "--socket", sock, "--tap", tap,
                                      "--bridge", bridge.name, "--mac", LG.GUEST_MAC], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
            line = serve.stdout.readline()
            if "listening" not in line:
                raise SetupError(f"vnetbe serve did not start: {line.strip() or serve.stderr.read().strip()}")
            opts = LG.qemu_opts(sock, mtu=1500)
        else:
            subprocess.run(["ip", "tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr"], check=True)
            made_tap = True
            bridge.add_port(tap)
            opts = LG.tap_qemu_opts(tap)
        out = io.StringIO()
        rc = boot([sys.executable, "-c", LG.BENCH_SCRIPT, LG.GUEST_IP, LG.PEER_IP, "1500", str(LG.PORT),
                      str(nbytes), str(rounds)], memory=LG.MEMORY, qemu_opts=opts, timeout=timeout,
                     stdout=out, stderr=out)
        if rc != 0:
            raise SetupError(f"the guest on {kind} failed (exit {rc}): "
                             + " | ".join(out.getvalue().strip().splitlines()[-3:]))
        return LG.guest_result(out.getvalue())
    finally:
        if serve is not None:
            serve.terminate()
            serve.communicate(timeout=15)
        if made_tap:
            subprocess.run(["ip", "link", "del", tap], check=False)


def run(boot, backends=BACKENDS, rounds: int = 3, nbytes: int = LG.DATA_BYTES, tag: str = "G",
        timeout: float = 900, progress=lambda msg: None) -> dict:
    """``boot`` is the kernel lab's ``run`` (vnetbe.tools.lab.run): it boots the guest with the NIC's
    QEMU options."""
    topo = Topology(tag, mtu=1500)
    bridge = peer = None
    sockdir = tempfile.mkdtemp(prefix=f"vnb{tag}-")
    results: dict[str, dict] = {}
    try:
        bridge = Bridge(f"vnb{tag}br")
        bridge.add_port(topo.parent)
        for cmd in (["addr", "add", f"{LG.PEER_IP}/24", "dev", topo.peer], ["link", "set", topo.peer, "up"]):
            subprocess.run(["ip", "-n", topo.netns, *cmd], check=True)
        for kind in backends:
            progress(f"guest TCP through {kind}: booting")
            peer = subprocess.Popen(["ip", "netns", "exec", topo.netns, sys.executable, "-c", LG.PEER_SCRIPT,
                                     LG.PEER_IP, str(LG.PORT), str(nbytes), str(rounds)], stdout=subprocess.PIPE,
                                    text=True)
            if peer.stdout.readline().strip() != "listening":
                raise SetupError("the TCP peer did not start in the namespace")
            guest = _boot(boot, kind, tag, bridge, sockdir, rounds, nbytes, timeout)
            peer_out = peer.communicate(timeout=120)[0]
            peer = None
            results[kind] = {"guest": guest, "peer": json.loads(peer_out.split("PEER ", 1)[1])}
    finally:
        if peer is not None:
            peer.kill()
            peer.communicate()
        if bridge is not None:
            bridge.close()
        topo.close()
        os.rmdir(sockdir)
    rows = []
    for kind, res in results.items():
        for direction, key, seed0 in (("guest->peer", "sent_s", 1), ("peer->guest", "recv_s", 2)):
            rates, failed = [], 0
            for r, (g, p) in enumerate(zip(res["guest"]["rounds"], res["peer"]["rounds"])):
                want = hashlib.sha256(LG.data(seed0 + 100 * r, nbytes)).hexdigest()
                ok = (g["sent_sha"] == p["recv_sha"] == want) if key == "sent_s" else (g["recv_sha"] == p["sent_sha"] == want)
                if ok:
                    rates.append(nbytes * 8 / g[key] / 1e6)
                else:
                    failed += 1
            rows.append({"backend": kind, "direction": direction, "mbit_median": statistics.median(rates) if rates else 0.0,
                         "mbit_min": min(rates, default=0.0), "mbit_max": max(rates, default=0.0), "rounds": rounds,
                         "failed": failed, "rates": rates})
    for row in rows:
        ref = next((x for x in rows if x["backend"] == "qemu-tap" and x["direction"] == row["direction"]), None)
        row["vs_qemu_tap"] = row["mbit_median"] / ref["mbit_median"] if ref and ref["mbit_median"] else None
        row["within_noise"] = bool(ref) and not (row["mbit_min"] > ref["mbit_max"] or row["mbit_max"] < ref["mbit_min"])
    return {"frontend": "qemu", "bytes": nbytes, "rounds": rounds, "rows": rows}


def format_table(doc: dict) -> str:
    lines = [f"Linux guest TCP under QEMU (TCG), {doc['bytes'] >> 20} MiB x {doc['rounds']} each way, sha256 checked",
             f"{'direction':<13}{'back end':<13}{'Mbit/s median':>14}{'range':>18}{'vs qemu-tap':>12}{'failed':>8}"]
    for r in sorted(doc["rows"], key=lambda x: (x["direction"], BACKENDS.index(x["backend"]))):
        vs = f"{r['vs_qemu_tap']:.2f}{'~' if r['within_noise'] and r['backend'] != 'qemu-tap' else ''}" \
            if r["vs_qemu_tap"] is not None else "-"
        rng = f"[{r['mbit_min']:.0f}..{r['mbit_max']:.0f}]"
        lines.append(f"{r['direction']:<13}{r['backend']:<13}{r['mbit_median']:>14.0f}{rng:>18}{vs:>12}{r['failed']:>8}")
    lines.append("~ : the ranges overlap, the difference is within this run's noise")
    return "\n".join(lines)
