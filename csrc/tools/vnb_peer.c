/* The test/benchmark peer: tagged frames over AF_PACKET and raw tap loops (see vnb_peer.h).
 *
 * Nothing here is on the device's datapath.  The aim is a far end that is clearly faster than what
 * it measures, and that checks every byte it receives, so that a benchmark's number is the
 * device's and a test's "all frames arrived intact and in order" means exactly that. */
#include "vnb_peer.h"
#include "vnb_time.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define TX_BATCH 64
#define RX_BATCH 32
/* Largest frame the recvmmsg receiver takes whole: a 64 KiB GSO/GRO frame plus headers. */
#define RX_CAP (65536 + 512)
/* A send or write that makes no progress for this long is reported rather than retried forever:
 * a link that is down or a queue nobody drains would otherwise hang the test. */
#define STALL_NS 2000000000LL
/* How long a sender backs off after ENOBUFS: long enough for a softirq to drain a queue, short
 * compared with the time a batch takes at line rate. */
#define NOBUFS_WAIT_NS 20000

_Static_assert(VNB_PEER_SEQ_WINDOW == 1024 * 64, "seen[] holds one bit per seq of the window");

#if defined(__x86_64__) || defined(__i386__)
#define cpu_relax() __builtin_ia32_pause()
#else
#define cpu_relax() __asm__ __volatile__("" ::: "memory")
#endif

static void sleep_ns(int64_t ns)
{
    struct timespec ts = { .tv_sec = ns / 1000000000LL, .tv_nsec = ns % 1000000000LL };
    /* An early wake-up (EINTR) only shortens a back-off; the caller retries either way. */
    nanosleep(&ts, NULL);
}

/* Waits for an absolute CLOCK_MONOTONIC time: sleeps for most of it, spins for the last stretch,
 * because a sleep alone overshoots by tens of microseconds and pacing wants better than that. */
static void wait_until(int64_t t)
{
    for (;;) {
        int64_t d = t - vnb_now_ns();
        if (d <= 0)
            return;
        if (d > 150000) {
            struct timespec ts;
            int64_t wake = t - 80000;
            ts.tv_sec = wake / 1000000000LL;
            ts.tv_nsec = wake % 1000000000LL;
            /* EINTR just brings the next loop round sooner. */
            clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
        } else {
            cpu_relax();
        }
    }
}

/* n messages of one buffer each, the k-th at buf + k * each: the layout sendmmsg/recvmmsg take. */
static void mmsg_setup(struct mmsghdr *msgs, struct iovec *iov, uint8_t *buf, uint32_t n, size_t each)
{
    memset(msgs, 0, sizeof(*msgs) * n);
    for (uint32_t k = 0; k < n; k++) {
        iov[k].iov_base = buf + (size_t)k * each;
        iov[k].iov_len = each;
        msgs[k].msg_hdr.msg_iov = &iov[k];
        msgs[k].msg_hdr.msg_iovlen = 1;
    }
}

static int poll_one(int fd, short events, int timeout_ms)
{
    struct pollfd p = { .fd = fd, .events = events };
    int n = poll(&p, 1, timeout_ms);
    if (n < 0)
        return errno == EINTR ? 0 : -errno;
    if (n > 0 && (p.revents & POLLNVAL))
        return -EBADF;
    if (n > 0 && (p.revents & POLLERR)) {
        /* A pending socket error (a packet socket whose device went away) would make every poll
         * return at once; reading SO_ERROR reports and clears it.  Not a socket: say EIO. */
        int e = 0;
        socklen_t len = sizeof(e);
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &len) < 0)
            return -EIO;
        if (e)
            return -e;
    }
    return n;
}

static int ms_left(int64_t deadline)
{
    int64_t d = deadline - vnb_now_ns();
    if (d <= 0)
        return 0;
    d = (d + 999999) / 1000000;
    return d > 1000000 ? 1000000 : (int)d;
}

/* ---------------------------------------------------------------------------------------------
 * the tagged-frame format: must match vnetbe/packet.py byte for byte */

static inline uint32_t mix32(uint32_t x)
{
    x ^= x >> 16;
    x *= 0x85ebca6bu;
    x ^= x >> 13;
    x *= 0xc2b2ae35u;
    x ^= x >> 16;
    return x;
}

