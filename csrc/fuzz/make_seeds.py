"""Write the seed corpus of the fuzz targets (csrc/fuzz/corpus/): a few well-formed and a few
hostile rings, so the fuzzer starts from inputs that reach deep into the walk. Run from the top:
python3 csrc/fuzz/make_seeds.py"""
from __future__ import annotations

import struct
from pathlib import Path

OUT = Path(__file__).resolve().parent / "corpus"
DESC, AVAIL, USED, BUF, TABLE = 0x0, 0x1000, 0x1400, 0x2000, 0x3000
NEXT, WRITE, INDIRECT = 1, 2, 4
RSIZE = 0x4000   # as fuzz_virtq.c


def desc(addr, length, flags=0, nxt=0):
    return struct.pack("<QIHH", addr, length, flags, nxt)


def ring_seed(num_log2, flags, descs, heads, avail_idx, extra=()):
    a = bytearray(RSIZE)
    for i, d in enumerate(descs):
        a[DESC + 16 * i:DESC + 16 * i + 16] = d
    struct.pack_into("<HH", a, AVAIL, 0, avail_idx)
    for i, h in enumerate(heads):
        struct.pack_into("<H", a, AVAIL + 4 + 2 * i, h)
    for gpa, blob in extra:
        a[gpa:gpa + len(blob)] = blob
    return bytes([num_log2, flags, 0, 0]) + bytes(a)


def virtq_seeds():
    ev_ind = 1 | 2
    yield "tx_hdr_and_frame", ring_seed(3, ev_ind, [desc(BUF, 12, NEXT, 1), desc(BUF + 64, 1500)], [0], 1)
    yield "rx_across_regions", ring_seed(3, ev_ind, [desc(RSIZE - 100, 2048, WRITE)], [0], 1)
    yield "indirect_table", ring_seed(3, ev_ind, [desc(TABLE, 48, INDIRECT)], [0], 1,
                                      [(TABLE, desc(BUF, 12, NEXT, 1) + desc(BUF + 64, 100, NEXT, 2)
                                        + desc(BUF + 512, 256, WRITE))])
    yield "several_chains", ring_seed(4, 1, [desc(BUF + 100 * i, 60) for i in range(8)], list(range(8)), 8)
    yield "loop", ring_seed(3, ev_ind, [desc(BUF, 12, NEXT, 1), desc(BUF, 12, NEXT, 0)], [0], 1)
    yield "indirect_with_next", ring_seed(3, ev_ind, [desc(TABLE, 16, INDIRECT | NEXT, 1), desc(BUF, 60)], [0], 1,
                                          [(TABLE, desc(BUF, 12))])
    yield "zero_length_chain", ring_seed(8, ev_ind, [desc(BUF, 0, NEXT, i + 1) for i in range(255)]
                                         + [desc(TABLE, 16 * 64, INDIRECT)], [0] * 4, 4,
                                         [(TABLE, b"".join(desc(BUF, 0, NEXT, k + 1) for k in range(63)) + desc(BUF, 0))])
    yield "writable_then_readable", ring_seed(3, ev_ind, [desc(BUF, 100, WRITE | NEXT, 1), desc(BUF + 200, 60)], [0], 1)
    yield "nested_indirect", ring_seed(3, ev_ind, [desc(TABLE, 32, INDIRECT)], [0], 1,
                                       [(TABLE, desc(BUF, 12, NEXT, 1) + desc(TABLE + 64, 16, INDIRECT))])
    yield "next_out_of_range", ring_seed(3, ev_ind, [desc(BUF, 12, NEXT, 9)], [0], 1)
    yield "avail_jump", ring_seed(3, ev_ind, [desc(BUF, 60)], [0], 9)


# fuzz_datapath.c: RX ring at 0x0/0x1000/0x1400, TX ring at 0x400/0x1100/0x1800.
RX_DESC, RX_AVAIL, TX_DESC, TX_AVAIL = 0x0, 0x1000, 0x400, 0x1100
EV, IND, MRG, LEGACY, URING = 1, 2, 4, 8, 16


