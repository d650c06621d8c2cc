"""The bench's vocabulary, shared by the scenarios, the CLI table, the report and the charts, and free
of the C library: scenario names, frame sizes and their labels, result ordering, option texts, the
one percentile definition."""
from __future__ import annotations

from ..errors import ConfigError
from . import packet
from .noise import compare

# Every scenario in table order, and those measured in frames per second (rr measures round trips).
SCENARIOS = ("tx", "rx", "rxsat", "vm2vm", "rr")
THROUGHPUT_SCENARIOS = SCENARIOS[:-1]
RINGS = ("split", "packed")   # virtqueue formats (VIRTIO 1.2 §2.7 and §2.8)
TSO_LABEL = "64k"
MIN_SIZE = packet.TAG_HDR_LEN + 4   # a tagged frame whose sequence number is covered by its payload
MAX_SIZE = 9000 + packet.ETH_HLEN


def parse_size(text: str | int) -> int | str:
    """``"64"`` -> 64, ``"64k"`` (or ``"tso"``) -> ``TSO_LABEL``; ConfigError outside MIN..MAX_SIZE."""
    t = str(text).strip().lower()
    if t in ("64k", "64kib", "tso"):
        return TSO_LABEL
    try:
        n = int(t)
    except ValueError:
        raise ConfigError(f"frame size {text!r}: give bytes ({MIN_SIZE}..{MAX_SIZE}) or 64k") from None
    if not MIN_SIZE <= n <= MAX_SIZE:
        raise ConfigError(f"frame size {n}: choose {MIN_SIZE}..{MAX_SIZE} bytes (MTU 9000), or 64k for TSO")
    return n


def size_label(result) -> str:
    """"64", "1500", or "64k" for a TSO result (``options["tso"]``): a result dict or a RunResult."""
    return label(result if isinstance(result, dict) else result.as_dict())


def supported(scenario: str, size: int | str) -> bool:
    """False for the combinations no scenario can run: 64k TSO needs the guest as sender."""
    return not (size == TSO_LABEL and scenario in ("rx", "rxsat", "rr"))


def label(r: dict) -> str:
    """A result's size as shown: bytes, or 64k for TSO super-frames."""
    return r.get("size_label") or (TSO_LABEL if (r.get("options") or {}).get("tso") else str(r["size"]))


def _size_key(r: dict) -> tuple:
    return (r["size"], label(r))


def opts_text(r: dict, varied: set[str]) -> str:
    o = r.get("options") or {}
    parts = []
    if "queue_size" in varied and "queue_size" in o:
        parts.append(f"q{o['queue_size']}")
    if "event_idx" in varied and "event_idx" in o:
        parts.append("eidx" if o["event_idx"] else "no-eidx")
    if "ring" in varied and "ring" in o:
        parts.append(o["ring"])
    if o.get("busyloop_us"):
        parts.append(f"busy{o['busyloop_us']}")
    if r.get("datapath") != "raw" and ("queues" in varied or o.get("queues", 1) > 1):
        parts.append(f"{pairs_of(r)}qp")
    if o.get("dirty_log"):
        parts.append("log")
    return " ".join(parts) or "-"


def skipped_text(sk: dict) -> str:
    """What a skipped entry of the bench document left out, in words."""
    return sk.get("what") or f"{sk['scenario']} at {sk['size']}"


def ring_of(r: dict) -> str:
    """"split" or "packed": the ring format of a result (documents from before the option: split)."""
    return (r.get("options") or {}).get("ring") or "split"


def log_of(r: dict) -> bool:
    """Whether the device logged its writes in a dirty log during the run (results without it: no)."""
    return bool((r.get("options") or {}).get("dirty_log"))


def pairs_of(r: dict) -> int:
    """The queue pairs a result ran on (results without the option: 1)."""
    return (r.get("options") or {}).get("queues") or 1


def varied_options(doc: dict) -> set[str]:
    out = set()
    for k in ("queue_size", "event_idx", "busyloop_us"):
        vals = {(r.get("options") or {}).get(k) for r in doc["results"]}
        if len(vals) > 1:
            out.add(k)
    if len({ring_of(r) for r in doc["results"]}) > 1:
        out.add("ring")
    if len({pairs_of(r) for r in doc["results"]}) > 1:
        out.add("queues")
    if len({log_of(r) for r in doc["results"]}) > 1:
        out.add("dirty_log")
    return out


_ORDER = {"raw": 0, "user": 1, "uring": 2, "uring-sqpoll": 3, "vhost": 4}


