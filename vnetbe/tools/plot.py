"""PNG charts of a ``vnetbe bench --json`` document (``vnetbe bench --plot DIR``, ``vnetbe report``).

matplotlib (a dependency) is imported only when a chart is drawn: the other commands start faster without it.

    throughput.png     kpps per scenario and size, one bar per path, min..max as error bars
    per_packet.png     system calls, kicks, interrupts, wake-ups per packet (log scale)
    cpu_per_packet.png CPU ns per packet, stacked by thread (datapath, vhost worker, guest, peer)
    rr_latency.png     request/response p50 and p99 (when the bench ran rr)
    prediction.png     predicted per-packet cost by term beside the measured one (report, with costs)
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from ..errors import VnetError
from .results import SCENARIOS, THROUGHPUT_SCENARIOS, label, opts_text, rows_in_order, varied_options

COLORS = {"raw": "#8c8c8c", "user": "#1f77b4", "vhost": "#ff7f0e"}
THREAD_COLORS = ["#1f77b4", "#aec7e8", "#ff7f0e", "#ffbb78", "#2ca02c", "#98df8a", "#9467bd", "#c5b0d5",
                 "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]
COUNTS = ("syscalls", "kicks", "interrupts", "wakeups")


def require():
    """matplotlib.pyplot with the Agg backend, or a one-line VnetError saying how to install it."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise VnetError("charts need matplotlib, which `pip install .` installs: run "
                        "`python3 -m pip install 'matplotlib>=3.7'`") from None
    return plt


def _label(r: dict) -> str:
    return label(r)


def _name(r: dict, varied: set[str]) -> str:
    o = opts_text(r, varied)   # "-" for raw rows: they carry none of the varied options
    return r["datapath"] + ("" if o == "-" else f" {o}")


def _rows(doc: dict, scenarios: tuple[str, ...]) -> list[dict]:
    return [r for r, _ in rows_in_order(doc, scenarios)]


def _title(doc: dict, what: str) -> str:
    s = doc["start"]
    return f"{what} — {s.get('where', 'host')}, kernel {s.get('kernel')}, {s.get('cpus')} cpus"


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)   # pyplot keeps every open figure alive otherwise
    return path


def _chart(plt, doc: dict, path: Path, items: list, figsize: tuple[float, float], what: str,
           draw: Callable[[Any, list], None]) -> Path | None:
    """A one-axes chart of ``items`` (result rows or predictions) into ``path``, None when there are none.

    ``draw(ax, items)`` plots and labels what is particular to the chart; the emptiness check, the title
    and the file are the same for all of them."""
    if not items:
        return None
    fig, ax = plt.subplots(figsize=figsize)
    draw(ax, items)
    ax.set_title(_title(doc, what), fontsize=10)
    return _save(plt, fig, path)


def _columns(ax, labels: list[str], fontsize: int, ylabel: str, legend_size: int) -> None:
    """The category axis of a vertical bar chart: one tick per item, bars centred on it."""
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=fontsize)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=legend_size)


def _throughput(plt, doc: dict, varied: set[str], path: Path) -> Path | None:
    scens = [sc for sc in THROUGHPUT_SCENARIOS if _rows(doc, (sc,))]
    if not scens:
        return None
    fig, axes = plt.subplots(1, len(scens), figsize=(5.5 * len(scens), 4.5), squeeze=False)
    for ax, sc in zip(axes[0], scens):
        rows = _rows(doc, (sc,))
        sizes = list(dict.fromkeys(_label(r) for r in rows))
        paths = list(dict.fromkeys(_name(r, varied) for r in rows))
        width = 0.8 / max(len(paths), 1)
        for j, p in enumerate(paths):
            xs, ys, lo, hi, colors = [], [], [], [], []
            for i, z in enumerate(sizes):
                for r in rows:
                    if _label(r) == z and _name(r, varied) == p:
                        xs.append(i + (j - (len(paths) - 1) / 2) * width)
                        ys.append(r["pps"] / 1e3)
                        lo.append((r["pps"] - r["pps_min"]) / 1e3)
                        hi.append((r["pps_max"] - r["pps"]) / 1e3)
                        colors.append(COLORS.get(r["datapath"], "#333333"))
            if xs:
                ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, color=colors, label=p,
                       edgecolor="black", linewidth=0.4, hatch="" if " " not in p else "//")
                for x, y, h in zip(xs, ys, hi):
                    ax.annotate(f"{y:.0f}", (x, y + h), ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(sizes)))
        ax.set_xticklabels([f"{z} B" if z != "64k" else "64k TSO" for z in sizes])
        ax.set_title(sc)
        ax.set_ylabel("k packets/s (median, min..max)")
        ax.legend(fontsize=8)
    fig.suptitle(_title(doc, "throughput"), fontsize=10)
    return _save(plt, fig, path)