static inline void tag_params(uint32_t seq, uint32_t size, uint32_t *base, uint32_t *step)
{
    *base = mix32(seq ^ (size * 0x9E3779B1u));
    *step = mix32(*base ^ 0x6A09E667u) | 1u;
}

static inline void put_be32(uint8_t *p, uint32_t v)
{
    uint32_t be = htobe32(v);
    memcpy(p, &be, 4);
}

static inline uint32_t get_be32(const uint8_t *p)
{
    uint32_t be;
    memcpy(&be, p, 4);
    return be32toh(be);
}

/* The payload loops run at memory speed only if they are vectorised, and gcc -O2 does not do it by
 * itself here (the per-lane multiply defeats its cheap cost model).  Generic vector extensions
 * (gcc, clang) say it directly, without tying the code to one instruction set; a little-endian host
 * is needed because the words are stored as they sit in the register. */
#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define VNB_PEER_VEC 1
typedef uint32_t v4u32 __attribute__((vector_size(16)));
#endif

static void fill_payload(uint8_t *p, uint32_t n, uint32_t seq, uint32_t size)
{
    uint32_t base, step, nw = n / 4, j = 0;
    tag_params(seq, size, &base, &step);
#ifdef VNB_PEER_VEC
    {
        v4u32 e = { base, base + step, base + 2 * step, base + 3 * step };
        v4u32 inc = { 4 * step, 4 * step, 4 * step, 4 * step };
        for (; j + 4 <= nw; j += 4) {
            memcpy(p + 4 * (size_t)j, &e, 16);
            e += inc;
        }
    }
#endif
    for (; j < nw; j++) {
        uint32_t w = htole32(base + j * step);
        memcpy(p + 4 * (size_t)j, &w, 4);
    }
    if (n & 3) {
        uint32_t w = htole32(base + nw * step);
        memcpy(p + 4 * (size_t)nw, &w, n & 3);
    }
}

static int payload_ok(const uint8_t *p, uint32_t n, uint32_t seq, uint32_t size)
{
    uint32_t base, step, nw = n / 4, j = 0, diff = 0;
    tag_params(seq, size, &base, &step);
    /* No early exit: an OR-accumulated difference keeps the loop branch-free, and a good frame (the
     * common case) has to be read to the end anyway. */
#ifdef VNB_PEER_VEC
    {
        v4u32 e0 = { base, base + step, base + 2 * step, base + 3 * step };
        v4u32 inc = { 4 * step, 4 * step, 4 * step, 4 * step };
        v4u32 e1 = e0 + inc, inc2 = inc + inc, acc0 = { 0, 0, 0, 0 }, acc1 = acc0;
        /* Two independent lanes of work per round, so the loads overlap. */
        for (; j + 8 <= nw; j += 8) {
            v4u32 w0, w1;
            memcpy(&w0, p + 4 * (size_t)j, 16);
            memcpy(&w1, p + 4 * (size_t)j + 16, 16);
            acc0 |= w0 ^ e0;
            acc1 |= w1 ^ e1;
            e0 += inc2;
            e1 += inc2;
        }
        acc0 |= acc1;
        diff = acc0[0] | acc0[1] | acc0[2] | acc0[3];
    }
#endif
    for (; j < nw; j++) {
        uint32_t w;
        memcpy(&w, p + 4 * (size_t)j, 4);
        diff |= le32toh(w) ^ (base + j * step);
    }
    if (n & 3) {
        uint32_t w = htole32(base + nw * step);
        diff |= (uint32_t)(memcmp(p + 4 * (size_t)nw, &w, n & 3) != 0);
    }
    return diff == 0;
}

void vnb_peer_fill_tagged(uint8_t *buf, const uint8_t *dst_mac, const uint8_t *src_mac,
                          uint32_t flow, uint32_t seq, uint32_t size)
{
    if (size < VNB_TAG_HDR_LEN)
        return;
    memcpy(buf, dst_mac, 6);
    memcpy(buf + 6, src_mac, 6);
    buf[12] = VNB_TAG_ETHERTYPE >> 8;
    buf[13] = VNB_TAG_ETHERTYPE & 0xff;
    put_be32(buf + 14, seq);
    put_be32(buf + 18, flow);
    fill_payload(buf + VNB_TAG_HDR_LEN, size - VNB_TAG_HDR_LEN, seq, size);
}

