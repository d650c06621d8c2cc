/* Guest front end: buffers, kicks and waits. Ring logic itself is in vnb_driver.c. */
#include "vnb_guest.h"
#include "vnb_peer.h"
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int vnb_guest_init(struct vnb_guest *g, const struct vnb_mem *mem, uint32_t flags, uint32_t hdr_len,
                   uint32_t num_rx, uint64_t rx_desc, uint64_t rx_avail, uint64_t rx_used,
                   uint32_t num_tx, uint64_t tx_desc, uint64_t tx_avail, uint64_t tx_used,
                   uint64_t tx_buf_gpa, uint32_t tx_buf_size, uint64_t tx_ind_gpa,
                   uint64_t rx_buf_gpa, uint32_t rx_buf_size, uint32_t rx_segs,
                   int rx_kick, int rx_call, int tx_kick, int tx_call)
{
    uint32_t qflags = flags & (VNB_F_EVENT_IDX | VNB_F_INDIRECT | VNB_F_PACKED);
    int r = vnb_drv_vq_init(&g->rxq, mem, num_rx, rx_desc, rx_avail, rx_used, qflags);
    if (r)
        return r;
    r = vnb_drv_vq_init(&g->txq, mem, num_tx, tx_desc, tx_avail, tx_used, qflags);
    if (r)
        return r;
    if (hdr_len != VNB_NET_HDR_LEN && hdr_len != VNB_NET_HDR_LEN_LEGACY)
        return -EINVAL;
    if (rx_segs == 0 || rx_segs > VNB_GUEST_MAX_SEGS || rx_buf_size < rx_segs || tx_buf_size < hdr_len + 64)
        return -EINVAL;
    /* rx_fill posts only whole rx_segs-descriptor chains: a smaller ring would never get one RX buffer. */
    if (rx_segs > num_rx)
        return -EINVAL;
    g->tx_buf = vnb_mem_ptr(mem, tx_buf_gpa, (uint64_t)tx_buf_size * num_tx);
    g->tx_ind = vnb_mem_ptr(mem, tx_ind_gpa, 16ull * VNB_GUEST_MAX_SEGS * num_tx);
    g->rx_buf = vnb_mem_ptr(mem, rx_buf_gpa, (uint64_t)rx_buf_size * num_rx);
    if (!g->tx_buf || !g->tx_ind || !g->rx_buf)
        return -EFAULT;
    g->tx_buf_gpa = tx_buf_gpa;
    g->tx_buf_size = tx_buf_size;
    g->tx_ind_gpa = tx_ind_gpa;
    g->rx_buf_gpa = rx_buf_gpa;
    g->rx_buf_size = rx_buf_size;
    g->rx_segs = rx_segs;
    g->hdr_len = hdr_len;
    g->flags = flags;
    g->kick_fd[0] = rx_kick;
    g->call_fd[0] = rx_call;
    g->kick_fd[1] = tx_kick;
    g->call_fd[1] = tx_call;
    g->tx_pending = 0;
    memset(&g->st, 0, sizeof(g->st));
    /* TX completions are reaped when we next send; we only ask for TX interrupts when the ring is full. */
    vnb_drv_disable_cb(&g->txq);
    return 0;
}

static void kick(struct vnb_guest *g, int q)
{
    uint64_t one = 1;
    /* An eventfd write cannot fail short of a counter overflow, which 2^64 kicks will not reach. */
    (void)!write(g->kick_fd[q], &one, sizeof(one));
    if (q)
        g->st.tx_syscalls++;
    else
        g->st.rx_syscalls++;
    if (q)
        g->st.tx_kicks++;
    else
        g->st.rx_kicks++;
}

