"""``vnetbe bench --frontend migration``: a running QEMU guest live-migrated between two back ends of
the same kind on one machine, vnetbe serve (each datapath asked for) beside DPDK's own vhost-user back
end (testpmd with net_vhost and net_tap), same guest, bridge, peer and bandwidth limit.

Per back end: one boot, then ``migrations`` migrations there and back (each to a new QEMU with
``-incoming``) while a TCP stream runs each way, every byte checked at its offset at both ends
(vnetbe/tools/migration.py). QEMU's own figures (query-migrate): total time, downtime, RAM sent. A
migration whose streams lost or damaged a byte counts as failed, not as a time.
"""
from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from ...errors import SetupError, VnetError
from .. import migration as M
from .testpmd import Backend

BACKENDS = ("vnetbe-user", "vnetbe-uring", "dpdk-vhost")
REFERENCE = "dpdk-vhost"


def _one(kind: str, tag: str, tmp: Path, kernel: str, initrd: str, migrations: int, progress) -> list[dict]:
    tmp = tmp / kind              # this back end's QEMU consoles, QMP and vhost-user sockets
    tmp.mkdir()
    socks = [str(tmp / "a.sock"), str(tmp / "b.sock")]
    rig = M.Rig(tmp, tag, kernel, initrd)
    backends = []
    out = []
    try:
        for side, sock in zip("ab", socks):
            backends.append(Backend(kind, f"{tag}{side}", sock, rig.bridge, M.MAC))
        progress(f"migration on {kind}: booting the guest")
        rig.boot(socks[0])
        for rnd in range(1, migrations + 1):
            progress(f"migration on {kind}: {rnd}/{migrations}")
            try:
                out.append(rig.migrate(rnd, socks[rnd % 2]))
            except VnetError as e:      # a migration that fails ends this back end's run, reported
                out.append({"round": rnd, "ok": False, "error": str(e).splitlines()[0]})
                break
    finally:
        rig.close()
        for b in backends:
            b.close()
    return out


def _spread(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)} if xs else {}


def run(backends=BACKENDS, migrations: int = 3, tag: str = "M", *, kernel: str | None, busybox: str | None,
        progress=lambda msg: None) -> dict:
    """``kernel`` and ``busybox``: the kernel lab's (vnetbe.tools.lab.find_kernel, find_busybox)."""
    if migrations < 1:
        raise SetupError("--repeat: at least one migration per back end")
    runs = {}
    with tempfile.TemporaryDirectory(prefix=f"vnb{tag}-") as d:
        tmp = Path(d)
        progress("building the migrating guest")
        kernel, initrd = M.build_guest(tmp, migrations, kernel, busybox)
        for i, kind in enumerate(backends):
            runs[kind] = _one(kind, f"{tag}{i}", tmp, kernel, initrd, migrations, progress)
    return {"frontend": "migration", "bytes": M.STREAM_BYTES, "max_bandwidth": M.MAX_BANDWIDTH,
            "memory_mb": M.MEMORY_MB, "rows": rows_of(runs)}


def rows_of(runs: dict[str, list[dict]]) -> list[dict]:
    """Per back end: its migrations' figures (those that moved every byte), and its downtime against
    DPDK's (ranges apart or not)."""
    rows = []
    for kind, rs in runs.items():
        good = [r for r in rs if r["ok"]]
        rows.append({"backend": kind, "migrations": len(rs), "failed": len(rs) - len(good), "runs": rs,
                     **{k: _spread([r[k] for r in good]) for k in ("total_ms", "downtime_ms", "ram_mb")}})
    ref = next((r for r in rows if r["backend"] == REFERENCE and r["downtime_ms"]), None)
    for r in rows:
        if ref is not None and r["downtime_ms"] and r is not ref:
            r["downtime_vs_dpdk"] = r["downtime_ms"]["median"] / ref["downtime_ms"]["median"]
            r["within_noise"] = not (r["downtime_ms"]["min"] > ref["downtime_ms"]["max"]
                                     or r["downtime_ms"]["max"] < ref["downtime_ms"]["min"])
    return rows


def format_table(doc: dict) -> str:
    lines = [f"live migration of a QEMU (TCG) guest, {doc['memory_mb']} MiB, max-bandwidth "
             f"{doc['max_bandwidth'] >> 20} MiB/s, a {doc['bytes'] >> 20} MiB TCP stream each way per migration; "
             "QEMU's query-migrate figures, median [min..max]",
             f"{'back end':<14}{'migr':>5}{'failed':>7}{'total ms':>18}{'downtime ms':>18}{'RAM MiB':>9}"
             f"{'downtime vs dpdk':>18}"]

    def fmt(s: dict) -> str:
        return f"{s['median']:.0f} [{s['min']:.0f}..{s['max']:.0f}]" if s else "-"
    for r in doc["rows"]:
        vs = (f"{r['downtime_vs_dpdk']:.2f}{'~' if r['within_noise'] else ''}" if "downtime_vs_dpdk" in r
              else "1.00" if r["backend"] == REFERENCE and r["downtime_ms"] else "-")
        lines.append(f"{r['backend']:<14}{r['migrations']:>5}{r['failed']:>7}{fmt(r['total_ms']):>18}"
                     f"{fmt(r['downtime_ms']):>18}{r['ram_mb'].get('median', 0):>9.0f}{vs:>18}")
        for x in r["runs"]:
            if not x["ok"]:
                lines.append(f"  {r['backend']} migration {x['round']} failed: "
                             + (x.get("error") or f"guest: {x.get('guest')} | peer: {x.get('peer')}"))
    lines.append("~ : the ranges overlap, the difference is within this run's noise; a failed migration lost or "
                 "damaged a byte of a stream, or did not complete")
    return "\n".join(lines)