static inline int is_tagged(const uint8_t *f, uint32_t len)
{
    return len >= VNB_TAG_HDR_LEN && f[12] == (VNB_TAG_ETHERTYPE >> 8) &&
           f[13] == (VNB_TAG_ETHERTYPE & 0xff);
}

int vnb_peer_check_tagged(const uint8_t *frame, uint32_t len, uint32_t *seq, uint32_t *flow)
{
    uint32_t s, f;
    if (!is_tagged(frame, len))
        return -1;
    s = get_be32(frame + 14);
    f = get_be32(frame + 18);
    if (seq)
        *seq = s;
    if (flow)
        *flow = f;
    return payload_ok(frame + VNB_TAG_HDR_LEN, len - VNB_TAG_HDR_LEN, s, len);
}

/* ---------------------------------------------------------------------------------------------
 * sender */

int64_t vnb_peer_send_tagged(int fd, const uint8_t *dst_mac, const uint8_t *src_mac, uint32_t flow,
                             uint32_t first_seq, uint64_t count, uint32_t size, uint32_t pace_ns,
                             struct vnb_peer_tx_stats *st)
{
    struct vnb_peer_tx_stats local;
    struct mmsghdr msgs[TX_BATCH];
    struct iovec iov[TX_BATCH];
    uint8_t *frames;
    uint64_t done = 0;
    uint32_t batch, k;
    int64_t t0, last_progress;

    if (!st)
        st = &local;
    memset(st, 0, sizeof(*st));
    st->next_seq = first_seq;
    if (size < VNB_TAG_HDR_LEN || size > VNB_TAG_MAX_SIZE || !dst_mac || !src_mac)
        return -EINVAL;
    if (count == 0)
        return 0;
    batch = count < TX_BATCH ? (uint32_t)count : TX_BATCH;
    frames = malloc((size_t)batch * size);
    if (!frames)
        return -ENOMEM;
    /* No address: a bound packet socket sends on its bound interface. */
    mmsg_setup(msgs, iov, frames, batch, size);

    t0 = last_progress = vnb_now_ns();
    while (done < count) {
        uint32_t n = (count - done) < batch ? (uint32_t)(count - done) : batch, off = 0;
        if (pace_ns) {
            int64_t due = (vnb_now_ns() - t0) / pace_ns + 1 - (int64_t)done;
            if (due <= 0) {
                wait_until(t0 + (int64_t)done * pace_ns);
                continue;
            }
            if ((uint64_t)due < n)
                n = (uint32_t)due;
        }
        for (k = 0; k < n; k++)
            vnb_peer_fill_tagged(frames + (size_t)k * size, dst_mac, src_mac, flow,
                                 first_seq + (uint32_t)(done + k), size);
        while (off < n) {
            int r = sendmmsg(fd, msgs + off, n - off, 0);
            int e;
            st->syscalls++;
            if (r > 0) {
                off += (uint32_t)r;
                last_progress = vnb_now_ns();
                continue;
            }
            e = r == 0 ? EAGAIN : errno;
            if (e == EINTR)
                continue;
            if (e != ENOBUFS && e != EAGAIN) {
                st->err = e;
                break;
            }
            if (vnb_now_ns() - last_progress > STALL_NS) {
                st->err = e;
                break;
            }
            st->retries++;
            /* EAGAIN: the socket's send buffer is full (non-blocking fd), so wait for room.
             * ENOBUFS: a queue below dropped the frame; poll cannot tell when it drains. */
            if (e == EAGAIN) {
                int p = poll_one(fd, POLLOUT, 10);
                if (p < 0) {
                    st->err = -p;
                    break;
                }
            } else {
                sleep_ns(NOBUFS_WAIT_NS);
            }
        }
        done += off;
        st->bytes += (uint64_t)off * size;
        if (st->err)
            break;
    }
    st->elapsed_ns = vnb_now_ns() - t0;
    st->sent = done;
    st->next_seq = first_seq + (uint32_t)done;
    free(frames);
    if (done == 0 && st->err)
        return -st->err;
    return (int64_t)done;
}

/* ---------------------------------------------------------------------------------------------
 * receive-side accounting, shared by the recvmmsg and ring receivers */

#define SEEN_BIT(seq) ((seq) & (VNB_PEER_SEQ_WINDOW - 1))

