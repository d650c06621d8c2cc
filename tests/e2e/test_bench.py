"""``vnetbe bench`` and ``vnetbe report`` end to end, with tiny counts: behaviour, never speed.

One bench run (every scenario, user datapath, 64 B and 64k, one repeat) feeds the shape checks, the
charts and the report; the whole module stays well under a minute.
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from vnetbe import VHOST_NET_PATH

from vnetbe.tools import benchcli
from vnetbe.faults import DROP_REASONS
from vnetbe.tools.bench import SAT_SENDERS
from vnetbe.tools.bench.delivery import UNACCOUNTED
from vnetbe.tools.results import THROUGHPUT_SCENARIOS
from vnetbe.errors import ConfigError, SetupError

ROOT = Path(__file__).resolve().parents[2]
PP_KEYS = {"syscalls", "kicks", "interrupts", "wakeups", "cpu_ns"}


def _vnetbe(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _bench(letter: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`vnetbe bench --json *args` on a throwaway topology of its own: it exits 0 and leaves nothing."""
    from vnetbe.tools.topology import cleanup_stale

    tag = f"{letter}{secrets.token_hex(3)}"
    p = _vnetbe("vnetbe", "bench", *args, "--json", "--tag", tag, timeout=timeout)
    leftovers = cleanup_stale(f"vnb{tag}")
    assert p.returncode == 0, p.stderr
    assert not leftovers, f"the bench left {leftovers} behind"
    return p


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root")   # tests/conftest.py turns this into a failure in CI (root marker)
    d = tmp_path_factory.mktemp("bench")
    out, plots = d / "bench.json", d / "plots"
    p = _bench("Q", "--datapath", "user", "--scenario", "tx,rx,rxsat,vm2vm,rr", "--sizes", "64,64k",
               "--count", "2000", "--repeat", "1", "--output", str(out), "--plot", str(plots))
    return json.loads(p.stdout), out, plots, p



@pytest.mark.root
def test_json_has_the_documented_shape(bench_run):
    doc, out, _, _ = bench_run
    assert json.loads(out.read_text()) == doc            # --output holds the same document
    s = doc["start"]
    assert {"host", "kernel", "cpus", "where", "count", "repeat"} <= set(s)
    assert s["where"] == "host" and s["count"] == 2000 and s["repeat"] == 1
    seen = {(r["scenario"], r.get("size_label")) for r in doc["results"]}
    assert seen == {("tx", "64"), ("tx", "64k"), ("rx", "64"), ("rxsat", "64"), ("vm2vm", "64"), ("vm2vm", "64k"),
                    ("rr", "64")}
    for r in doc["results"] + doc["baseline"]:
        assert {"datapath", "scenario", "size", "pps", "gbps", "pps_min", "pps_max", "pps_runs", "pps_cv",
                "per_packet", "offered", "frames", "drops"} <= set(r)
        assert PP_KEYS <= set(r["per_packet"])
        assert r["pps_runs"] == [r["pps"]] and isinstance(r["size"], int)
    # --pin auto on this 2-CPU machine: tx pinned, the rest left to the scheduler, and each result says so.
    assert s["pin"] == {"device": 1, "guest": 0, "peer": 0} and s["pin_scenarios"] == ["tx"]
    for r in doc["results"] + doc["baseline"]:
        assert (r["options"].get("pin") == s["pin"]) == (r["scenario"] == "tx"), r
    assert all(r["datapath"] == "user" for r in doc["results"])
    assert {(b["scenario"], b["size_label"]) for b in doc["baseline"]} == {("tx", "64"), ("tx", "64k"), ("rx", "64"),
                                                                          ("rxsat", "64"), ("rr", "64")}
    assert {(x["scenario"], x["size"]) for x in doc["skipped"]} == {("rx", "64k"), ("rxsat", "64k"), ("rr", "64k")}