/* Sleep until the device interrupts queue q or timeout_ms passes. Returns 1 on interrupt, 0 on timeout. */
static int wait_call(struct vnb_guest *g, int q, int timeout_ms)
{
    struct pollfd p = { .fd = g->call_fd[q], .events = POLLIN };
    int r = poll(&p, 1, timeout_ms);
    uint64_t *sys = q ? &g->st.tx_syscalls : &g->st.rx_syscalls;
    (*sys)++;
    if (r <= 0)
        return 0;
    uint64_t v;
    /* Non-blocking eventfd: a failed read only means someone else consumed the count. */
    if (read(g->call_fd[q], &v, sizeof(v)) == sizeof(v)) {
        if (q)
            g->st.tx_interrupts++;
        else
            g->st.rx_interrupts++;
    }
    (*sys)++;
    return 1;
}

int vnb_guest_tx_reclaim(struct vnb_guest *g)
{
    uint32_t len, token;
    int n = 0, r;
    while ((r = vnb_drv_get_used(&g->txq, &len, &token)) != 0) {
        if (r < 0) {
            g->st.bad_used++;
            continue;
        }
        g->tx_pending--;
        n++;
    }
    return n;
}

static uint32_t tx_descs_needed(const struct vnb_guest *g, uint32_t layout, uint32_t len)
{
    switch (layout) {
    case VNB_TX_SINGLE: return 1;
    case VNB_TX_SPLIT_HDR: return 2;
    case VNB_TX_SCATTER: return 1 + (len < 4 ? len : 4);
    default: return 1;   /* indirect */
    }
}

/* The part of a flood's frame that changes from one send to the next (its sequence number). */
struct tx_dirty {
    uint32_t off, len;
};

/* Copy frame[off, off+n) to dst; with `dirty` (the slot already holds this flood's frame) only the
 * bytes that change. */
static void tx_put(uint8_t *dst, const uint8_t *frame, uint32_t off, uint32_t n, const struct tx_dirty *dirty)
{
    if (!dirty) {
        memcpy(dst, frame + off, n);
        return;
    }
    uint32_t a = off > dirty->off ? off : dirty->off;
    uint32_t b = off + n < dirty->off + dirty->len ? off + n : dirty->off + dirty->len;
    if (a < b)
        memcpy(dst + (a - off), frame + a, b - a);
}

/* Copy header + frame into the slot of the head we are about to take and describe it as segments.
 * The scatter layout leaves gaps between pieces so that a device assuming contiguity would be caught. */
static uint32_t tx_build(struct vnb_guest *g, uint16_t slot, const uint8_t *frame, uint32_t len,
                         const struct virtio_net_hdr_v1 *hdr, uint32_t layout, const struct tx_dirty *dirty,
                         struct vnb_seg *segs)
{
    uint8_t *buf = g->tx_buf + (uint64_t)slot * g->tx_buf_size;
    uint64_t gpa = g->tx_buf_gpa + (uint64_t)slot * g->tx_buf_size;
    if (!dirty)
        memcpy(buf, hdr, g->hdr_len);
    if (layout == VNB_TX_SINGLE) {
        tx_put(buf + g->hdr_len, frame, 0, len, dirty);
        segs[0] = (struct vnb_seg){ gpa, g->hdr_len + len, 0 };
        return 1;
    }
    segs[0] = (struct vnb_seg){ gpa, g->hdr_len, 0 };
    if (layout == VNB_TX_SPLIT_HDR) {
        tx_put(buf + 16, frame, 0, len, dirty);
        segs[1] = (struct vnb_seg){ gpa + 16, len, 0 };
        return 2;
    }
    uint32_t pieces = len < 4 ? len : 4, off = 0, at = 16;
    for (uint32_t k = 0; k < pieces; k++) {
        uint32_t plen = (k + 1 == pieces) ? len - off : len / pieces;
        tx_put(buf + at, frame, off, plen, dirty);
        segs[1 + k] = (struct vnb_seg){ gpa + at, plen, 0 };
        off += plen;
        at += plen + 8 + 8 * k;  /* uneven gaps */
    }
    return 1 + pieces;
}