static inline int seen_test_set(struct vnb_peer_rx_stats *st, uint32_t seq)
{
    uint32_t i = SEEN_BIT(seq);
    uint64_t m = 1ull << (i & 63);
    int was = (st->seen[i >> 6] & m) != 0;
    st->seen[i >> 6] |= m;
    return was;
}

static void track_seq(struct vnb_peer_rx_stats *st, uint32_t seq)
{
    int32_t d;
    if (!st->seen_any) {
        memset(st->seen, 0, sizeof(st->seen));
        st->seen_any = 1;
        st->first_seq = st->max_seq = seq;
        seen_test_set(st, seq);
        return;
    }
    d = (int32_t)(seq - st->max_seq);   /* serial-number order: a wrap of the counter is a step */
    if (d > 0) {
        uint32_t s;
        st->missing += (uint64_t)d - 1;
        if (d >= VNB_PEER_SEQ_WINDOW) {
            memset(st->seen, 0, sizeof(st->seen));
        } else {
            /* The slots of the seqs jumped over now stand for them, not for seqs a window ago. */
            for (s = st->max_seq + 1; s != seq; s++)
                st->seen[SEEN_BIT(s) >> 6] &= ~(1ull << (SEEN_BIT(s) & 63));
            st->seen[SEEN_BIT(seq) >> 6] &= ~(1ull << (SEEN_BIT(seq) & 63));
        }
        seen_test_set(st, seq);
        st->max_seq = seq;
    } else if (-(int64_t)d < VNB_PEER_SEQ_WINDOW) {
        if (seen_test_set(st, seq)) {
            st->duplicates++;
        } else {
            st->out_of_order++;
            if (st->missing)
                st->missing--;
        }
    } else {
        /* Older than the window: a duplicate cannot be told from a late frame; call it late. */
        st->out_of_order++;
        if (st->missing)
            st->missing--;
    }
}

/* Returns 1 if the frame was one of the wanted flow (tagged, right flow), 0 otherwise. */
static int account(struct vnb_peer_rx_stats *st, const uint8_t *f, uint32_t caplen,
                   uint32_t wirelen, uint32_t flow)
{
    uint32_t seq;
    int64_t t;
    if (!is_tagged(f, caplen) || get_be32(f + 18) != flow) {
        st->ignored++;
        return 0;
    }
    t = vnb_now_ns();
    if (st->received == 0)
        st->t_first_ns = t;
    st->t_last_ns = t;
    st->received++;
    st->bytes += wirelen;
    seq = get_be32(f + 14);
    if (caplen < wirelen) {
        st->truncated++;
        st->bad++;
        return 1;
    }
    if (!payload_ok(f + VNB_TAG_HDR_LEN, caplen - VNB_TAG_HDR_LEN, seq, caplen)) {
        /* The seq itself may be the damaged part, so a bad frame stays out of the seq tracking. */
        st->bad++;
        return 1;
    }
    st->last_seq = seq;
    track_seq(st, seq);
    return 1;
}

int vnb_peer_sock_stats(int fd, uint64_t *packets, uint64_t *drops, uint64_t *freeze_q_cnt)
{
    /* The v3 layout starts with the v1/v2 one; the kernel copies whichever the socket's version
     * has and leaves tp_freeze_q_cnt zeroed for v1/v2. */
    struct tpacket_stats_v3 s;
    socklen_t len = sizeof(s);
    memset(&s, 0, sizeof(s));
    if (getsockopt(fd, SOL_PACKET, PACKET_STATISTICS, &s, &len) < 0)
        return -errno;
    if (packets)
        *packets = s.tp_packets;
    if (drops)
        *drops = s.tp_drops;
    if (freeze_q_cnt)
        *freeze_q_cnt = s.tp_freeze_q_cnt;
    return 0;
}

static void add_sock_stats(int fd, struct vnb_peer_rx_stats *st)
{
    uint64_t p = 0, d = 0, f = 0;
    /* A socket that is not AF_PACKET has no such counters; the frame counts stand on their own. */
    if (vnb_peer_sock_stats(fd, &p, &d, &f) == 0) {
        st->tp_packets += p;
        st->tp_drops += d;
        st->tp_freeze_q_cnt += f;
    }
}

/* ---------------------------------------------------------------------------------------------
 * recvmmsg receiver */

