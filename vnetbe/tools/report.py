"""``vnetbe report``: one Markdown (or HTML) report of a bench + costs run, with its charts.

    vnetbe report [--out DIR] [--html]                         # runs the bench (with costs) first
    vnetbe report --bench bench.json [--costs costs.json]      # from saved `vnetbe bench --json` output

Without ``--bench`` the bench runs exactly as ``vnetbe bench`` would with the same options (in the
kernel lab when vhost is asked for and this host has no /dev/vhost-net), and the unit costs are
measured where the bench ran (``vnetbe costs --quick``, embedded in the bench document). A loaded
bench document without costs gets them from ``--costs`` or, failing that, measured here; the report
says so when "here" is not where the bench ran.

DIR receives report.md (or report.html), bench.json, costs.json and the PNG charts (when matplotlib is
installed, as ``pip install .`` does; without it the report says the charts are missing).
"""
from __future__ import annotations

import argparse
import html
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError, VnetError
from . import benchcli, costs
from .benchcli import add_bench_arguments
from .cliutil import load_json, standalone, subcommand
from .noise import ALPHA, NOISE_MARK, mark
from .results import (
    SCENARIOS,
    THROUGHPUT_SCENARIOS,
    comparison_for,
    comparisons,
    label,
    loss_text,
    opts_text,
    rows_in_order,
    ring_of,
    skipped_text,
    varied_options,
)

__all__ = ["add_parser", "main", "build", "render_markdown", "render_html", "targets"]


# ------------------------------------------------------------------------------------------ blocks
# The report is a list of blocks, rendered to Markdown or HTML:
#   ("h", level, text) ("p", text) ("table", headers, rows) ("pre", text) ("img", path, alt) ("list", items)