static int tx_add(struct vnb_guest *g, const uint8_t *frame, uint32_t len, const struct virtio_net_hdr_v1 *hdr,
                  uint32_t layout, const struct tx_dirty *dirty)
{
    struct vnb_seg segs[VNB_GUEST_MAX_SEGS];
    uint16_t slot = g->txq.free_head;
    uint32_t n = tx_build(g, slot, frame, len, hdr, layout, dirty, segs);
    void *ind = NULL;
    uint64_t ind_gpa = 0;
    if (layout == VNB_TX_INDIRECT) {
        ind = g->tx_ind + (uint64_t)slot * 16 * VNB_GUEST_MAX_SEGS;
        ind_gpa = g->tx_ind_gpa + (uint64_t)slot * 16 * VNB_GUEST_MAX_SEGS;
    }
    int r = vnb_drv_add(&g->txq, segs, n, ind, ind_gpa, len);
    if (r < 0)
        return r;
    g->tx_pending++;
    g->st.tx_frames++;
    g->st.tx_bytes += len;
    return 0;
}

static int tx_layout_ok(const struct vnb_guest *g, uint32_t len, uint32_t layout)
{
    if (layout > VNB_TX_INDIRECT || len == 0)
        return -EINVAL;
    if (layout == VNB_TX_INDIRECT && !(g->flags & VNB_F_INDIRECT))
        return -EOPNOTSUPP;
    /* Room for the header, the frame and the gaps of the scatter layout. */
    if ((uint64_t)len + 16 + 64 > g->tx_buf_size)
        return -EMSGSIZE;
    /* A layout needing more descriptors than the ring has can never be sent: without this, tx_wait
     * waited for room that cannot appear and the caller saw a misleading "ring full" after the timeout. */
    if (tx_descs_needed(g, layout, len) > g->txq.num)
        return -EINVAL;
    return 0;
}

/* Wait until `need` TX descriptors are free. Returns 0, or -EAGAIN after timeout_ms without progress. */
/* Wait for need_free free TX descriptors, or with need_free 0 until every chain in flight is used.
 * Returns 0 or -EAGAIN when the device used nothing for timeout_ms. */
static int tx_wait(struct vnb_guest *g, uint32_t need_free, int timeout_ms)
{
    vnb_guest_tx_reclaim(g);
    while (need_free ? g->txq.num_free < need_free : g->tx_pending != 0) {
        /* Room: an interrupt when 3/4 of what is in flight is done (virtqueue_enable_cb_delayed).
         * Drain: when the last one is. */
        uint16_t delay = need_free ? (uint16_t)(g->tx_pending * 3 / 4) : (uint16_t)(g->tx_pending - 1);
        if (need_free)
            g->st.tx_full_waits++;
        if (!vnb_drv_enable_cb(&g->txq, delay) && !wait_call(g, 1, timeout_ms)) {
            vnb_drv_disable_cb(&g->txq);
            if (vnb_guest_tx_reclaim(g) == 0)
                return -EAGAIN;
            continue;
        }
        vnb_drv_disable_cb(&g->txq);
        vnb_guest_tx_reclaim(g);
    }
    return 0;
}

int vnb_guest_tx(struct vnb_guest *g, const uint8_t *frame, uint32_t len, const struct virtio_net_hdr_v1 *hdr,
                 uint32_t layout, int timeout_ms)
{
    int r = tx_layout_ok(g, len, layout);
    if (r)
        return r;
    r = tx_wait(g, tx_descs_needed(g, layout, len), timeout_ms);
    if (r)
        return r;
    r = tx_add(g, frame, len, hdr, layout, NULL);
    if (r)
        return r;
    vnb_drv_publish(&g->txq);
    if (vnb_drv_kick_prepare(&g->txq))
        kick(g, 1);
    return 0;
}