int64_t vnb_peer_recv_tagged(int fd, struct vnb_peer_rx_stats *st, uint64_t expect, int timeout_ms,
                             uint32_t flow)
{
    struct mmsghdr msgs[RX_BATCH];
    struct iovec iov[RX_BATCH];
    uint8_t *bufs;
    uint64_t got = 0;
    int64_t idle_deadline;
    int err = 0, k;

    if (!st)
        return -EINVAL;
    bufs = malloc((size_t)RX_BATCH * RX_CAP);
    if (!bufs)
        return -ENOMEM;
    mmsg_setup(msgs, iov, bufs, RX_BATCH, RX_CAP);
    idle_deadline = vnb_now_ns() + (int64_t)timeout_ms * 1000000LL;
    while (expect == 0 || got < expect) {
        /* Never take more frames off the socket than are still wanted: frames read past `expect`
         * would be lost to the next caller. */
        unsigned vlen = RX_BATCH;
        int n;
        if (expect && expect - got < vlen)
            vlen = (unsigned)(expect - got);
        /* MSG_TRUNC makes msg_len the frame's real length, so an oversized frame shows as such. */
        n = recvmmsg(fd, msgs, vlen, MSG_DONTWAIT | MSG_TRUNC, NULL);
        if (n > 0) {
            int wanted = 0;
            for (k = 0; k < n; k++) {
                uint32_t wire = msgs[k].msg_len;
                wanted += account(st, bufs + (size_t)k * RX_CAP, wire < RX_CAP ? wire : RX_CAP,
                                  wire, flow);
            }
            if (wanted) {
                got += (uint64_t)wanted;
                idle_deadline = vnb_now_ns() + (int64_t)timeout_ms * 1000000LL;
            }
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno != EAGAIN) {
            err = errno;
            break;
        }
        k = ms_left(idle_deadline);
        if (k == 0)
            break;
        k = poll_one(fd, POLLIN, k);
        if (k < 0) {
            err = -k;
            break;
        }
    }
    add_sock_stats(fd, st);
    free(bufs);
    if (got == 0 && err)
        return -err;
    return (int64_t)got;
}

/* ---------------------------------------------------------------------------------------------
 * TPACKET_V3 ring receiver */

struct vnb_peer_ring {
    int fd;
    uint8_t *map;
    size_t map_len;
    uint32_t block_size;
    uint32_t nblocks;
    uint32_t retire_ms;
    uint32_t cur;                       /* next block to look at */
    struct tpacket_block_desc *blk;     /* block we own and are reading, or NULL */
    uint32_t left;                      /* frames of blk not handed out yet */
    uint8_t *next;
};

