/* The peer's TPACKET_V3 ring receiver: frames read from a mapped ring, no copy, no system call per frame. */
#include "vnb_peer_impl.h"

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
        if (vnb_peer_account(st, (uint8_t *)h + h->tp_mac, h->tp_snaplen, h->tp_len, flow)) {
            got++;
            idle_deadline = vnb_now_ns() + (int64_t)timeout_ms * 1000000LL;
        }
    }
    vnb_peer_add_sock_stats(r->fd, st);
    if (got == 0 && rc < 0)
        return rc;
    return (int64_t)got;
}