/* Send `count` copies of frame as fast as the ring allows, publishing and deciding on a kick once per
 * `batch` frames (like xmit_more). If seq_offset is nonzero, a 32-bit big-endian counter is written
 * there in each copy so the receiver can check order; with `tagged`, each frame is instead rebuilt as
 * the sequence-tagged frame of that number (vnb_peer.h: addresses and flow from the template) so the
 * peer can check every byte. Numbers start at first_seq. Returns frames sent or -errno. */
int64_t vnb_guest_tx_flood(struct vnb_guest *g, const uint8_t *frame, uint32_t len,
                           const struct virtio_net_hdr_v1 *hdr, uint64_t count, uint32_t layout,
                           uint32_t batch, uint32_t seq_offset, uint32_t tagged, uint32_t first_seq,
                           int timeout_ms)
{
    int r = tx_layout_ok(g, len, layout);
    if (r)
        return r;
    if ((seq_offset && seq_offset + 4 > len) || (tagged && len < VNB_TAG_HDR_LEN))
        return -EINVAL;
    uint32_t flow = tagged ? (uint32_t)frame[18] << 24 | (uint32_t)frame[19] << 16 | (uint32_t)frame[20] << 8 | frame[21] : 0;
    uint8_t local[VNB_MAX_FRAME];
    memcpy(local, frame, len);
    uint32_t need = tx_descs_needed(g, layout, len);
    if (batch == 0)
        batch = 1;
    /* Untagged frames differ only in their sequence number: once a slot's buffer holds the frame,
     * rewrite just that, as a real guest hands the device skb pages without copying them again.
     * Otherwise this guest, not the device, would be what a 64 KiB TSO flood measures. Tagged frames
     * change throughout. The device only reads TX buffers, so a staged buffer stays as written. */
    uint8_t *staged = tagged ? NULL : calloc(g->txq.num, 1);   /* NULL: copy every frame in full */
    const struct tx_dirty dirty = { seq_offset, seq_offset ? 4 : 0 };
    uint64_t sent = 0;
    while (sent < count) {
        r = tx_wait(g, need, timeout_ms);
        if (r) {
            free(staged);
            return sent ? (int64_t)sent : r;
        }
        uint32_t k = 0;
        while (k < batch && sent < count && g->txq.num_free >= need) {
            if (tagged) {
                vnb_peer_fill_tagged(local, frame, frame + 6, flow, first_seq + (uint32_t)sent, len);
            } else if (seq_offset) {
                uint32_t s = first_seq + (uint32_t)sent;
                local[seq_offset] = s >> 24;
                local[seq_offset + 1] = s >> 16;
                local[seq_offset + 2] = s >> 8;
                local[seq_offset + 3] = s;
            }
            uint16_t slot = g->txq.free_head;
            tx_add(g, local, len, hdr, layout, staged && staged[slot] ? &dirty : NULL);
            if (staged)
                staged[slot] = 1;
            k++;
            sent++;
        }
        vnb_drv_publish(&g->txq);
        if (vnb_drv_kick_prepare(&g->txq))
            kick(g, 1);
    }
    free(staged);
    return (int64_t)sent;
}

/* Wait until the device has used every TX chain in flight. Returns 0 or -EAGAIN. */
int vnb_guest_tx_drain(struct vnb_guest *g, int timeout_ms)
{
    return tx_wait(g, 0, timeout_ms);
}

/* Post every free RX descriptor as a buffer; kick if the device asks. Returns buffers posted. */
int vnb_guest_rx_fill(struct vnb_guest *g)
{
    int n = 0;
    struct vnb_seg segs[VNB_GUEST_MAX_SEGS];
    while (g->rxq.num_free >= g->rx_segs) {
        uint16_t slot = g->rxq.free_head;
        uint64_t gpa = g->rx_buf_gpa + (uint64_t)slot * g->rx_buf_size;
        uint32_t piece = g->rx_buf_size / g->rx_segs;
        for (uint32_t k = 0; k < g->rx_segs; k++)
            segs[k] = (struct vnb_seg){ gpa + k * piece,
                                        k + 1 == g->rx_segs ? g->rx_buf_size - k * piece : piece, 1 };
        vnb_drv_add(&g->rxq, segs, g->rx_segs, NULL, 0, slot);
        n++;
    }
    if (n) {
        vnb_drv_publish(&g->rxq);
        if (vnb_drv_kick_prepare(&g->rxq))
            kick(g, 0);
    }
    return n;
}