struct vnb_peer_ring *vnb_peer_ring_open(int fd, uint32_t block_size, uint32_t nblocks,
                                         uint32_t retire_ms, int *err)
{
    struct vnb_peer_ring *r;
    struct tpacket_req3 req;
    int v = TPACKET_V3, e;
    /* V3 ignores the frame size for placement, but the kernel still wants it to divide the block. */
    const uint32_t frame_size = 2048;

    if (block_size < 4096 || block_size % frame_size || nblocks == 0) {
        if (err)
            *err = EINVAL;
        return NULL;
    }
    r = calloc(1, sizeof(*r));
    if (!r) {
        if (err)
            *err = ENOMEM;
        return NULL;
    }
    if (setsockopt(fd, SOL_PACKET, PACKET_VERSION, &v, sizeof(v)) < 0)
        goto fail;
    memset(&req, 0, sizeof(req));
    req.tp_block_size = block_size;
    req.tp_block_nr = nblocks;
    req.tp_frame_size = frame_size;
    req.tp_frame_nr = (block_size / frame_size) * nblocks;
    req.tp_retire_blk_tov = retire_ms;
    if (setsockopt(fd, SOL_PACKET, PACKET_RX_RING, &req, sizeof(req)) < 0)
        goto fail;
    r->map_len = (size_t)block_size * nblocks;
    r->map = mmap(NULL, r->map_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (r->map == MAP_FAILED) {
        e = errno;
        /* Tearing the ring down again needs nothing mapped; a failure leaves it to close(fd). */
        memset(&req, 0, sizeof(req));
        setsockopt(fd, SOL_PACKET, PACKET_RX_RING, &req, sizeof(req));
        errno = e;
        goto fail;
    }
    r->fd = fd;
    r->block_size = block_size;
    r->nblocks = nblocks;
    r->retire_ms = retire_ms;
    return r;
fail:
    if (err)
        *err = errno;
    free(r);
    return NULL;
}

void vnb_peer_ring_close(struct vnb_peer_ring *r)
{
    if (!r)
        return;
    /* munmap of our own mapping only fails on bad arguments; the ring goes with the socket. */
    munmap(r->map, r->map_len);
    free(r);
}

/* The next frame, or NULL with *rc = 0 when `deadline` (CLOCK_MONOTONIC ns) passed first, or
 * *rc = -errno.  The frame stays valid until the next call: its block is returned to the kernel
 * only when the call after its last frame comes. */
static struct tpacket3_hdr *ring_next(struct vnb_peer_ring *r, int64_t deadline, int *rc)
{
    for (;;) {
        struct tpacket_block_desc *b;
        int p;
        if (r->blk) {
            if (r->left) {
                struct tpacket3_hdr *h = (struct tpacket3_hdr *)r->next;
                r->next += h->tp_next_offset;
                r->left--;
                return h;
            }
            /* Release: our reads of the block must be done before the kernel may refill it. */
            __atomic_store_n(&r->blk->hdr.bh1.block_status, TP_STATUS_KERNEL, __ATOMIC_RELEASE);
            r->blk = NULL;
            r->cur = (r->cur + 1) % r->nblocks;
        }
        b = (struct tpacket_block_desc *)(r->map + (size_t)r->cur * r->block_size);
        /* Acquire: pairs with the kernel's barrier before it flips the block to TP_STATUS_USER, so
         * the frames written into it are visible once we see the flag. */
        if (__atomic_load_n(&b->hdr.bh1.block_status, __ATOMIC_ACQUIRE) & TP_STATUS_USER) {
            r->blk = b;
            r->left = b->hdr.bh1.num_pkts;
            r->next = (uint8_t *)b + b->hdr.bh1.offset_to_first_pkt;
            continue;
        }
        p = ms_left(deadline);
        if (p == 0) {
            *rc = 0;
            return NULL;
        }
        p = poll_one(r->fd, POLLIN | POLLRDNORM | POLLERR, p);
        if (p < 0) {
            *rc = p;
            return NULL;
        }
    }
}

int vnb_peer_ring_recv(struct vnb_peer_ring *r, uint8_t *buf, uint32_t cap, int timeout_ms)
{
    int rc = 0;
    struct tpacket3_hdr *h = ring_next(r, vnb_now_ns() + (int64_t)timeout_ms * 1000000LL, &rc);
    if (!h)
        return rc;
    memcpy(buf, (uint8_t *)h + h->tp_mac, h->tp_snaplen < cap ? h->tp_snaplen : cap);
    /* A frame cut by the ring (longer than a block) reports its wire length, like MSG_TRUNC. */
    return h->tp_len > 0x7fffffffu ? 0x7fffffff : (int)h->tp_len;
}

int64_t vnb_peer_ring_flush(struct vnb_peer_ring *r)
{
    int64_t n = 0, stop = vnb_now_ns() + 2000000000LL;
    int rc = 0;
    /* A partly filled block reaches us only when its retire timer fires, so wait that long for
     * one more; the hard stop keeps a peer that never goes quiet from holding us here. */
    while (vnb_now_ns() < stop &&
           ring_next(r, vnb_now_ns() + ((int64_t)r->retire_ms + 2) * 1000000LL, &rc))
        n++;
    return rc < 0 && n == 0 ? rc : n;
}

int64_t vnb_peer_ring_recv_tagged(struct vnb_peer_ring *r, struct vnb_peer_rx_stats *st,
                                  uint64_t expect, int timeout_ms, uint32_t flow)
{
    uint64_t got = 0;
    int64_t idle_deadline = vnb_now_ns() + (int64_t)timeout_ms * 1000000LL;
    int rc = 0;

    if (!st)
        return -EINVAL;
    while (expect == 0 || got < expect) {
        struct tpacket3_hdr *h = ring_next(r, idle_deadline, &rc);
        if (!h)
            break;
        if (account(st, (uint8_t *)h + h->tp_mac, h->tp_snaplen, h->tp_len, flow)) {
            got++;
            idle_deadline = vnb_now_ns() + (int64_t)timeout_ms * 1000000LL;
        }
    }
    add_sock_stats(r->fd, st);
    if (got == 0 && rc < 0)
        return rc;
    return (int64_t)got;
}

/* ---------------------------------------------------------------------------------------------
 * raw tap loops */

int64_t vnb_raw_write_loop_ex(int fd, const uint8_t *buf, uint32_t len, uint64_t count,
                              struct vnb_raw_stats *st)
{
    struct vnb_raw_stats local;
    int64_t t0, last_progress;

    if (!st)
        st = &local;
    memset(st, 0, sizeof(*st));
    t0 = last_progress = vnb_now_ns();
    while (st->done < count) {
        ssize_t r = write(fd, buf, len);
        int p;
        if (r >= 0) {
            st->done++;
            st->bytes += (uint64_t)r;
            /* Reading the clock per frame would cost a third of a 90 ns syscall; every 4096 is
             * plenty for a two-second stall guard. */
            if ((st->done & 4095) == 0)
                last_progress = vnb_now_ns();
            continue;
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN) {
            st->err = errno;
            break;
        }
        st->eagain++;
        if (vnb_now_ns() - last_progress > STALL_NS) {
            st->err = EAGAIN;
            break;
        }
        p = poll_one(fd, POLLOUT, 100);
        if (p < 0) {
            st->err = -p;
            break;
        }
        if (p > 0)
            last_progress = vnb_now_ns();
    }
    st->elapsed_ns = vnb_now_ns() - t0;
    if (st->done == 0 && st->err)
        return -st->err;
    return (int64_t)st->done;
}

int64_t vnb_raw_write_loop(int fd, const uint8_t *buf, uint32_t len, uint64_t count)
{
    return vnb_raw_write_loop_ex(fd, buf, len, count, NULL);
}

int64_t vnb_raw_read_loop_ex(int fd, uint8_t *buf, uint32_t cap, uint64_t count, int timeout_ms,
                             struct vnb_raw_stats *st)
{
    struct vnb_raw_stats local;
    int64_t t0;
    int fl = fcntl(fd, F_GETFL);
    /* On a blocking fd read() would sleep past the timeout: poll before every read instead (slower;
     * pass an O_NONBLOCK fd to measure). */
    int blocking = fl >= 0 && !(fl & O_NONBLOCK);

    if (!st)
        st = &local;
    memset(st, 0, sizeof(*st));
    if (fl < 0)
        return -errno;
    t0 = vnb_now_ns();
    while (st->done < count) {
        ssize_t r;
        int p;
        if (!blocking) {
            r = read(fd, buf, cap);
            if (r >= 0) {
                st->done++;
                st->bytes += (uint64_t)r;
                continue;
            }
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN) {
                st->err = errno;
                break;
            }
            st->eagain++;
        }
        p = poll_one(fd, POLLIN, timeout_ms);
        if (p < 0) {
            st->err = -p;
            break;
        }
        if (p == 0)
            break;   /* idle for timeout_ms: the caller compares done with count */
        if (blocking) {
            r = read(fd, buf, cap);
            if (r >= 0) {
                st->done++;
                st->bytes += (uint64_t)r;
            } else if (errno != EINTR && errno != EAGAIN) {
                st->err = errno;
                break;
            }
        }
    }
    st->elapsed_ns = vnb_now_ns() - t0;
    if (st->done == 0 && st->err)
        return -st->err;
    return (int64_t)st->done;
}