def _fmt(v: Any, nd: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    return str(v)


def _result_table(doc: dict, scenarios: tuple[str, ...], head: list[str],
                  cells) -> tuple[list[str], list[list[str]]] | None:
    """One row per result of ``scenarios`` in bench order, ``cells(r, baseline, varied)`` its columns;
    None when the bench ran none of them (the report then leaves the section out)."""

    rows = rows_in_order(doc, scenarios)
    if not rows:
        return None
    varied = varied_options(doc)
    return head, [cells(r, b, varied) for r, b in rows]


def _options(r: dict, varied: set[str]) -> str:
    return opts_text(r, varied)   # "-" for raw rows: they carry none of the varied options


def _vs_raw(r: dict, b: dict | None, key: str) -> str:
    """r's ``key`` over its raw baseline's; a raw row is its own baseline, a missing one gives "-"."""
    if r["datapath"] == "raw":
        return "1.00"
    return f"{r[key] / b[key]:.2f}" if b and b.get(key) else "-"


def _throughput_table(doc: dict) -> tuple[list[str], list[list[str]]] | None:
    comps = comparisons(doc)

    def vs(r: dict, ref: str) -> str:
        if r["datapath"] == ref:
            return "1.00"
        c = comparison_for(comps, r, ref)
        return f"{c['ratio']:.2f}{mark(c)}" if c and c["ratio"] is not None else "-"

    def cells(r, b, varied):
        pp = r["per_packet"]
        cvp = f"{100 * r['pps_cv']:.0f}" if r.get("pps_cv") is not None else "-"
        return [r["datapath"], r["scenario"], label(r), _options(r, varied),
                f"{r['pps'] / 1e3:.1f}", f"{r['pps_min'] / 1e3:.0f}..{r['pps_max'] / 1e3:.0f}", cvp, f"{r['gbps']:.3f}",
                vs(r, "raw"), vs(r, "user") if r["datapath"] not in ("raw", "user") else "",
                vs(r, "split") if ring_of(r) == "packed" else "",
                f"{r.get('offered', 0)}", f"{r.get('frames', 0)}", loss_text(r) or "none",
                f"{pp.get('syscalls', 0):.3f}", f"{pp.get('kicks', 0):.4f}",
                f"{pp.get('interrupts', 0):.4f}", f"{pp.get('wakeups', 0):.4f}", f"{pp.get('cpu_ns', 0):.0f}"]

    return _result_table(doc, THROUGHPUT_SCENARIOS,
                         ["path", "scenario", "size", "options", "kpps delivered (median)", "min..max", "cv %", "Gbit/s",
                          "vs raw", "vs user", "packed vs split", "offered", "delivered", "not delivered, by reason",
                          "syscalls", "kicks", "interrupts", "wake-ups", "CPU ns"], cells)


def _rr_table(doc: dict) -> tuple[list[str], list[list[str]]] | None:

    def cells(r, b, varied):
        pp = r["per_packet"]
        return [r["datapath"], label(r), _options(r, varied),
                f"{r.get('p50_us', 0):.1f}", f"{r.get('p50_us_min', 0):.1f}..{r.get('p50_us_max', 0):.1f}",
                f"{r.get('p99_us', 0):.1f}", f"{r['pps']:.0f}", _vs_raw(r, b, "p50_us"),
                f"{pp.get('syscalls', 0):.2f}", f"{pp.get('kicks', 0):.2f}", f"{pp.get('interrupts', 0):.2f}",
                f"{pp.get('wakeups', 0):.2f}", f"{pp.get('cpu_ns', 0) / 1e3:.1f}"]

    return _result_table(doc, ("rr",),
                         ["path", "size", "options", "p50 µs", "p50 min..max", "p99 µs", "round trips/s", "p50 vs raw",
                          "syscalls/RT", "kicks/RT", "interrupts/RT", "wake-ups/RT", "CPU µs/RT"], cells)


def _cpu_table(doc: dict) -> tuple[list[str], list[list[str]]] | None:

    rows = rows_in_order(doc, SCENARIOS)
    if not rows:
        return None
    varied = varied_options(doc)
    threads = list(dict.fromkeys(t for r, _ in rows for t in (r.get("cpu_ns_per_packet") or {})))
    out = []
    for r, _ in rows:
        cpu = r.get("cpu_ns_per_packet") or {}
        out.append([f"{r['datapath']} {r['scenario']} {label(r)}"
                    + (f" ({opts_text(r, varied)})" if varied and r["datapath"] != "raw" else "")]
                   + [f"{cpu[t]:.0f}" if t in cpu else "" for t in threads] + [f"{sum(cpu.values()):.0f}"])
    return ["result"] + threads + ["total"], out


def _plain(r: dict) -> bool:
    """The default notification options: EVENT_IDX on, no busy polling (what the targets speak of)."""
    o = r.get("options") or {}
    return o.get("event_idx", True) and not o.get("busyloop_us")


def _prediction_table(preds: list[dict]) -> tuple[list[str], list[list[str]]]:
    varied = varied_options({"results": preds})
    head = ["path", "scenario", "size", "options", "predicted ns", "measured ns", "error", "stack from",
            "largest terms", "raw loop ns", "a VMM would add ns"]
    out = []
    for p in preds:
        cal = p.get("calibrated_on")
        src = "-" if not cal else f"{cal['size']} B" + (" (in sample)" if p.get("in_sample") else "")
        terms = sorted(p["rows"], key=lambda r: -r.get("share", 0))[:2]
        out.append([p["datapath"], p["scenario"], label(p), _options(p, varied),
                    f"{p['predicted_ns']:.0f}", _fmt(p["measured_ns"], 0),
                    f"{p['error']:+.0%}" if p.get("error") is not None else "-", src,
                    ", ".join(f"{r['term']} {r.get('share', 0):.0%}" for r in terms),
                    _fmt(p.get("baseline_ns"), 0), _fmt(p.get("vmm_extra_ns"), 0)])
    return head, out


def _frac(x: float) -> str:
    return f"1/{1 / x:,.0f}" if x > 0 else "0"


def _verdict_notify(kicks: float, irqs: float, worst_irq: dict) -> str:
    if kicks <= 1 / 32 and irqs <= 1 / 32:
        return "met"
    if irqs > 1 / 32 and worst_irq["scenario"] == "rx" and not any((worst_irq.get("drops") or {}).values()):
        # The target speaks of saturating load: a guest that lost nothing kept up with the peer and
        # went to sleep between bursts, so every wake-up needed an interrupt.
        return "missed (that rx run was not saturated: nothing was lost; --scenario rxsat saturates it)"
    return "missed"


def targets(doc: dict, costs_doc: dict | None, preds: list[dict] | None) -> list[tuple[str, str, str]]:
    """The issue's targets, judged on this run: (target, measured, verdict) with verdict met / missed /
    not measured."""

    out: list[tuple[str, str, str]] = []
    res, base = doc["results"], doc.get("baseline") or []

    def find(rows, dp, scen, size, **opts):
        for r in rows:
            o = r.get("options") or {}
            if (r["datapath"], r["scenario"], r["size"]) == (dp, scen, size) and not o.get("tso") \
                    and all(o.get(k) == v for k, v in opts.items()):
                return r
        return None

    # 1. userspace TX at 64 B >= 90% of the raw write loop, same run
    u, b = find([r for r in res if _plain(r)], "user", "tx", 64), find(base, "raw", "tx", 64)
    if u and b and b["pps"]:
        ratio = u["pps"] / b["pps"]
        c = comparison_for(comparisons(doc), u, "raw")
        noise = "" if c and c["separated"] else " (user and raw not separated: within noise)"
        out.append(("user TX at 64 B >= 90% of the raw write loop (delivered frames)",
                    f"{ratio:.0%} ({u['pps'] / 1e3:.0f} vs {b['pps'] / 1e3:.0f} kpps)",
                    ("met" if ratio >= 0.9 else "missed") + noise))
    else:
        out.append(("user TX at 64 B >= 90% of the raw write loop", "-", "not measured (needs tx at 64 with baseline)"))

    # 2. with EVENT_IDX under saturating load: <= 1 kick and <= 1 interrupt per 32 frames, both paths
    for dp in ("user", "vhost"):
        # rxsat is the saturated RX run; plain rx stands in for it only when the bench ran without it.
        scens = ("tx", "rxsat") if any(r["scenario"] == "rxsat" and r["datapath"] == dp for r in res) else ("tx", "rx")
        rows = [r for r in res if r["datapath"] == dp and r["scenario"] in scens and _plain(r)]
        if not rows:
            out.append((f"{dp}: <= 1 kick and <= 1 interrupt per 32 frames with EVENT_IDX (tx, rx)", "-", "not measured"))
            continue
        worst_k = max(rows, key=lambda r: r["per_packet"].get("kicks", 0))
        worst_i = max(rows, key=lambda r: r["per_packet"].get("interrupts", 0))
        k, i = worst_k["per_packet"].get("kicks", 0), worst_i["per_packet"].get("interrupts", 0)
        out.append((f"{dp}: <= 1 kick and <= 1 interrupt per 32 frames with EVENT_IDX ({', '.join(scens)})",
                    f"worst kicks {_frac(k)} per frame ({worst_k['scenario']} {label(worst_k)}), worst interrupts "
                    f"{_frac(i)} ({worst_i['scenario']} {label(worst_i)})",
                    _verdict_notify(k, i, worst_i)))

    # 3. predicted per-packet cost within +-30% of the measured, both paths, at 64 B and 1500 B,
    #    out of sample only (the frame stack term from the raw loop at the other size)
    if preds:
        for dp in ("user", "vhost"):
            ps = [p for p in preds if p["datapath"] == dp and p["size"] in (64, 1500) and p["measured_ns"]
                  and _plain(p) and not p["in_sample"]]
            if not ps:
                out.append((f"{dp}: predicted within ±30% of measured at 64 and 1500 B (out of sample)", "-",
                            "not measured (needs both sizes with their raw loops)"))
                continue
            worst = max(ps, key=lambda p: abs(p["error"]))
            out.append((f"{dp}: predicted within ±30% of measured at 64 and 1500 B (out of sample)",
                        ", ".join(f"{p['scenario']} {p['size']}: {p['error']:+.0%}" for p in ps),
                        "met" if abs(worst["error"]) <= costs.TARGET_ERROR else "missed"))
    else:
        out.append(("predicted within ±30% of measured", "-", "not measured (no costs)"))

    # 4. rr p50 on the userspace path <= 3x the eventfd wake-up round trip measured by costs
    rr = [r for r in res if r["datapath"] == "user" and r["scenario"] == "rr" and _plain(r)]
    if rr and costs_doc:
        w = costs_doc["results"]["wakeup_epoll"]["rtt_p50_ns"]["median"] / 1e3
        r = min(rr, key=lambda r: r["size"])
        out.append(("user rr p50 <= 3x the eventfd wake-up round trip (costs, epoll)",
                    f"{r['p50_us']:.1f} µs at {r['size']} B vs 3 x {w:.1f} µs = {3 * w:.1f} µs "
                    f"({r['p50_us'] / w:.1f}x)", "met" if r["p50_us"] <= 3 * w else "missed"))
    else:
        out.append(("user rr p50 <= 3x the eventfd wake-up round trip", "-",
                    "not measured (needs --scenario rr and costs)"))
    return out


def build(doc: dict, costs_doc: dict | None, preds: list[dict] | None, charts: list[Path] | None,
          chart_note: str | None, costs_note: str | None = None) -> list[tuple]:
    """The report's blocks."""

    s = doc["start"]
    blocks: list[tuple] = [("h", 1, "vnetbe report")]
    where = s.get("where", "host")
    facts = [f"where: {where}" + (f" (launched from {s['launched_from']['host']}, kernel "
                                  f"{s['launched_from']['kernel']})" if s.get("launched_from") else ""),
             f"host {s.get('host')}, kernel {s.get('kernel')}, {s.get('cpus')} cpus, Python {s.get('python')}, {s.get('time')}",
             f"datapaths {', '.join(s.get('datapaths') or [])}; scenarios {', '.join(s.get('scenarios') or [])}; "
             f"sizes {', '.join(s.get('sizes') or [])}",
             f"{s.get('count')} frames per run ({s.get('rr_count')} round trips for rr), {s.get('repeat')} runs per "
             f"configuration, median with min..max; queue sizes {s.get('queue_sizes')}, EVENT_IDX "
             f"{['on' if e else 'off' for e in s.get('event_idx') or []]}, busy polling {s.get('busyloop_us')} µs, "
             f"rings {', '.join(s.get('rings') or ['split'])}"]
    blocks.append(("list", facts))
    if where != "host":
        blocks.append(("p", "Numbers from the software-emulated lab compare the paths with each other; they say "
                            "nothing about a real machine's rates."))

    blocks.append(("h", 2, "Targets"))
    blocks.append(("table", ["target", "this run", "verdict"], [list(t) for t in targets(doc, costs_doc, preds)]))

    t = _throughput_table(doc)
    if t:
        blocks += [("h", 2, "Throughput"),
                   ("p", "Rates count frames delivered at the far end (the peer for tx, the guest for rx), from "
                         "the first frame sent to the last one received; every frame offered is delivered or "
                         "listed as not delivered by reason (unaccounted: what no counter explains). Per-packet "
                         "counts are per frame delivered (64k: per TSO super-frame, whose Gbit/s counts TCP "
                         "payload). CPU ns sums every thread involved: datapath thread or vhost worker, guest, and "
                         "the peer's sender (rx) or receiver (tx). "
                         f"{NOISE_MARK} after a ratio: not separated from its reference (ranges overlap, or exact "
                         f"Mann-Whitney p >= {ALPHA} over the runs)."),
                   ("table", *t)]
    t = _rr_table(doc)
    if t:
        blocks += [("h", 2, "Request/response latency"),
                   ("p", "One frame at a time: the peer sends, the guest answers, the peer receives. Counts and CPU "
                         "are per round trip; the raw row answers straight on the macvtap fd."),
                   ("table", *t)]
    t = _cpu_table(doc)
    if t:
        blocks += [("h", 2, "CPU per packet by thread (ns)"), ("table", *t)]
    skipped = doc.get("skipped") or []
    if skipped:
        blocks.append(("p", "Not run: " + "; ".join(f"{skipped_text(x)} ({x['why']})" for x in skipped)))

    blocks.append(("h", 2, "Where the time goes: predicted vs measured"))
    if costs_doc:
        if costs_note:
            blocks.append(("p", costs_note))
        oos = costs.out_of_sample_errors(preds)
        blocks.append(("p", "The model (vnetbe costs) multiplies each per-packet count by what one such crossing "
                            "costs on the machine that ran the bench, plus one frame stack term (the kernel's own "
                            "work on a frame, the peer's included) calibrated on the raw loop of the same scenario "
                            "at the other size: no prediction contains a measurement of what it predicts. What it "
                            "leaves out (the ring logic, cache misses between CPUs) is the error. vm2vm and rr are "
                            "outside the model."))
        if oos["n"]:
            blocks.append(("p", f"Out of sample: {oos['n']} predictions, median |error| {oos['median_abs']:.0%}, "
                                f"worst {oos['worst']:+.0%}; beyond ±{costs.TARGET_ERROR:.0%}: "
                                f"{', '.join(oos['beyond']) or 'none'}."))
        else:
            blocks.append(("p", "No out-of-sample prediction: every scenario ran at one size, so the frame stack "
                                "term could only come from the very configuration it predicts (shown, not scored)."))
        blocks.append(("table", *_prediction_table(preds)))
        blocks.append(("pre", "\n\n".join(costs.format_prediction(p) for p in preds)))
        blocks.append(("h", 2, "What crossings cost on that machine"))
        blocks.append(("pre", costs.format_costs(costs_doc)))
    else:
        blocks.append(("p", "No costs: run `vnetbe report` without --bench, or give --costs FILE."))

    blocks.append(("h", 2, "Charts"))
    if charts:
        for c in charts:
            blocks.append(("img", c.name, c.stem.replace("_", " ")))
    else:
        blocks.append(("p", chart_note or "No charts."))
    return blocks


# ---------------------------------------------------------------------------------------- rendering

def _md_cell(x: str) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: list[tuple]) -> str:
    out: list[str] = []
    for b in blocks:
        kind = b[0]
        if kind == "h":
            out.append("#" * b[1] + " " + b[2])
        elif kind == "p":
            out.append(b[1])
        elif kind == "list":
            out.append("\n".join(f"- {x}" for x in b[1]))
        elif kind == "table":
            head, rows = b[1], b[2]
            out.append("\n".join(["| " + " | ".join(_md_cell(h) for h in head) + " |",
                                  "|" + "|".join("---" for _ in head) + "|"]
                                 + ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]))
        elif kind == "pre":
            out.append("```\n" + b[1] + "\n```")
        elif kind == "img":
            out.append(f"![{b[2]}]({b[1]})")
    return "\n\n".join(out) + "\n"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.25em .5em;text-align:right}
