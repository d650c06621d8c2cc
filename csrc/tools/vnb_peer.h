/* The test/benchmark peer: sequence-tagged frames at line rate over AF_PACKET, and raw tap loops.
 *
 * This is not part of the device: it is the far end that end-to-end tests and benchmarks talk to.
 * The tagged-frame byte layout is defined in vnetbe/tools/packet.py (module docstring) and must stay
 * identical here; tests/unit/test_packet.py compares vnb_peer_fill_tagged with packet.tagged_frame.
 *
 * Return convention: counts are >= 0; a failure before anything was done is -errno.  When an error
 * stops a loop part way, the count so far is returned and the errno is left in the stats' `err`. */
#ifndef VNB_PEER_H
#define VNB_PEER_H
#include <stdint.h>

/* cffi:begin */
#define VNB_TAG_ETHERTYPE 0x88B5
#define VNB_TAG_HDR_LEN 22
#define VNB_TAG_MAX_SIZE 262144
#define VNB_PEER_SEQ_WINDOW 65536

struct vnb_peer_tx_stats {
    uint64_t sent;          /* frames the kernel accepted */
    uint64_t bytes;
    uint64_t retries;       /* ENOBUFS / EAGAIN waits */
    uint64_t syscalls;      /* sendmmsg calls (sent / syscalls = achieved batch) */
    int64_t elapsed_ns;     /* first send to last, CLOCK_MONOTONIC */
    int32_t err;            /* errno that stopped the loop early, 0 if none */
    uint32_t next_seq;      /* seq of the first frame not sent */
};

struct vnb_peer_rx_stats {
    /* Cumulative: zero the struct before the first call; a later call continues the accounting. */
    uint64_t received;      /* tagged frames of the wanted flow, good or bad */
    uint64_t bad;           /* payload does not match (seq, size): damaged, cut, padded */
    uint64_t out_of_order;  /* good, seq below the highest seen, not seen before */
    uint64_t duplicates;    /* good, seq seen before (within the last VNB_PEER_SEQ_WINDOW) */
    uint64_t missing;       /* seqs jumped over by a forward jump and not seen since */
    uint64_t ignored;       /* untagged frames and frames of other flows */
    uint64_t bytes;         /* frame bytes of `received` */
    uint64_t truncated;     /* frames longer than the receive buffer (also counted bad) */
    uint32_t first_seq;     /* of the first good frame */
    uint32_t last_seq;      /* of the most recent good frame */
    uint32_t max_seq;       /* highest good seq (serial-number order, wrap-aware) */
    uint32_t seen_any;      /* 1 once a good frame arrived: the three fields above are valid */
    int64_t t_first_ns;     /* CLOCK_MONOTONIC when the first wanted frame was processed */
    int64_t t_last_ns;      /* ... and the last */
    uint64_t tp_packets;    /* PACKET_STATISTICS read at the end of each call, summed; the kernel */
    uint64_t tp_drops;      /*   resets them on every read, so they cover the time since the last */
    uint64_t tp_freeze_q_cnt; /* read by anyone on this socket (Peer.flush/stats included) */
    uint64_t seen[1024];    /* bitmap of the last VNB_PEER_SEQ_WINDOW seqs, indexed by seq % window */
};

struct vnb_raw_stats {
    uint64_t done;          /* successful write()s / read()s */
    uint64_t bytes;
    uint64_t eagain;        /* EAGAIN retries (each waits in poll) */
    int64_t elapsed_ns;
    int32_t err;
    uint32_t pad;
};

struct vnb_peer_ring;

/* Builds tagged frame (seq, size) into buf[0..size); size must be >= VNB_TAG_HDR_LEN. */
void vnb_peer_fill_tagged(uint8_t *buf, const uint8_t *dst_mac, const uint8_t *src_mac,
                          uint32_t flow, uint32_t seq, uint32_t size);
/* 1: tagged and every byte right; 0: tagged, payload wrong; -1: not a tagged frame. */
int vnb_peer_check_tagged(const uint8_t *frame, uint32_t len, uint32_t *seq, uint32_t *flow);

/* Sends frames first_seq .. first_seq+count-1 on a bound AF_PACKET socket, in sendmmsg batches.
 * pace_ns > 0 spaces frames that far apart on average (frames that are due go out as one batch).
 * st may be NULL.  Returns frames sent, or -errno if none could be. */
int64_t vnb_peer_send_tagged(int fd, const uint8_t *dst_mac, const uint8_t *src_mac, uint32_t flow,
                             uint32_t first_seq, uint64_t count, uint32_t size, uint32_t pace_ns,
                             struct vnb_peer_tx_stats *st);

/* Receives with recvmmsg on a plain AF_PACKET socket until `expect` wanted frames arrived in this
 * call (0 = no limit) or timeout_ms passed without one.  Returns wanted frames this call, or -errno. */
int64_t vnb_peer_recv_tagged(int fd, struct vnb_peer_rx_stats *st, uint64_t expect, int timeout_ms,
                             uint32_t flow);