def _per_packet(plt, doc: dict, varied: set[str], path: Path) -> Path | None:
    def draw(ax, rows):
        width = 0.8 / len(COUNTS)
        for k, key in enumerate(COUNTS):
            # Zero is drawn as no bar (a log axis has no zero); anything below 1e-4 sits on the floor.
            pts = [(i + (k - 1.5) * width, max(float(r["per_packet"].get(key, 0) or 0), 1e-4))
                   for i, r in enumerate(rows) if r["per_packet"].get(key)]
            ax.bar([x for x, _ in pts], [y for _, y in pts], width, label=key, color=THREAD_COLORS[2 * k])
        ax.set_yscale("log")
        ax.set_ylim(1e-4 / 2, None)
        ax.axhline(1 / 32, color="red", linewidth=0.8, linestyle="--", label="1/32 (EVENT_IDX target)")
        _columns(ax, [f"{_name(r, varied)}\n{r['scenario']} {_label(r)}" for r in rows], 7,
                 "per packet (rr: per round trip), log", 8)

    rows = _rows(doc, SCENARIOS)
    return _chart(plt, doc, path, rows, (max(6, 0.9 * len(rows) + 2), 4.5), "crossings per packet", draw)


def _cpu(plt, doc: dict, varied: set[str], path: Path) -> Path | None:
    def draw(ax, rows):
        threads = list(dict.fromkeys(t for r in rows for t in (r.get("cpu_ns_per_packet") or {})))
        labels = [f"{_name(r, varied)} {r['scenario']} {_label(r)}" for r in rows]
        left = [0.0] * len(rows)
        for k, t in enumerate(threads):
            vals = [float((r.get("cpu_ns_per_packet") or {}).get(t, 0)) for r in rows]
            ax.barh(range(len(rows)), vals, left=left, label=t, color=THREAD_COLORS[k % len(THREAD_COLORS)])
            left = [a + b for a, b in zip(left, vals)]
        for i, v in enumerate(left):
            ax.annotate(f"{v:.0f}", (v, i), va="center", fontsize=7, xytext=(3, 0), textcoords="offset points")
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels(labels, fontsize=7)
        ax.invert_yaxis()
        positive = [v for v in left if v > 0]
        if positive and max(positive) / min(positive) > 50:   # 64k super-frames beside 64-byte frames
            ax.set_xscale("log")
        ax.set_xlabel("CPU ns per packet (rr: per round trip), all threads")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))

    rows = _rows(doc, SCENARIOS)
    return _chart(plt, doc, path, rows, (10.5, max(3, 0.35 * len(rows) + 1.5)), "where the CPU goes", draw)


def _rr(plt, doc: dict, varied: set[str], path: Path) -> Path | None:
    def draw(ax, rows):
        xs = range(len(rows))
        p50 = [r.get("p50_us", 0) for r in rows]
        p99 = [r.get("p99_us", 0) for r in rows]
        ax.bar([x - 0.2 for x in xs], p50, 0.4, label="p50",
               color=[COLORS.get(r["datapath"], "#333") for r in rows], edgecolor="black", linewidth=0.4)
        ax.bar([x + 0.2 for x in xs], p99, 0.4, label="p99", color="white", edgecolor="black", hatch="//")
        for x, a, b in zip(xs, p50, p99):
            ax.annotate(f"{a:.0f}", (x - 0.2, a), ha="center", va="bottom", fontsize=7)
            ax.annotate(f"{b:.0f}", (x + 0.2, b), ha="center", va="bottom", fontsize=7)
        _columns(ax, [f"{_name(r, varied)}\n{_label(r)} B" for r in rows], 8, "round trip µs", 8)

    rows = _rows(doc, ("rr",))
    return _chart(plt, doc, path, rows, (max(5, 1.2 * len(rows) + 2), 4.5), "request/response latency", draw)


def _prediction(plt, preds: list[dict], doc: dict, path: Path) -> Path | None:
    def draw(ax, preds):
        terms = list(dict.fromkeys(t["term"] for p in preds for t in p["rows"]))
        bottom = [0.0] * len(preds)
        for k, term in enumerate(terms):
            vals = [sum(t["ns"] for t in p["rows"] if t["term"] == term) for p in preds]
            ax.bar(range(len(preds)), vals, 0.6, bottom=bottom, label=term,
                   color=THREAD_COLORS[k % len(THREAD_COLORS)])
            bottom = [a + b for a, b in zip(bottom, vals)]
        meas = [p.get("measured_ns") or 0 for p in preds]
        ax.scatter(range(len(preds)), meas, marker="D", color="black", zorder=3, label="measured")
        _columns(ax, [f"{p['datapath']}\n{p['scenario']} {_label(p)}"
                      for p in preds], 7, "CPU ns per packet", 7)

    return _chart(plt, doc, path, preds, (max(6, 1.0 * len(preds) + 2), 4.8),
                  "predicted (bars) vs measured (diamonds)", draw)


def write_charts(doc: dict, out_dir: str | os.PathLike, predictions: list[dict] | None = None) -> list[Path]:
    """Draw every chart that the document has data for into ``out_dir`` (created); returns the files."""

    plt = require()
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VnetError(f"cannot create the chart directory {out}: {e.strerror or e}") from None
    varied = varied_options(doc)
    made = [_throughput(plt, doc, varied, out / "throughput.png"),
            _per_packet(plt, doc, varied, out / "per_packet.png"),
            _cpu(plt, doc, varied, out / "cpu_per_packet.png"),
            _rr(plt, doc, varied, out / "rr_latency.png")]
    if predictions:
        made.append(_prediction(plt, predictions, doc, out / "prediction.png"))
    return [p for p in made if p is not None]