int64_t vnb_raw_read_loop(int fd, uint8_t *buf, uint32_t cap, uint64_t count, int timeout_ms)
{
    return vnb_raw_read_loop_ex(fd, buf, cap, count, timeout_ms, NULL);
}

/* ---- request/response ---- */

/* One frame out; a full queue (EAGAIN/ENOBUFS) is waited out in poll, up to timeout_ms. */
static int send_one(int fd, const uint8_t *buf, uint32_t len, int timeout_ms, struct vnb_rr_stats *st)
{
    int64_t deadline = vnb_now_ns() + (int64_t)timeout_ms * 1000000LL;
    for (;;) {
        ssize_t r = write(fd, buf, len);
        st->syscalls++;
        if (r >= 0)
            return 0;
        if (errno != EAGAIN && errno != ENOBUFS && errno != EINTR)
            return -errno;
        if (vnb_now_ns() > deadline)
            return -ETIMEDOUT;
        /* ENOBUFS has no wake-up: the 1 ms timeout bounds that wait. */
        int p = poll_one(fd, POLLOUT, 1);
        st->syscalls++;
        if (p < 0)
            return p;
    }
}

/* The frame to send (a copy: its tag is rewritten per round trip), a receive buffer, zeroed stats. */
static int rr_buffers(const uint8_t *tmpl, uint32_t len, uint32_t hdr_len, uint32_t tag_off, uint8_t **out,
                      uint8_t **in, struct vnb_rr_stats *st)
{
    /* Written so that no sum can wrap: the frame holds a header and an Ethernet header, then the tag. */
    if (hdr_len > len || len - hdr_len < 14 || tag_off < hdr_len + 14 || tag_off > len - 4)
        return -EINVAL;
    *out = malloc(len);
    *in = malloc(RX_CAP);
    if (!*out || !*in) {
        free(*out);
        free(*in);
        return -ENOMEM;
    }
    memcpy(*out, tmpl, len);
    memset(st, 0, sizeof(*st));
    return 0;
}