/* TPACKET_V3 receive ring on `fd`.  Set it up before bind(): once the socket runs, installing the
 * ring unhooks it for a moment and frames in flight are lost without being counted.
 * block_size: a power-of-two multiple of the page size, larger than the largest frame;
 * retire_ms: how long a partly filled block may wait before the kernel hands it over (latency).
 * Returns NULL with *err = errno on failure. */
struct vnb_peer_ring *vnb_peer_ring_open(int fd, uint32_t block_size, uint32_t nblocks,
                                         uint32_t retire_ms, int *err);
void vnb_peer_ring_close(struct vnb_peer_ring *r);
/* One frame copied into buf (at most cap bytes).  Returns its full length (may exceed cap),
 * 0 on timeout, -errno on error. */
int vnb_peer_ring_recv(struct vnb_peer_ring *r, uint8_t *buf, uint32_t cap, int timeout_ms);
/* Frames thrown away until the ring is empty. */
int64_t vnb_peer_ring_flush(struct vnb_peer_ring *r);
/* As vnb_peer_recv_tagged, from the ring. */
int64_t vnb_peer_ring_recv_tagged(struct vnb_peer_ring *r, struct vnb_peer_rx_stats *st,
                                  uint64_t expect, int timeout_ms, uint32_t flow);

/* PACKET_STATISTICS since the last read (the read resets them).  Any pointer may be NULL. */
int vnb_peer_sock_stats(int fd, uint64_t *packets, uint64_t *drops, uint64_t *freeze_q_cnt);

/* Baselines: write() the same buffer `count` times to a tap/macvtap fd (the buffer carries the
 * vnet header the fd expects), or poll()+read() `count` frames (timeout_ms: idle limit).
 * Return successful calls, or -errno if none.  The _ex forms also fill st (may be NULL). */
int64_t vnb_raw_write_loop(int fd, const uint8_t *buf, uint32_t len, uint64_t count);
int64_t vnb_raw_read_loop(int fd, uint8_t *buf, uint32_t cap, uint64_t count, int timeout_ms);
int64_t vnb_raw_write_loop_ex(int fd, const uint8_t *buf, uint32_t len, uint64_t count,
                              struct vnb_raw_stats *st);
int64_t vnb_raw_read_loop_ex(int fd, uint8_t *buf, uint32_t cap, uint64_t count, int timeout_ms,
                             struct vnb_raw_stats *st);
/* As vnb_raw_write_loop_ex, each write a fresh tagged frame first_seq + n of `size` bytes after
 * hdr_len bytes of vnet header (buf: hdr_len + size bytes, the header filled in by the caller). */
int64_t vnb_raw_write_tagged_ex(int fd, uint8_t *buf, uint32_t hdr_len, const uint8_t *dst_mac,
                                const uint8_t *src_mac, uint32_t size, uint32_t first_seq, uint64_t count,
                                struct vnb_raw_stats *st);
/* Request/response, all in C so that the figure is the path's and not an interpreter's. */
struct vnb_rr_stats {
    uint64_t done;          /* round trips completed (client) / requests answered (responder) */
    uint64_t syscalls;
    int32_t err;            /* errno that stopped the loop early, 0 if none */
    uint32_t pad;
};

/* Client on a socket (AF_PACKET, or a socketpair standing in for a tap): for i in 0..count-1 sends
 * `req` (len bytes, starting with hdr_len bytes of vnet header; 0 on AF_PACKET) with i big-endian at tag_off, waits for a frame with
 * the tag ethertype and the same 4 bytes there, and stores the round trip in rtt_ns[i].
 * Returns round trips done; stops early (st->err) on an error or timeout_ms without the reply. */
int64_t vnb_peer_rr(int fd, const uint8_t *req, uint32_t len, uint32_t hdr_len, uint32_t tag_off,
                    uint64_t count, int timeout_ms, int64_t *rtt_ns, struct vnb_rr_stats *st);
/* Responder on a tap fd: answers each tagged frame with `reply` (hdr_len bytes of vnet header
 * included) carrying the request's tag, until `count` answers, *stop, or timeout_ms idle. */
int64_t vnb_raw_echo(int fd, const uint8_t *reply, uint32_t len, uint32_t hdr_len, uint32_t tag_off,
                     uint64_t count, int timeout_ms, const int *stop, struct vnb_rr_stats *st);
/* cffi:end */

/* Not for Python. rr: 1 if f (n bytes: hdr_len bytes of vnet header, then the frame) is a tagged
 * frame long enough to hold a 4-byte tag at tag_off (callers check tag_off against their buffers). */
static inline int vnb_tagged_at(const uint8_t *f, int64_t n, uint32_t hdr_len, uint32_t tag_off)
{
    return n >= (int64_t)tag_off + 4 && n >= (int64_t)hdr_len + 14 &&
           f[hdr_len + 12] == (VNB_TAG_ETHERTYPE >> 8) && f[hdr_len + 13] == (VNB_TAG_ETHERTYPE & 0xff);
}

#endif