def rows_in_order(doc: dict, scenarios: tuple[str, ...]) -> list[tuple[dict, dict | None]]:
    """(result, its baseline or None) for the given scenarios: by scenario, size, then raw/user/vhost."""
    scen_order = {s: i for i, s in enumerate(doc["start"].get("scenarios") or SCENARIOS)}
    base = {(b["scenario"], _size_key(b)): b for b in doc.get("baseline") or []}
    rows = [r for r in list(doc.get("baseline") or []) + list(doc["results"]) if r["scenario"] in scenarios]
    rows.sort(key=lambda r: (scen_order.get(r["scenario"], 9), _size_key(r), _ORDER.get(r["datapath"], 9)))
    return [(r, None if r["datapath"] == "raw" else base.get((r["scenario"], _size_key(r)))) for r in rows]


def nearest_rank(sorted_xs: list[int], p: float) -> float:
    """Nearest-rank percentile of an already sorted list: the bench's rr latencies and the wake-up
    round trips here use this one definition, so the rr target compares like with like."""
    k = max(0, min(len(sorted_xs) - 1, int(-(-p * len(sorted_xs) // 100)) - 1))
    return float(sorted_xs[k])


def has_baseline(scenario: str) -> bool:
    return scenario in ("tx", "rx", "rxsat", "rr")


# Which pairs a table compares: (path, reference). Each device path against the raw loop of its
# scenario and size, each against user with the same options, and uring against vhost.
PAIRS = (("user", "raw"), ("uring", "raw"), ("uring-sqpoll", "raw"), ("vhost", "raw"),
         ("uring", "user"), ("uring-sqpoll", "user"), ("vhost", "user"), ("uring", "vhost"), ("uring-sqpoll", "vhost"))


def _variant(r: dict, ring: bool = True, pairs: bool = True, log: bool = True) -> tuple:
    o = r.get("options") or {}
    return (tuple(o.get(k) for k in ("queue_size", "event_idx", "busyloop_us")) + ((ring_of(r),) if ring else ())
            + ((pairs_of(r),) if pairs else ()) + ((log_of(r),) if log else ()))


def _against(r: dict, rows: list[dict], reference: str, is_reference, **ignore) -> list[dict]:
    """``r`` compared with the rows of its datapath, scenario and size that ``is_reference`` picks and
    that have its options but those ``ignore`` names (see _variant)."""
    return [{"scenario": r["scenario"], "size": label(r), "path": r["datapath"], "reference": reference,
             "options": r.get("options") or {}, **compare(r["pps_runs"], ref["pps_runs"])}
            for ref in rows
            if (ref["datapath"] == r["datapath"] and ref["scenario"] == r["scenario"] and _size_key(ref) == _size_key(r)
                and is_reference(ref) and _variant(ref, **ignore) == _variant(r, **ignore) and "pps_runs" in ref)]


def comparisons(doc: dict) -> list[dict]:
    """Every pair of PAIRS the document holds, compared over the repeats' pps (rr: p50 latency is
    not compared here): ratio of medians, overlap, exact p, separated (see vnetbe.tools.noise)."""
    rows = list(doc.get("baseline") or []) + list(doc.get("results") or [])
    out = []
    for r in rows:
        if r["scenario"] not in THROUGHPUT_SCENARIOS or "pps_runs" not in r:
            continue
        for a, b in PAIRS:
            if r["datapath"] != a:
                continue
            for ref in rows:
                if (ref["datapath"] == b and ref["scenario"] == r["scenario"] and _size_key(ref) == _size_key(r)
                        and (b == "raw" or _variant(ref) == _variant(r)) and "pps_runs" in ref):
                    c = compare(r["pps_runs"], ref["pps_runs"])
                    out.append({"scenario": r["scenario"], "size": label(r), "path": a, "reference": b,
                                "options": r.get("options") or {}, **c})
        # Against the same datapath with only one option changed: a packed row against split, several
        # queue pairs against one, a run with the dirty log against one without.
        if ring_of(r) == "packed":
            out += _against(r, rows, "split", lambda ref: ring_of(ref) == "split", ring=False)
        if pairs_of(r) > 1:
            out += _against(r, rows, "1 pair", lambda ref: pairs_of(ref) == 1, pairs=False)
        if log_of(r):
            out += _against(r, rows, "log off", lambda ref: not log_of(ref), log=False)
    return out


def comparison_for(comps: list[dict], r: dict, reference: str) -> dict | None:
    for c in comps:
        if (c["path"] == r["datapath"] and c["reference"] == reference and c["scenario"] == r["scenario"]
                and c["size"] == label(r) and _variant({"options": c["options"]}) == _variant(r)):
            return c
    return None


def loss_text(r: dict) -> str:
    """Where the frames that did not arrive went, by reason: "" when every one arrived."""
    d = r.get("drops") or {}
    return ", ".join(f"{k} {v}" for k, v in d.items() if v)