@pytest.mark.root
def test_threads_of_each_scenario_are_accounted(bench_run):
    doc = bench_run[0]
    by = {(r["scenario"], r["size_label"]): r for r in doc["results"]}
    assert {"datapath", "guest"} <= set(by[("tx", "64")]["cpu_ns_per_packet"])
    assert {"datapath", "guest", "peer_sender"} <= set(by[("rx", "64")]["cpu_ns_per_packet"])
    assert {"datapath", "guest", "peer_sender"} <= set(by[("rxsat", "64")]["cpu_ns_per_packet"])
    for r in doc["results"] + doc["baseline"]:
        if r["scenario"] in ("tx", "rx", "rxsat"):   # the ones the cost model prices
            pp = r["per_packet"]
            if r["datapath"] == "raw":
                assert pp["guest_sleeps"] == 0, r     # no guest in a raw loop: nobody to sleep
            elif r["datapath"] == "user":
                # The datapath thread sleeps only in epoll_wait, and each sleep ends in a wake-up
                # (bar the run's last and a stray one at its start).
                assert pp["device_sleeps"] <= pp["wakeups"] + 2 / r["frames"], r
    assert {"datapath_a", "datapath_b", "guest_a", "guest_b"} <= set(by[("vm2vm", "64")]["cpu_ns_per_packet"])
    assert {"datapath", "guest", "peer"} <= set(by[("rr", "64")]["cpu_ns_per_packet"])


KNOWN_DROPS = set(DROP_REASONS) | {"macvtap_tx_queue", "macvtap_rx_queue", "veth_to_peer", "veth_from_peer",
                                   "peer_socket", "damaged", "not_taken", "not_sent", UNACCOUNTED}


@pytest.mark.root
def test_every_frame_offered_is_delivered_or_dropped_by_a_named_reason(bench_run):
    doc = bench_run[0]
    for r in (x for x in doc["results"] + doc["baseline"] if x["scenario"] in THROUGHPUT_SCENARIOS):
        d = r["drops"]
        assert set(d) <= KNOWN_DROPS and all(d.values()), r
        assert r["frames"] + sum(d.values()) == r["offered"], r
        # Every loss has a counter that saw it: nothing merely vanished (nor was counted twice).
        assert UNACCOUNTED not in d, r
        want = doc["start"]["tso_count"] if r["size_label"] == "64k" else 2000
        assert r["offered"] == want, r
    for r in (x for x in doc["results"] + doc["baseline"] if x["scenario"] == "rxsat"):
        assert r["options"]["senders"] == SAT_SENDERS


@pytest.mark.root
def test_notifications_stay_within_one_per_32_frames_under_saturation(bench_run):
    """The EVENT_IDX target where the load saturates the path: tx (the guest floods) and rxsat."""
    doc = bench_run[0]
    rows = [r for r in doc["results"] if r["scenario"] in ("tx", "rxsat") and r["size_label"] == "64"]
    assert len(rows) == 2
    for r in rows:
        assert r["options"]["event_idx"]
        assert r["per_packet"]["kicks"] <= 1 / 32 and r["per_packet"]["interrupts"] <= 1 / 32, r


@pytest.mark.root
def test_tx_rate_counts_frames_that_arrived_not_frames_the_device_took():
    """Frames longer than the peer's MTU cross the device and the macvtap and die at the veth: a TX
    rate of what the device consumed would be high; what arrived is nothing, and the veth says why."""
    from vnetbe.tools.bench import BenchTopology

    with BenchTopology(f"Y{secrets.token_hex(2)}") as bt:
        with bt.topo.ns.ipr() as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname=bt.topo.peer)[0], mtu=1000)
        for r in (bt.raw_tx(1500, 500), bt.tx("user", 1500, 500)):
            assert r.offered == 500 and r.frames == 0 and r.pps == 0 and r.gbps == 0, r
            assert r.drops == {"veth_to_peer": 500}, r
            assert r.options["consumed_pps"] > 0       # the device (or raw loop) did take them
        small = bt.tx("user", 64, 500)                 # below the MTU: every one arrives, checked
        assert small.frames == 500 and small.drops == {} and small.pps > 0


@pytest.mark.root
def test_tso_counts_superframes_delivered_from_the_peers_bytes(bench_run):
    doc = bench_run[0]
    for tso in (r for r in doc["results"] + doc["baseline"] if r["scenario"] == "tx" and r["size_label"] == "64k"):
        assert tso["size"] == 65535 and tso["options"]["tso"]
        # The peer's byte counter, less one header per segment, is whole super-frames' payload: all of them.
        assert tso["frames"] == tso["offered"] == doc["start"]["tso_count"], tso