int64_t vnb_peer_rr(int fd, const uint8_t *req, uint32_t len, uint32_t hdr_len, uint32_t tag_off,
                    uint64_t count, int timeout_ms, int64_t *rtt_ns, struct vnb_rr_stats *st)
{
    uint8_t *out, *in;
    int r = rr_buffers(req, len, hdr_len, tag_off, &out, &in, st);
    if (r)
        return r;
    for (uint64_t i = 0; i < count && !st->err; i++) {
        uint32_t tag = htobe32((uint32_t)i);
        memcpy(out + tag_off, &tag, 4);
        int64_t t0 = vnb_now_ns();
        r = send_one(fd, out, len, timeout_ms, st);
        if (r < 0) {
            st->err = -r;
            break;
        }
        for (;;) {
            ssize_t n = recv(fd, in, RX_CAP, MSG_DONTWAIT);
            st->syscalls++;
            if (n >= 0) {
                if (vnb_tagged_at(in, n, hdr_len, tag_off) && memcmp(in + tag_off, &tag, 4) == 0)
                    break;
                continue;   /* a stray frame (another flow, a late duplicate): not ours */
            }
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN) {
                st->err = errno;
                break;
            }
            int p = poll_one(fd, POLLIN, timeout_ms);
            st->syscalls++;
            if (p <= 0) {
                st->err = p < 0 ? -p : ETIMEDOUT;
                break;
            }
        }
        if (st->err)
            break;
        rtt_ns[i] = vnb_now_ns() - t0;
        st->done++;
    }
    free(out);
    free(in);
    return (int64_t)st->done;
}

int64_t vnb_raw_echo(int fd, const uint8_t *reply, uint32_t len, uint32_t hdr_len, uint32_t tag_off,
                     uint64_t count, int timeout_ms, const int *stop, struct vnb_rr_stats *st)
{
    uint8_t *out, *in;
    int r = rr_buffers(reply, len, hdr_len, tag_off, &out, &in, st);
    if (r)
        return r;
    int idle_ms = 0;
    /* Relaxed is enough: stop only has to be seen eventually, and it guards no other data. */
    while (st->done < count && !__atomic_load_n(stop, __ATOMIC_RELAXED)) {
        ssize_t n = read(fd, in, RX_CAP);
        st->syscalls++;
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN) {
                st->err = errno;
                break;
            }
            /* 50 ms slices: stop is looked at that often while idle. */
            int p = poll_one(fd, POLLIN, 50);
            st->syscalls++;
            if (p < 0) {
                st->err = -p;
                break;
            }
            if (p == 0 && (idle_ms += 50) >= timeout_ms)
                break;
            continue;
        }
        idle_ms = 0;
        if (!vnb_tagged_at(in, n, hdr_len, tag_off))
            continue;
        memcpy(out + tag_off, in + tag_off, 4);
        r = send_one(fd, out, len, timeout_ms, st);
        if (r < 0) {
            st->err = -r;
            break;
        }
        st->done++;
    }
    free(out);
    free(in);
    return (int64_t)st->done;
}