def dp_seed(flags, script, rx=(), tx=(), rx_log2=3, tx_log2=3, rounds=1, extra=(), batch=1):
    """rx/tx: descriptors of one-descriptor chains (heads 0..n-1), all made available. batch: frames per
    io_uring submission, with URING in flags."""
    a = bytearray(RSIZE)
    for base_desc, base_avail, descs in ((RX_DESC, RX_AVAIL, rx), (TX_DESC, TX_AVAIL, tx)):
        for i, d in enumerate(descs):
            a[base_desc + 16 * i:base_desc + 16 * i + 16] = d
            struct.pack_into("<H", a, base_avail + 4 + 2 * i, i)
        struct.pack_into("<HH", a, base_avail, 0, len(descs))
    for gpa, blob in extra:
        a[gpa:gpa + len(blob)] = blob
    return bytes([rx_log2, tx_log2, flags, 0, 0, 0, 0, (rounds - 1) | (batch - 1) << 2, len(script)]) + bytes(script) + bytes(a)


def frames(*lengths):
    return b"".join(struct.pack(">H", n) for n in lengths)


def datapath_seeds():
    tx3 = [desc(BUF + 128 * i, 12 + 60) for i in range(3)]
    rx4 = [desc(BUF + 2048 * i, 2048, WRITE) for i in range(4)]
    yield "tx_three_frames", dp_seed(EV | IND, b"\0\0\0", tx=tx3)
    yield "tx_full_then_room", dp_seed(EV | IND, b"\0\1\0\0", tx=tx3, rounds=2)
    yield "tx_refused_and_gone", dp_seed(EV, b"\2\3\5", tx=tx3)
    yield "tx_split_chain", dp_seed(EV | IND, b"\0", extra=[(TX_DESC, desc(BUF, 12, NEXT, 1) + desc(RSIZE - 30, 60))],
                                     tx=[desc(BUF, 12, NEXT, 1)])
    yield "rx_three_frames", dp_seed(EV | IND, frames(72, 1514, 60), rx=rx4)
    yield "rx_mergeable", dp_seed(EV | IND | MRG, frames(1000, 300), rx=[desc(BUF + 256 * i, 256, WRITE) for i in range(8)],
                                  rounds=2)
    yield "rx_legacy_header", dp_seed(EV | LEGACY, frames(100), rx=rx4)
    # Found by the fuzzer (an oracle that forgot the chain a fault stops the queue on): kept.
    yield "tx_writable_fault", dp_seed(EV | IND | MRG, b"\0\xc8\0\0\0\x40", tx=[desc(BUF, 72, WRITE | 48)] + tx3[1:],
                                       rounds=3)
    yield "rx_and_tx", dp_seed(EV | IND | MRG, frames(200) + b"\0\0" + frames(64), rx=rx4, tx=tx3, rounds=3)
    # The io_uring mode: batches, a write refused mid-batch (the link cancels the rest), NOWAIT refused
    # (the reads then stay posted), frames left posted at the stop.
    yield "uring_tx_batch", dp_seed(EV | IND | URING, b"\0\0\0", tx=tx3, batch=2)
    yield "uring_tx_refused_mid_batch", dp_seed(EV | URING, b"\0\2\0\1\0", tx=tx3, rounds=2, batch=3)
    yield "uring_tx_nowait_refused", dp_seed(EV | URING, b"\6\0\0\0", tx=tx3, batch=3)
    yield "uring_rx_frames", dp_seed(EV | IND | MRG | URING, frames(72, 1514, 60), rx=rx4, batch=4)
    yield "uring_rx_nowait_refused", dp_seed(EV | MRG | URING, b"\xfe\0" + frames(100, 200), rx=rx4, rounds=2, batch=2)
    yield "uring_rx_mergeable", dp_seed(EV | IND | MRG | URING, frames(1000, 300),
                                        rx=[desc(BUF + 256 * i, 256, WRITE) for i in range(8)], rounds=2, batch=8)
    # The dirty log on: every byte written must have its page's bit.
    yield "log_rx_and_tx", dp_seed(EV | IND | MRG | LOG, frames(200) + b"\0\0" + frames(64), rx=rx4, tx=tx3, rounds=3)
    yield "log_uring_rx_mergeable", dp_seed(EV | IND | MRG | URING | LOG, frames(1000, 300),
                                            rx=[desc(BUF + 256 * i, 256, WRITE) for i in range(8)], rounds=2, batch=8)