th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}pre{background:#f7f7f7;padding:1em;overflow-x:auto;font-size:.85em}
img{max-width:100%;border:1px solid #ddd;margin:.5em 0}"""


def render_html(blocks: list[tuple]) -> str:
    e = html.escape
    out = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'><title>vnetbe report</title>",
           f"<style>{_CSS}</style></head><body>"]
    for b in blocks:
        kind = b[0]
        if kind == "h":
            out.append(f"<h{b[1]}>{e(b[2])}</h{b[1]}>")
        elif kind == "p":
            out.append(f"<p>{e(b[1])}</p>")
        elif kind == "list":
            out.append("<ul>" + "".join(f"<li>{e(x)}</li>" for x in b[1]) + "</ul>")
        elif kind == "table":
            out.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in b[1]) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in b[2])
                       + "</table>")
        elif kind == "pre":
            out.append(f"<pre>{e(b[1])}</pre>")
        elif kind == "img":
            out.append(f"<figure><img src='{e(b[1])}' alt='{e(b[2])}'><figcaption>{e(b[2])}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------- CLI



def _add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:

    p.add_argument("--bench", metavar="FILE", help="a `vnetbe bench --json` document (default: run the bench now)")
    p.add_argument("--costs", metavar="FILE", help="a `vnetbe costs --json` document (default: the one embedded in "
                   "the bench document, else measured here)")
    p.add_argument("--out", metavar="DIR", default="vnetbe-report", help="where to write (default ./vnetbe-report)")
    p.add_argument("--html", action="store_true", help="write report.html instead of report.md")
    g = p.add_argument_group("when running the bench (no --bench)")
    add_bench_arguments(g)
    p.set_defaults(func=main)
    return p


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``report`` subcommand on the main CLI's subparsers."""

    return subcommand(subparsers, "report", "write a Markdown/HTML report (tables, prediction vs measured, charts) of a bench + costs run",
                      __doc__, _add_arguments)


def main(args: argparse.Namespace) -> int:
    """Run the ``report`` subcommand. Returns the exit status."""

    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create {out}: {e.strerror or e}") from None
    if args.bench:
        doc = load_json(args.bench, "`vnetbe bench --json` output")
        if not isinstance(doc, dict) or not isinstance(doc.get("results"), list) or "start" not in doc:
            raise ConfigError(f"{args.bench} is not `vnetbe bench --json` output (no start/results)")
    else:
        doc = benchcli.bench(args, with_costs=args.costs is None)
    costs_note = None
    if args.costs:
        costs_doc = costs.load(args.costs)
    elif doc.get("costs"):
        costs_doc = doc["costs"]
    else:
        costs_doc = costs.measure(quick=True)
        if doc["start"].get("where", "host") != "host" or doc["start"].get("host") != costs_doc["host"]["hostname"]:
            costs_note = (f"The unit costs were measured on {costs_doc['host']['hostname']} (host), the bench ran "
                          f"{doc['start'].get('where')} on {doc['start'].get('host')}: the prediction mixes machines "
                          "and is only indicative.")
    benchcli.write_json({k: v for k, v in doc.items() if k != "costs"}, str(out / "bench.json"))
    benchcli.write_json(costs_doc, str(out / "costs.json"))

    preds = costs.predict_bench(doc, costs_doc)
    charts, chart_note = None, None
    try:
        from .plot import write_charts  # imports matplotlib only now
        charts = write_charts(doc, out, predictions=preds)
    except VnetError as e:
        chart_note = f"No charts: {e}."
    blocks = build(doc, costs_doc, preds, charts, chart_note, costs_note)
    path = out / ("report.html" if args.html else "report.md")
    try:
        path.write_text(render_html(blocks) if args.html else render_markdown(blocks))
    except OSError as e:
        raise ConfigError(f"cannot write {path}: {e.strerror or e}") from None
    print(path)
    if chart_note:
        print(f"vnetbe report: {chart_note}", file=sys.stderr)
    return 0


def _standalone(argv: list[str] | None = None) -> int:

    return standalone(_add_arguments, "report", __doc__, argv)


if __name__ == "__main__":
    sys.exit(_standalone())
