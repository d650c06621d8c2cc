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
from vnetbe.tools.bench import SAT_SENDERS
from vnetbe.errors import ConfigError, SetupError

ROOT = Path(__file__).resolve().parents[2]
PP_KEYS = {"syscalls", "kicks", "interrupts", "wakeups", "cpu_ns"}


def _vnetbe(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root")   # tests/conftest.py turns this into a failure in CI (root marker)
    from vnetbe.tools.topology import cleanup_stale

    d = tmp_path_factory.mktemp("bench")
    tag = f"Q{secrets.token_hex(3)}"
    out, plots = d / "bench.json", d / "plots"
    p = _vnetbe("vnetbe", "bench", "--datapath", "user", "--scenario", "tx,rx,rxsat,vm2vm,rr", "--sizes", "64,64k",
                "--count", "2000", "--repeat", "1", "--json", "--output", str(out), "--plot", str(plots),
                "--tag", tag)
    leftovers = cleanup_stale(f"vnb{tag}")
    assert p.returncode == 0, p.stderr
    assert not leftovers, f"the bench left {leftovers} behind"
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
        assert {"datapath", "scenario", "size", "pps", "gbps", "pps_min", "pps_max", "per_packet"} <= set(r)
        assert PP_KEYS <= set(r["per_packet"])
        assert r["pps_min"] <= r["pps"] <= r["pps_max"] and r["pps"] > 0
        assert isinstance(r["size"], int)
        # cpu_ns is the sum of the threads' CPU, and every thread is named
        assert r["per_packet"]["cpu_ns"] == pytest.approx(sum(r["cpu_ns_per_packet"].values()), rel=1e-6)
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


@pytest.mark.root
def test_saturated_rx_accounts_for_every_frame_the_senders_offered(bench_run):
    doc = bench_run[0]
    for r in (x for x in doc["results"] + doc["baseline"] if x["scenario"] == "rxsat"):
        # The senders split the sequence numbers and offer them all; what the path did not carry the
        # kernel dropped where it says so (the tap's queue, the veth's backlog): nothing vanishes.
        d = r["drops"]
        assert r["offered"] == 2000 and r["frames"] + d["macvtap_queue"] + d["veth_backlog"] == 2000, r
        assert r["options"]["senders"] == SAT_SENDERS


@pytest.mark.root
def test_tso_counts_superframes_and_payload(bench_run):
    doc = bench_run[0]
    tso = next(r for r in doc["results"] if r["scenario"] == "tx" and r["size_label"] == "64k")
    assert tso["size"] == 65535 and tso["options"]["tso"] and tso["options"]["mss"] == 1448
    # Gbit/s counts TCP payload bytes of the super-frames moved
    assert tso["gbps"] == pytest.approx(tso["pps"] * tso["options"]["payload"] * 8 / 1e9, rel=1e-6)


@pytest.mark.root
def test_vm2vm_delivers(bench_run):
    doc = bench_run[0]
    for r in (r for r in doc["results"] if r["scenario"] == "vm2vm"):
        want = doc["start"]["tso_count"] if r["size_label"] == "64k" else 2000   # 64k: count / TSO_DIV
        assert r["frames"] > 0 and r["frames"] <= r["offered"] == want
        assert r["drops"]["bad"] == 0        # every byte of every tagged frame checked by guest B
    small = next(r for r in doc["results"] if r["scenario"] == "vm2vm" and r["size_label"] == "64")
    assert small["frames"] >= 0.9 * small["offered"]


@pytest.mark.root
def test_rr_reports_latency(bench_run):
    doc = bench_run[0]
    for r in [x for x in doc["results"] + doc["baseline"] if x["scenario"] == "rr"]:
        assert 0 < r["p50_us"] <= r["p99_us"]
        assert r["frames"] == 2000            # every round trip answered
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
    assert "vs raw" in text and "p50 µs" in text and "64k" in text
    assert "not run: rx at 64k, rxsat at 64k, rr at 64k" in text


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
    assert plan.skipped == [{"scenario": "rr", "size": "64k", "why": plan.skipped[0]["why"]}]
    assert plan.rr_count == 1000


def test_lab_defaults_are_smaller():
    assert benchcli.make_plan(_args(), lab=True).count == benchcli.LAB_COUNT
    assert benchcli.make_plan(_args(), lab=False).count == benchcli.HOST_COUNT


@pytest.mark.parametrize("bad", [dict(scenario="tx,bogus"), dict(sizes="10"), dict(event_idx="maybe"),
                                 dict(datapath="kernel"), dict(scenario="rx", sizes="64k"), dict(queue_size="100")])
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