/* Wait for one used RX buffer. Returns 1 with len/slot set, 0 on timeout, -EIO on a bad entry. */
static int rx_next_used(struct vnb_guest *g, uint32_t *len, uint32_t *slot, int timeout_ms)
{
    for (;;) {
        int r = vnb_drv_get_used(&g->rxq, len, slot);
        if (r > 0) {
            g->st.rx_buffers++;
            if (*len > g->rx_buf_size) {
                g->st.bad_used++;
                return -EIO;
            }
            return 1;
        }
        if (r < 0) {
            g->st.bad_used++;
            return -EIO;
        }
        g->st.rx_waits++;
        if (vnb_drv_enable_cb(&g->rxq, 0))
            continue;
        if (!wait_call(g, 0, timeout_ms))
            return 0;
    }
}

/* Receive one frame (without its virtio-net header) into out. Returns its length, 0 on timeout,
 * -EMSGSIZE if it did not fit in cap (the frame is consumed), -EIO on a malformed used entry. */
int64_t vnb_guest_rx(struct vnb_guest *g, uint8_t *out, uint32_t cap, struct virtio_net_hdr_v1 *hdr,
                     int timeout_ms)
{
    uint32_t len, slot;
    int r = rx_next_used(g, &len, &slot, timeout_ms);
    if (r <= 0)
        return r;
    const uint8_t *buf = g->rx_buf + (uint64_t)slot * g->rx_buf_size;
    if (len < g->hdr_len) {
        g->st.bad_used++;
        vnb_guest_rx_fill(g);
        return -EIO;
    }
    memset(hdr, 0, sizeof(*hdr));
    memcpy(hdr, buf, g->hdr_len);
    uint32_t nbuf = (g->flags & VNB_F_MRG_RXBUF) ? hdr->num_buffers : 1;
    uint64_t total = 0;
    int64_t ret = 0;
    for (uint32_t i = 0; i < nbuf; i++) {
        if (i) {
            /* The device publishes every buffer of a frame at once: they are there, or it is broken. */
            r = rx_next_used(g, &len, &slot, timeout_ms);
            if (r <= 0) {
                ret = r ? r : -EIO;
                break;
            }
            buf = g->rx_buf + (uint64_t)slot * g->rx_buf_size;
        }
        uint32_t skip = i ? 0 : g->hdr_len;
        uint32_t chunk = len - skip;
        if (total + chunk <= cap)
            memcpy(out + total, buf + skip, chunk);
        else
            ret = -EMSGSIZE;
        total += chunk;
    }
    if (nbuf == 0)
        ret = -EIO;
    vnb_guest_rx_fill(g);
    if (ret < 0)
        return ret;
    g->st.rx_frames++;
    g->st.rx_bytes += total;
    return (int64_t)total;
}

/* Receive `count` frames without copying them out, refilling as we go; for benchmarks and the
 * million-frame accounting test. If seq_offset is nonzero, frames carry a 32-bit big-endian sequence
 * there (relative to the frame, no header) and *out_of_order counts steps backwards. With `verify`,
 * every frame must be a sequence-tagged frame whose every byte is right, else *bad counts it.
 * Returns frames received before count was reached or timeout_ms passed with nothing new. */
