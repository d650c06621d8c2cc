"""A stopped device's state as a versioned, checksummed document (``VirtioNet.save`` / ``restore``).

What a VMM moves to restore the device elsewhere over the same guest memory (after a live migration
copied that memory): the negotiated features, MAC and MTU, the pairs, and for each virtqueue its size,
addresses, ring positions (last_avail_idx, used index) and state; the RX filters the driver set through
the control queue, and a pending announce. Not in it: fds (the restoring VMM has its own eventfds) and
the dirty log (the destination starts without one).

The document is JSON (a VMM stores or sends it as it likes) wrapped as {"format", "version", "body",
"sha256"}: the hash of the body's canonical form catches a corrupted copy. Reading it checks every field
(type and range) before anything uses it; the device then checks it against the memory and features it
is given (``check_memory``, ``check_rings``).
"""
from __future__ import annotations

import hashlib
import json

from . import spec
from .errors import SnapshotRefused

FORMAT = "vnetbe-virtio-net"
VERSION = 1
_U16, _U64 = (1 << 16) - 1, (1 << 64) - 1
_MAX_MULTICAST = 255      # the most entries one MAC_TABLE_SET table carries (vnb_ctrl.h)


def _canonical(body: dict) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def encode(body: dict) -> bytes:
    return json.dumps({"format": FORMAT, "version": VERSION, "body": body,
                       "sha256": hashlib.sha256(_canonical(body)).hexdigest()}, sort_keys=True).encode()


def _int(d: dict, key: str, lo: int, hi: int, where: str = "") -> int:
    v = d.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise SnapshotRefused(f"snapshot: {where}{key} = {v!r}: a whole number {lo} .. {hi} is needed")
    return v


def _bool(d: dict, key: str, where: str = "") -> bool:
    v = d.get(key)
    if not isinstance(v, bool):
        raise SnapshotRefused(f"snapshot: {where}{key} = {v!r}: true or false is needed")
    return v


def _mac(v, what: str) -> str:
    try:
        raw = bytes.fromhex(v.replace(":", "")) if isinstance(v, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != 6:
        raise SnapshotRefused(f"snapshot: {what} = {v!r}: a MAC address aa:bb:cc:dd:ee:ff is needed")
    return ":".join(f"{b:02x}" for b in raw)


def decode(data: bytes | str) -> dict:
    """The body of a snapshot, every field checked; SnapshotRefused says what is wrong."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise SnapshotRefused(f"snapshot: not a vnetbe snapshot (not JSON: {e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise SnapshotRefused(f"snapshot: format {got!r}, not {FORMAT!r}")
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise SnapshotRefused(f"snapshot: version {version!r} is not a version number")
    if version > VERSION:
        raise SnapshotRefused(f"snapshot: version {version} is newer than this vnetbe reads ({VERSION}): "
                              "restore it with the vnetbe that saved it, or a newer one")
    body = doc.get("body")
    if not isinstance(body, dict):
        raise SnapshotRefused("snapshot: no body")
    if doc.get("sha256") != hashlib.sha256(_canonical(body)).hexdigest():
        raise SnapshotRefused("snapshot: its sha256 does not match its body: the copy is corrupt")
    _check_body(body)
    return body


def _check_body(b: dict) -> None:
    pairs = _int(b, "max_queue_pairs", 1, spec.MAX_QUEUE_PAIRS)
    _int(b, "queue_pairs", 1, pairs)
    _int(b, "device_features", 0, _U64)
    feats = _int(b, "driver_features", 0, _U64)
    if feats & ~b["device_features"]:
        raise SnapshotRefused(f"snapshot: driver_features {feats:#x} has bits device_features "
                              f"{b['device_features']:#x} does not offer")
    b["mac"] = _mac(b.get("mac"), "mac")
    _int(b, "mtu", 68, 65535)
    _bool(b, "announce")
    mem = b.get("memory")
    if not isinstance(mem, list) or not mem or not all(isinstance(r, list) and len(r) == 2 for r in mem):
        raise SnapshotRefused(f"snapshot: memory = {mem!r}: a list of [gpa, size] regions is needed")
    for i, r in enumerate(mem):
        _int({"gpa": r[0], "size": r[1]}, "gpa", 0, _U64, f"memory[{i}].")
        _int({"size": r[1]}, "size", 1, _U64, f"memory[{i}].")
    queues = b.get("queues")
    if not isinstance(queues, list) or not all(isinstance(q, dict) for q in queues):
        raise SnapshotRefused(f"snapshot: queues = {queues!r}: a list of queues is needed")
    seen = set()
    for q in queues:
        where = f"queues[{q.get('index')!r}]."
        index = _int(q, "index", 0, 2 * pairs, where)
        if index in seen:
            raise SnapshotRefused(f"snapshot: queue {index} appears twice")
        seen.add(index)
        _int(q, "size", 1, spec.MAX_QUEUE_SIZE, where)
        for key in ("desc", "avail", "used"):
            _int(q, key, 0, _U64, where)
        _int(q, "last_avail_idx", 0, _U16, where)
        _int(q, "used_idx", 0, _U16, where)
        _bool(q, "polled", where)
        if not _bool(q, "enabled", where) and index % 2 == 0:
            raise SnapshotRefused(f"snapshot: queue {index} is an RX (or control) queue marked disabled: only "
                                  "a TX queue runs disabled (its frames discarded)")
    rx = b.get("rx_filters")
    if not isinstance(rx, dict) or not set(rx) <= {"promisc", "allmulti", "multicast", "mac"}:
        raise SnapshotRefused(f"snapshot: rx_filters = {rx!r}: promisc, allmulti, multicast, mac are known")
    for key in ("promisc", "allmulti"):
        if key in rx:
            _bool(rx, key, "rx_filters.")
    if "multicast" in rx:
        if not isinstance(rx["multicast"], list) or len(rx["multicast"]) > _MAX_MULTICAST:
            raise SnapshotRefused(f"snapshot: rx_filters.multicast: a list of at most {_MAX_MULTICAST} MACs")
        rx["multicast"] = [_mac(m, "rx_filters.multicast") for m in rx["multicast"]]
    if "mac" in rx:
        rx["mac"] = _mac(rx["mac"], "rx_filters.mac")


def check_memory(body: dict, mem) -> None:
    """The memory it is restored over has the snapshot's layout (region by region)."""
    have = [[r.gpa, r.size] for r in mem.regions]
    if sorted(have) != sorted(body["memory"]):
        def show(rs):
            return ", ".join(f"{g:#x}+{s:#x}" for g, s in sorted(rs))
        raise SnapshotRefused(f"snapshot: the guest memory does not match: the snapshot's regions are "
                              f"{show(body['memory'])}, this memory's {show(have)}")


def check_used_index(index: int, cfg, mem, packed: bool) -> None:
    """A split ring's used->idx in the memory is the device's used index the snapshot holds: else the
    memory is not the memory the device stopped over (or the guest wrote the device's part)."""
    if packed:
        return
    in_mem = int.from_bytes(mem.read(cfg.used + 2, 2), "little")
    if in_mem != cfg.used_idx:
        raise SnapshotRefused(f"snapshot: queue {index}: used->idx in guest memory is {in_mem}, the snapshot "
                              f"says {cfg.used_idx}: not the memory this device stopped over")
    if (cfg.last_avail_idx - cfg.used_idx) & _U16 > cfg.size:
        raise SnapshotRefused(f"snapshot: queue {index}: last_avail_idx {cfg.last_avail_idx} is more than the "
                              f"ring size {cfg.size} ahead of the used index {cfg.used_idx}")