P_AVAIL, P_USED = 1 << 7, 1 << 15
LOG = 64      # fuzz_datapath.c's flag: the memory has a dirty log
PACKED = 32   # fuzz_datapath.c's flag: both queues packed


def pdesc(addr, length, buf_id=0, flags=0, wrap=1):
    return struct.pack("<QIHH", addr, length, buf_id, flags | (P_AVAIL if wrap else P_USED))


def dp_packed_seed(flags, script, rx=(), tx=(), rx_num=8, tx_num=8, rounds=1, extra=(), batch=1):
    """fuzz_datapath.c with packed rings: rx/tx are packed descriptors written from slot 0; both
    queues start at slot 0 of the first lap (wrap counter 1)."""
    a = bytearray(RSIZE)
    for base_desc, descs in ((RX_DESC, rx), (TX_DESC, tx)):
        for i, d in enumerate(descs):
            a[base_desc + 16 * i:base_desc + 16 * i + 16] = d
    for gpa, blob in extra:
        a[gpa:gpa + len(blob)] = blob
    return (bytes([rx_num - 1, tx_num - 1, flags | PACKED, 0, 0x80, 0, 0x80, (rounds - 1) | (batch - 1) << 2,
                   len(script)]) + bytes(script) + bytes(a))


def datapath_packed_seeds():
    tx3 = [pdesc(BUF + 128 * i, 12 + 60, i) for i in range(3)]
    rx4 = [pdesc(BUF + 2048 * i, 2048, i, WRITE) for i in range(4)]
    yield "packed_tx_three_frames", dp_packed_seed(EV | IND, b"\0\0\0", tx=tx3)
    yield "packed_tx_chain", dp_packed_seed(EV | IND, b"\0", tx=[pdesc(BUF, 12, 0, NEXT), pdesc(BUF + 64, 60, 0)],
                                            tx_num=5)
    yield "packed_rx_frames", dp_packed_seed(EV | IND, frames(72, 1514, 60), rx=rx4, rx_num=5)
    yield "packed_log_rx_frames", dp_packed_seed(EV | IND | LOG, frames(72, 1514, 60), rx=rx4, rx_num=5)
    yield "packed_rx_mergeable", dp_packed_seed(EV | IND | MRG, frames(1000, 300),
                                                rx=[pdesc(BUF + 256 * i, 256, i, WRITE) for i in range(8)], rounds=2)
    yield "packed_uring_both", dp_packed_seed(EV | IND | MRG | URING, frames(200) + b"\0\0" + frames(64), rx=rx4,
                                              tx=tx3, rounds=3, batch=4)


def packed_seed(num, flags, descs, ops, extra=()):
    """fuzz_packed.c's input: queue size, flags, the op script, then region A (ring at 0, buffers above)."""
    a = bytearray(RSIZE)
    for i, d in enumerate(descs):
        a[16 * i:16 * i + 16] = d
    for gpa, blob in extra:
        a[gpa:gpa + len(blob)] = blob
    return bytes([num - 1, flags, len(ops)]) + bytes(ops) + bytes(a)


POP, UNPOP2, USE4, FLUSH, ENABLE, DISABLE = 0, 3 | 1 << 3, 4 | 3 << 3, 6, 7 | 8, 7


