"""Both ends of one virtqueue, split or packed, over GuestMemory (vnetbe's driver and the device's ring code),
and a reference GPA translation computed from the Python region list, not the C table."""
from __future__ import annotations

import struct

from vnetbe.memory import GuestMemory
from vnetbe.tools._native import ffi, lib

PAGE = 4096
F_NEXT, F_WRITE, F_INDIRECT = 1, 2, 4


def split_gpa(mem: GuestMemory, gpa: int, length: int) -> list[tuple[int, int]] | None:
    """The host iovecs [(hva, len)] a correct translation gives for [gpa, gpa+length), None if any byte
    lies outside guest memory. Independent of the C code: walks the Python region list."""
    out = []
    while length:
        for r in mem.regions:
            if r.gpa <= gpa < r.gpa + r.size:
                n = min(length, r.gpa + r.size - gpa)
                out.append((r.hva + gpa - r.gpa, n))
                gpa += n
                length -= n
                break
        else:
            return None
    return out


def merge_iov(iov: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Coalesce host-contiguous neighbours, so two translations that cut at different places compare."""
    out: list[list[int]] = []
    for base, n in iov:
        if out and out[-1][0] + out[-1][1] == base:
            out[-1][1] += n
        else:
            out.append([base, n])
    return [tuple(x) for x in out]


def iov_inside(mem: GuestMemory, base: int, n: int) -> bool:
    return any(r.hva <= base and base + n <= r.hva + r.size for r in mem.regions)


def pack_desc(addr: int, length: int, flags: int = 0, nxt: int = 0) -> bytes:
    return struct.pack("<QIHH", addr & (2**64 - 1), length & 0xFFFFFFFF, flags & 0xFFFF, nxt & 0xFFFF)


def pack_packed_desc(addr: int, length: int, buf_id: int = 0, flags: int = 0) -> bytes:
    return struct.pack("<QIHH", addr & (2**64 - 1), length & 0xFFFFFFFF, buf_id & 0xFFFF, flags & 0xFFFF)


P_AVAIL, P_USED = 1 << 7, 1 << 15   # packed descriptor flags (VIRTIO 1.2 2.8.1)


class Ring:
    """One virtqueue with both ends: vnb_drv_vq (driver) and vnb_vq (device), over ``mem``. Packed, its
    ``avail`` and ``used`` are the driver's and the device's event suppression structures."""

    def __init__(self, mem: GuestMemory, num: int, *, event_idx: bool = False, indirect: bool = True,
                 table_slots: int = 0, table_entries: int = 16, packed: bool = False):
        self.mem, self.num, self.packed = mem, num, packed
        self.desc = mem.alloc(16 * num, 16)
        self.avail = mem.alloc(4 if packed else 6 + 2 * num, 4 if packed else 2)
        self.used = mem.alloc(4 if packed else 6 + 8 * num, 4)
        self.drv = ffi.new("struct vnb_drv_vq *")
        dflags = ((lib.VNB_F_EVENT_IDX if event_idx else 0) | (lib.VNB_F_INDIRECT if indirect else 0)
                  | (lib.VNB_F_PACKED if packed else 0))
        assert lib.vnb_drv_vq_init(self.drv, mem.table, num, self.desc, self.avail, self.used, dflags) == 0
        self.vq = ffi.new("struct vnb_vq *")
        vflags = dflags
        assert lib.vnb_vq_init(self.vq, mem.table, num, self.desc, self.avail, self.used, vflags) == 0
        self.chain = ffi.new("struct vnb_chain *")
        # Indirect tables live in guest memory until their chain comes back: one slot per token.
        self.table_entries = table_entries
        self.tables = mem.alloc(16 * table_entries * max(table_slots, 1), 16) if table_slots else None

    # --- ring fields as the other side sees them in guest memory ---
    def _u16(self, gpa: int) -> int:
        return struct.unpack("<H", self.mem.read(gpa, 2))[0]

    def _w16(self, gpa: int, v: int) -> None:
        self.mem.write(gpa, struct.pack("<H", v & 0xFFFF))

    avail_flags = property(lambda s: s._u16(s.avail), lambda s, v: s._w16(s.avail, v))
    avail_idx = property(lambda s: s._u16(s.avail + 2), lambda s, v: s._w16(s.avail + 2, v))
    used_flags = property(lambda s: s._u16(s.used), lambda s, v: s._w16(s.used, v))
    used_idx = property(lambda s: s._u16(s.used + 2), lambda s, v: s._w16(s.used + 2, v))
    used_event = property(lambda s: s._u16(s.avail + 4 + 2 * s.num), lambda s, v: s._w16(s.avail + 4 + 2 * s.num, v))
    avail_event = property(lambda s: s._u16(s.used + 4 + 8 * s.num), lambda s, v: s._w16(s.used + 4 + 8 * s.num, v))

    def avail_entry(self, i: int) -> int:
        return self._u16(self.avail + 4 + 2 * (i % self.num))

    def used_elem(self, i: int) -> tuple[int, int]:
        return struct.unpack("<II", self.mem.read(self.used + 4 + 8 * (i % self.num), 8))

    def write_desc(self, i: int, addr: int, length: int, flags: int = 0, nxt: int = 0) -> None:
        self.mem.write(self.desc + 16 * i, pack_desc(addr, length, flags, nxt))

    # --- packed: the descriptor ring and the event suppression structures ---
    def packed_desc(self, i: int) -> tuple[int, int, int, int]:
        """(addr, len, id, flags) of ring slot i."""
        return struct.unpack("<QIHH", self.mem.read(self.desc + 16 * (i % self.num), 16))

    def write_packed_desc(self, i: int, addr: int, length: int, buf_id: int, flags: int) -> None:
        self.mem.write(self.desc + 16 * i, pack_packed_desc(addr, length, buf_id, flags))

    driver_event = property(lambda s: struct.unpack("<HH", s.mem.read(s.avail, 4)),
                            lambda s, v: s.mem.write(s.avail, struct.pack("<HH", *v)))   # (off_wrap, flags)
    device_event = property(lambda s: struct.unpack("<HH", s.mem.read(s.used, 4)))

    def base(self) -> tuple[int, int]:
        """The device's (last_avail_idx, used_idx) as vnb_vq_get_base gives them (packed: | wrap << 15)."""
        a, u = ffi.new("uint16_t *"), ffi.new("uint16_t *")
        lib.vnb_vq_get_base(self.vq, a, u)
        return a[0], u[0]

    def set_base(self, idx: int) -> None:
        """Start both sides at ring position ``idx`` (as after a hand-over from another device)."""
        assert not self.packed, "a packed ring's position lives in its descriptors' flags"
        idx &= 0xFFFF
        self.avail_idx = idx
        self.used_idx = idx
        self.drv.avail_idx = idx
        self.drv.last_used_idx = idx
        lib.vnb_vq_set_base(self.vq, idx, idx)

    # --- driver ---
    def add(self, segs, *, indirect: bool = False, token: int = 0, slot: int | None = None) -> int:
        """segs: [(gpa, len, writable)]; an indirect chain's table goes in table slot ``slot``
        (default: the token). Returns the head, or the negative errno."""
        cs = ffi.new("struct vnb_seg[]", max(len(segs), 1))
        for k, (gpa, n, w) in enumerate(segs):
            cs[k].gpa, cs[k].len, cs[k].write = gpa, n, int(bool(w))
        if indirect:
            assert self.tables is not None and len(segs) <= self.table_entries
            tgpa = self.table_gpa(token if slot is None else slot)
            tptr = ffi.cast("void *", self.mem.hva(tgpa, 16 * self.table_entries))
        else:
            tgpa, tptr = 0, ffi.NULL
        return lib.vnb_drv_add(self.drv, cs, len(segs), tptr, tgpa, token)

    def table_gpa(self, slot: int) -> int:
        return self.tables + 16 * self.table_entries * slot

    def publish(self) -> None:
        lib.vnb_drv_publish(self.drv)

    def kick_prepare(self) -> bool:
        return bool(lib.vnb_drv_kick_prepare(self.drv))

    def get_used(self):
        ln, tok = ffi.new("uint32_t *"), ffi.new("uint32_t *")
        r = lib.vnb_drv_get_used(self.drv, ln, tok)
        if r < 0:
            return r
        return (ln[0], tok[0]) if r else None

    # --- device ---
    def pop(self):
        """(rc, chain): rc 1 with chain = dict(head, out=[(hva,len)], in_=[(hva,len)], ndesc), else (rc, None)."""
        r = lib.vnb_vq_pop(self.vq, self.chain)
        if r != 1:
            return r, None
        c = self.chain
        iov = [(int(ffi.cast("uintptr_t", c.iov[i].iov_base)), c.iov[i].iov_len) for i in range(c.nout + c.nin)]
        return 1, {"head": c.head, "out": iov[:c.nout], "in_": iov[c.nout:], "ndesc": c.ndesc,
                   "out_len": c.out_len, "in_len": c.in_len}

    def push_used(self, head: int, length: int = 0, flush: bool = True) -> None:
        lib.vnb_vq_add_used(self.vq, head, length)
        if flush:
            lib.vnb_vq_flush_used(self.vq)

    def should_notify(self) -> bool:
        return bool(lib.vnb_vq_should_notify(self.vq))

    def expected_iov(self, segs) -> tuple[list, list]:
        """What the device must pop for driver segments segs: readable and writable host iovecs."""
        out, in_ = [], []
        for gpa, n, w in segs:
            (in_ if w else out).extend(split_gpa(self.mem, gpa, n))
        return out, in_