@pytest.mark.root
def test_vm2vm_delivers(bench_run):
    doc = bench_run[0]
    for r in (r for r in doc["results"] if r["scenario"] == "vm2vm"):
        want = doc["start"]["tso_count"] if r["size_label"] == "64k" else 2000   # 64k: count / TSO_DIV
        assert r["frames"] > 0 and r["frames"] <= r["offered"] == want
        assert "damaged" not in r["drops"]   # every byte of every tagged frame checked by guest B
    small = next(r for r in doc["results"] if r["scenario"] == "vm2vm" and r["size_label"] == "64")
    assert small["frames"] >= 0.9 * small["offered"]


@pytest.mark.root
def test_rr_reports_latency(bench_run):
    doc = bench_run[0]
    for r in [x for x in doc["results"] + doc["baseline"] if x["scenario"] == "rr"]:
        lat = r["latency"]
        assert 0 < lat["min_us"] <= r["p50_us"] <= r["p99_us"] <= lat["max_us"], r
        assert lat["round_trips"] == doc["start"]["rr_count"]   # the percentiles are over every one
    user = next(r for r in doc["results"] if r["scenario"] == "rr")
    # one request in, one reply out: the guest driver sees at least one interrupt or polls it out
    assert user["per_packet"]["kicks"] <= 1.0 + 1e-9 and user["per_packet"]["syscalls"] > 0


@pytest.mark.root
def test_plot_writes_pngs(bench_run):
    plots = bench_run[2]
    pngs = sorted(p.name for p in plots.glob("*.png"))
    assert {"throughput.png", "per_packet.png", "cpu_per_packet.png", "rr_latency.png"} <= set(pngs)
    for p in plots.glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.root
def test_table_on_stdout(bench_run):
    doc = bench_run[0]
    text = benchcli.format_table(doc)
    assert "vs raw" in text and "lost%" in text and "p50 µs" in text and "64k" in text
    # One run a side can never separate two paths: every ratio carries the noise mark.
    rows = [ln for ln in text.splitlines() if ln.startswith("user ") and ln.split()[1] in ("tx", "rx", "rxsat")]
    assert len(rows) == 4 and all(ln.split()[7].endswith("~") for ln in rows), rows
    assert "delivered at the far end" in text
    assert "not run: rx at 64k, rxsat at 64k, rr at 64k" in text


@pytest.mark.root
def test_ring_split_packed_compares_both_formats_in_one_run():
    p = _bench("R", "--datapath", "user,uring", "--scenario", "tx,rx", "--sizes", "64",
               "--ring", "split,packed", "--count", "2000", "--repeat", "2", timeout=300)
    doc = json.loads(p.stdout)
    got = {(r["datapath"], r["scenario"], r["options"]["ring"]): r for r in doc["results"]}
    assert set(got) == {(d, s, f) for d in ("user", "uring") for s in ("tx", "rx") for f in ("split", "packed")}
    for r in got.values():
        assert r["frames"] + sum((r.get("drops") or {}).values()) == r["offered"], r
    text = benchcli.format_table(doc)
    assert "vs split" in text
    packed_rows = [ln for ln in text.splitlines() if ln.split()[:1] in (["user"], ["uring"]) and " packed " in ln]
    assert len(packed_rows) == 4, text
    comps = [c for c in benchcli.comparisons(doc) if c["reference"] == "split"]
    assert len(comps) == 4 and all(c["options"]["ring"] == "packed" for c in comps)