def packed_seeds():
    ev_ind = 1 | 2
    chains = [pdesc(BUF, 12, 0, NEXT), pdesc(BUF + 64, 1500, 0), pdesc(BUF + 2048, 2048, 1, WRITE),
              pdesc(TABLE, 32, 2, INDIRECT), pdesc(RSIZE - 100, 2048, 3, WRITE)]
    table = [(TABLE, pdesc(BUF, 12, 0, 0)[:14] + b"\0\0" + pdesc(BUF + 512, 256, 0, WRITE)[:14] + struct.pack("<H", WRITE))]
    script = [DISABLE, POP, POP, POP, UNPOP2, POP, USE4, FLUSH, ENABLE, POP, USE4, FLUSH]
    yield "chains_indirect_unpop", packed_seed(8, ev_ind, chains, script, table)
    yield "unpop_chain", packed_seed(8, ev_ind, [pdesc(BUF, 12, 0, NEXT), pdesc(BUF + 64, 60, 0), pdesc(BUF, 60, 1)],
                                     [POP, POP, UNPOP2, POP, 3, POP])
    yield "laps", packed_seed(3, 1, [pdesc(BUF + 64 * i, 60, i) for i in range(3)], [POP, USE4, FLUSH] * 8)
    yield "odd_size", packed_seed(5, 0, [pdesc(BUF, 60, i % 5) for i in range(5)], [POP] * 6 + [USE4, USE4, FLUSH])
    yield "wrong_wrap_mid_chain", packed_seed(8, ev_ind, [pdesc(BUF, 12, 0, NEXT), pdesc(BUF, 12, 0, 0, wrap=0)], [POP])
    yield "id_reused", packed_seed(8, ev_ind, [pdesc(BUF, 12, 5), pdesc(BUF, 12, 5)], [POP, POP])
    yield "nested_indirect", packed_seed(8, ev_ind, [pdesc(TABLE, 16, 0, INDIRECT)], [POP],
                                         [(TABLE, struct.pack("<QIHH", TABLE, 16, 0, INDIRECT))])


def ctrl_seed(commands, features=31, max_pairs=3, flags=1):
    """fuzz_ctrl.c: each command (bytes) a readable descriptor and a 1-byte writable ack after it."""
    descs, heads, at = [], [], BUF
    for k, body in enumerate(commands):
        descs += [desc(at, len(body), NEXT, 2 * k + 1), desc(TABLE + k, 1, WRITE)]
        heads.append(2 * k)
        at += len(body) + 8
    seed = bytearray(ring_seed(4, flags, descs, heads, len(commands)))
    seed[2], seed[3] = features, max_pairs - 1
    at = BUF
    for body in commands:
        seed[4 + at:4 + at + len(body)] = body
        at += len(body) + 8
    return bytes(seed)


def ctrl_seeds():
    pairs = lambda n: bytes([4, 0]) + struct.pack("<H", n)
    table = struct.pack("<I", 1) + bytes(6) + struct.pack("<I", 2) + bytes.fromhex("01005e000001333300000001")
    yield "pairs_and_rx", ctrl_seed([pairs(2), bytes([0, 0, 1]), bytes([0, 1, 0]), pairs(9)])
    yield "mac_commands", ctrl_seed([bytes([1, 0]) + table, bytes([1, 1]) + bytes.fromhex("020000aabbcc")])
    yield "unknown", ctrl_seed([bytes([9, 9]), bytes([3, 0]), bytes([2, 0, 1, 0]), bytes([4])])


def main():
    for target, seeds in (("virtq", virtq_seeds()), ("packed", packed_seeds()), ("datapath", datapath_seeds()),
                          ("datapath", datapath_packed_seeds()), ("ctrl", ctrl_seeds())):
        d = OUT / target
        d.mkdir(parents=True, exist_ok=True)
        for name, blob in seeds:
            (d / name).write_bytes(blob.rstrip(b"\0"))   # the targets pad guest memory with zeros


if __name__ == "__main__":
    main()