int64_t vnb_guest_rx_count(struct vnb_guest *g, uint64_t count, int timeout_ms, uint32_t seq_offset,
                           uint32_t verify, uint64_t *out_of_order, uint64_t *bad)
{
    static __thread uint8_t frame[VNB_MAX_FRAME + VNB_NET_HDR_LEN];
    uint64_t got = 0;
    uint32_t expect = 0;
    int have_expect = 0;
    while (got < count) {
        uint32_t len, slot;
        int r = rx_next_used(g, &len, &slot, timeout_ms);
        if (r <= 0)
            break;
        const uint8_t *buf = g->rx_buf + (uint64_t)slot * g->rx_buf_size;
        uint32_t nbuf = (g->flags & VNB_F_MRG_RXBUF) ? ((const struct virtio_net_hdr_v1 *)buf)->num_buffers : 1;
        uint64_t total = len >= g->hdr_len ? len - g->hdr_len : 0;
        if (seq_offset && len >= g->hdr_len + seq_offset + 4) {
            const uint8_t *p = buf + g->hdr_len + seq_offset;
            uint32_t s = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
            /* A gap is a drop (accounted elsewhere); going backwards is a reorder or a duplicate. */
            if (have_expect && (int32_t)(s - expect) < 0 && out_of_order)
                (*out_of_order)++;
            expect = s + 1;
            have_expect = 1;
        }
        if (verify)
            memcpy(frame, buf + g->hdr_len, total);
        for (uint32_t i = 1; i < nbuf; i++) {
            if (rx_next_used(g, &len, &slot, timeout_ms) <= 0)
                break;
            if (verify && total + len <= VNB_MAX_FRAME)
                memcpy(frame + total, g->rx_buf + (uint64_t)slot * g->rx_buf_size, len);
            total += len;
        }
        uint32_t vseq, vflow;
        if (verify && (total > VNB_MAX_FRAME || vnb_peer_check_tagged(frame, (uint32_t)total, &vseq, &vflow) != 1) && bad)
            (*bad)++;
        g->st.rx_frames++;
        g->st.rx_bytes += total;
        got++;
        /* Refill in batches: one publish and kick decision per 32 frames, not per frame. */
        if (g->rxq.num_free >= (g->rxq.num < 64 ? g->rxq.num / 2 : 32))
            vnb_guest_rx_fill(g);
    }
    vnb_guest_rx_fill(g);
    return (int64_t)got;
}

int64_t vnb_guest_echo(struct vnb_guest *g, const uint8_t *reply, uint32_t len, uint32_t tag_off,
                       uint64_t count, int timeout_ms, const int *stop)
{
    /* The tag sits after the Ethernet header; written so that no sum can wrap. */
    if (len > VNB_MAX_FRAME || len < 18 || tag_off < 14 || tag_off > len - 4)
        return -EINVAL;
    uint8_t *in = malloc(VNB_MAX_FRAME + 1), *out = malloc(len);
    if (!in || !out) {
        free(in);
        free(out);
        return -ENOMEM;
    }
    memcpy(out, reply, len);
    struct virtio_net_hdr_v1 hdr, none;
    memset(&none, 0, sizeof(none));
    uint64_t answered = 0;
    int idle_ms = 0;
    int64_t ret = 0;
    /* Relaxed is enough: stop only has to be seen eventually, and it guards no other data. */
    while (answered < count && !__atomic_load_n(stop, __ATOMIC_RELAXED)) {
        int64_t n = vnb_guest_rx(g, in, VNB_MAX_FRAME + 1, &hdr, 50);
        if (n == 0) {
            idle_ms += 50;
            if (idle_ms >= timeout_ms)
                break;
            continue;
        }
        if (n == -EMSGSIZE)
            continue;   /* a frame larger than any request: not one, like any other stray frame */
        if (n < 0) {
            ret = n;
            break;
        }
        idle_ms = 0;
        if (!vnb_tagged_at(in, n, 0, tag_off))
            continue;
        memcpy(out + tag_off, in + tag_off, 4);
        int r = vnb_guest_tx(g, out, len, &none, VNB_TX_SINGLE, timeout_ms);
        if (r < 0) {
            ret = r;
            break;
        }
        answered++;
    }
    free(in);
    free(out);
    return ret < 0 ? ret : (int64_t)answered;
}