@pytest.mark.root
def test_queues_1_2_runs_tx_on_both_pairs_and_compares_with_one_pair():
    p = _bench("Q", "--datapath", "user,uring", "--scenario", "tx,rx", "--sizes", "64",
               "--queues", "1,2", "--count", "4000", "--repeat", "2", timeout=300)
    doc = json.loads(p.stdout)
    got = {(r["datapath"], r["scenario"], r["options"].get("queues", 1)): r for r in doc["results"]}
    assert set(got) == {(d, s, 1) for d in ("user", "uring") for s in ("tx", "rx")} | {("user", "tx", 2), ("uring", "tx", 2)}
    for (dp, _, pairs), r in got.items():
        assert r["frames"] + sum((r.get("drops") or {}).values()) == r["offered"], r
        if pairs == 2:
            assert r["options"]["pair_tx_frames"] == [2000, 2000], r
            assert {"datapath", "datapath_p1", "guest", "guest_p1"} <= set(r["cpu_ns_per_packet"]), r
            assert "pin" not in r["options"], r
    assert any("rx, rxsat, rr and vm2vm" in s.get("what", "") for s in doc["skipped"])
    text = benchcli.format_table(doc)
    assert "vs 1qp" in text and "pair 0 2000, pair 1 2000" in text and "datapath_p1" in text, text
    comps = [c for c in benchcli.comparisons(doc) if c["reference"] == "1 pair"]
    assert sorted(c["path"] for c in comps) == ["uring", "user"]


@pytest.mark.root
@pytest.mark.parametrize("fmt", ["md", "html"])
def test_report_writes_a_file(bench_run, tmp_path, fmt):
    out = bench_run[1]
    args = ["vnetbe.tools.report", "--bench", str(out), "--out", str(tmp_path)] + (["--html"] if fmt == "html" else [])
    p = _vnetbe(*args)
    assert p.returncode == 0, p.stderr
    report = tmp_path / f"report.{fmt}"
    assert p.stdout.strip() == str(report)
    text = report.read_text()
    for needle in ("Targets", "Throughput", "Request/response latency", "predicted", "throughput.png"):
        assert needle in text
    assert (tmp_path / "costs.json").exists() and (tmp_path / "throughput.png").exists()


# ------------------------------------------------------------------- no root needed: the CLI's edges

def _args(**kw):
    import argparse

    p = argparse.ArgumentParser()
    benchcli.add_bench_arguments(p)
    a = p.parse_args([])
    for k, v in kw.items():
        setattr(a, k, v)
    return a


def test_plan_expands_options_and_skips_what_cannot_run():
    plan = benchcli.make_plan(_args(datapath="user,vhost", scenario="tx,rr", sizes="64,64k", event_idx="on,off",
                                    busyloop_us="0,50", count=1000), lab=False)
    assert plan.sizes == [64, "64k"] and plan.event_idx == [True, False]
    assert len(plan.variants()) == 4   # queue size x EVENT_IDX x busy polling, on both paths
    assert {v["ring"] for v in plan.variants()} == {"split"}, "split rings unless asked"
    assert plan.skipped == [{"scenario": "rr", "size": "64k", "why": plan.skipped[0]["why"]}]
    assert plan.rr_count == 1000


def test_lab_defaults_are_smaller():
    assert benchcli.make_plan(_args(), lab=True).count == benchcli.LAB_COUNT
    assert benchcli.make_plan(_args(), lab=False).count == benchcli.HOST_COUNT


def test_plan_runs_packed_rings_everywhere_but_on_vhost():
    plan = benchcli.make_plan(_args(datapath="user,vhost", ring="split,packed", queue_size="128,256"), lab=False)
    assert [v["ring"] for v in plan.variants("user")] == ["split", "split", "packed", "packed"]
    assert {v["ring"] for v in plan.variants("vhost")} == {"split"}
    assert any(s.get("what") == "vhost with packed rings" for s in plan.skipped)


def test_plan_runs_several_queue_pairs_in_tx_only():
    plan = benchcli.make_plan(_args(datapath="user,vhost", scenario="tx,rx", queues="1,2"), lab=False)
    assert [v.get("queues", 1) for v in plan.variants("vhost", "tx")] == [1, 2]
    assert [v.get("queues", 1) for v in plan.variants("user", "rx")] == [1]
    assert any("rx" in s.get("what", "") and "one queue" in s["why"] for s in plan.skipped)
    assert "--queues" in benchcli._lab_argv(plan, False, False)


def test_plan_runs_every_scenario_with_and_without_the_dirty_log_on_every_datapath():
    plan = benchcli.make_plan(_args(datapath="user,vhost", scenario="tx,rr", dirty_log="off,on"), lab=False)
    for dp in ("user", "vhost"):
        for scen in ("tx", "rr"):
            assert [v.get("dirty_log", False) for v in plan.variants(dp, scen)] == [False, True]
    argv = benchcli._lab_argv(plan, False, False)
    assert argv[argv.index("--dirty-log") + 1] == "off,on"
    assert benchcli.make_plan(_args(), lab=False).dirty_logs == [False], "no log unless asked"


@pytest.mark.root
def test_dirty_log_off_on_compares_the_same_runs_with_the_device_logging():
    p = _bench("L", "--datapath", "user,uring", "--scenario", "tx,rx", "--sizes", "64", "--dirty-log", "off,on",
               "--count", "2000", "--repeat", "2", timeout=300)
    doc = json.loads(p.stdout)
    got = {(r["datapath"], r["scenario"], bool(r["options"].get("dirty_log"))): r for r in doc["results"]}
    assert set(got) == {(d, s, log) for d in ("user", "uring") for s in ("tx", "rx") for log in (False, True)}
    for (dp, scen, log), r in got.items():
        assert r["frames"] + sum((r.get("drops") or {}).values()) == r["offered"], r
        # the device wrote its log: RX buffers and used rings (rx), the TX used ring (tx); none without it
        assert ("dirty_pages" in r["options"]) == log and (not log or r["options"]["dirty_pages"] > 0), r
    comps = [c for c in benchcli.comparisons(doc) if c["reference"] == "log off"]
    assert len(comps) == 4 and all(c["options"]["dirty_log"] for c in comps)
    assert "vs log off" in benchcli.format_table(doc)


def test_migration_table_compares_downtime_with_dpdk_and_names_failed_migrations():
    from vnetbe.tools.bench import migration as mb

    def runs(*downtimes, fail=None):
        out = [{"round": i + 1, "ok": True, "total_ms": 2700 + i, "downtime_ms": d, "ram_mb": 117}
               for i, d in enumerate(downtimes)]
        if fail:
            out.append({"round": len(out) + 1, "ok": False, "guest": fail, "peer": {}})
        return out
    rows = mb.rows_of({"vnetbe-user": runs(20, 22, 30), "vnetbe-uring": runs(10, 12, fail="STREAM recv 5401 bad 7"),
                       "dpdk-vhost": runs(10, 11, 13)})
    assert [r["failed"] for r in rows] == [0, 1, 0] and rows[1]["downtime_ms"]["median"] == 11
    text = mb.format_table({"bytes": 48 << 20, "max_bandwidth": 40 << 20, "memory_mb": 256, "rows": rows})
    lines = text.splitlines()
    user = next(ln for ln in lines if ln.startswith("vnetbe-user"))
    uring = next(ln for ln in lines if ln.startswith("vnetbe-uring"))
    assert user.split()[-1] == "2.00" and uring.split()[-1] == "1.00~", text   # 22/11 apart; 11/11 overlapping
    assert "vnetbe-uring migration 3 failed: guest: STREAM recv 5401 bad 7" in text


@pytest.mark.parametrize("bad", [dict(scenario="tx,bogus"), dict(sizes="10"), dict(event_idx="maybe"),
                                 dict(datapath="kernel"), dict(scenario="rx", sizes="64k"), dict(queue_size="100"),
                                 dict(ring="ring"), dict(ring="packed", datapath="vhost"),
                                 dict(queues="0"), dict(queues="17"), dict(queues="two"),
                                 dict(scenario="rx", queues="2"), dict(dirty_log="maybe")])
def test_plan_rejects_bad_options(bad):
    with pytest.raises(ConfigError):
        benchcli.make_plan(_args(**bad), lab=False)


def test_lab_output_is_found_among_other_lines():
    doc = {"start": {"host": "x"}, "results": [], "baseline": []}
    noise = b"booting...\n{not json\n" + json.dumps(doc, indent=2).encode() + b"\n"
    assert benchcli._find_doc(noise) == doc
    with pytest.raises(SetupError):
        benchcli._find_doc(b"nothing here\n")


@pytest.mark.skipif(os.path.exists(VHOST_NET_PATH), reason="this host has vhost-net: nothing to refuse")
def test_no_lab_refuses_vhost_in_one_line():
    p = _vnetbe("vnetbe", "bench", "--datapath", "user,vhost", "--no-lab", "--count", "10", timeout=60)
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "--no-lab" in lines[0] and VHOST_NET_PATH in lines[0]
