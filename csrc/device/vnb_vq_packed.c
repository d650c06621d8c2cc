/* Device side of the packed virtqueue (§2.8), modelled on DPDK's lib/vhost (vhost_enqueue/dequeue
 * _packed, vhost_vring_call_packed) and on what Linux's virtio_ring.c expects of a device. The rule
 * of the split ring holds: a descriptor is copied out of guest memory before it is looked at.
 *
 * One ring of descriptors: the driver makes one available by writing it with AVAIL equal to its
 * wrap counter and USED the inverse, the first of a chain last; the device writes a used descriptor
 * (the buffer's id, the length written, AVAIL = USED = its wrap counter) over the first slot the
 * buffer held and skips the buffer's other slots. Buffer ids are untrusted: each must be below num
 * and not already in flight, which is what lets add_used know how many slots to skip. */
#include "vnb_vq_impl.h"
#include <errno.h>
#include <string.h>

static inline int desc_avail(uint16_t flags, uint8_t wrap)
{
    return !!(flags & VNB_PACKED_F_AVAIL) == wrap && !!(flags & VNB_PACKED_F_USED) != wrap;
}

static inline void advance(const struct vnb_vq *vq, uint16_t *idx, uint8_t *wrap, uint32_t n)
{
    uint32_t i = *idx + n;   /* n <= num and *idx < num: one subtraction brings it back */
    if (i >= vq->num) {
        i -= vq->num;
        *wrap ^= 1;
    }
    *idx = (uint16_t)i;
}

int packed_init(struct vnb_vq *vq, uint64_t desc_gpa, uint64_t driver_gpa, uint64_t device_gpa)
{
    /* Alignment per §2.8.10.1: descriptors 16, each event suppression structure 4; any size. */
    if ((desc_gpa & 15) || (driver_gpa & 3) || (device_gpa & 3))
        return -EINVAL;
    vq->desc = vnb_mem_ptr(vq->mem, desc_gpa, vring_desc_size(vq->num));
    vq->avail = vnb_mem_ptr(vq->mem, driver_gpa, sizeof(struct vring_packed_desc_event));
    vq->used = vnb_mem_ptr(vq->mem, device_gpa, sizeof(struct vring_packed_desc_event));
    if (!vq->desc || !vq->avail || !vq->used)
        return -EFAULT;
    vq->avail_wrap = vq->used_wrap = 1;   /* §2.8.1: both wrap counters start at 1 */
    vq->event_flags = VRING_PACKED_EVENT_FLAG_ENABLE;   /* what zeroed memory says */
    return 0;
}

int packed_avail_pending(struct vnb_vq *vq)
{
    const struct vring_packed_desc *ring = vq->desc;
    /* Acquire: pairs with the driver's release of the flags, as in packed_pop. */
    return desc_avail(vnb_load_acquire(&ring[vq->last_avail_idx].flags), vq->avail_wrap);
}

int packed_avail_count(struct vnb_vq *vq, uint16_t max)
{
    const struct vring_packed_desc *ring = vq->desc;
    uint16_t idx = vq->last_avail_idx;
    uint8_t wrap = vq->avail_wrap;
    uint32_t n = 0;
    int open = 0;   /* the walk is inside a chain */
    /* At most the ring's free slots are looked at: bounded however the guest sets the flags. A
     * count is a hint (pop validates each chain); a buffer's head flags are released last, so a
     * chain whose head is seen available is whole. */
    for (uint32_t seen = vq->inflight_desc; n < max && seen < vq->num; seen++) {
        /* Acquire: as in packed_pop, what this slot describes is at least as new as its flags. */
        uint16_t flags = vnb_load_acquire(&ring[idx].flags);
        if (!desc_avail(flags, wrap))
            break;
        open = !!(flags & VRING_DESC_F_NEXT);
        n += !open;
        advance(vq, &idx, &wrap, 1);
    }
    /* A chain that runs into a slot not available, or past the free slots, is a buffer too: pop
     * refuses it as a fault. Counting it keeps the count above 0 whenever avail_pending says 1, which
     * callers that loop on "buffers came" (rx_out_of_buffers) rely on; so does the head of a ring
     * whose every slot is in flight (the walk above looked at nothing). */
    if (!n && !open && max)
        return packed_avail_pending(vq);
    return (int)(n + (open && n < max));
}

/* An indirect table of packed descriptors: used in order, all of it (§2.8.7: only WRITE counts in
 * its entries, NEXT and the buffer id are ignored). An INDIRECT entry is refused, as in the split ring. */
static int walk_indirect(struct vnb_vq *vq, struct vnb_chain *c, const struct vring_packed_desc *ind)
{
    const struct vring_packed_desc *table =
        vnb_chain_indirect(vq, ind->addr, ind->len, sizeof(struct vring_packed_desc));
    if (!table)
        return -vq->fault;
    uint32_t count = ind->len / sizeof(struct vring_packed_desc);
    for (uint32_t i = 0; i < count; i++) {
        struct vring_packed_desc d;
        memcpy(&d, &table[i], sizeof(d));   /* the guest may rewrite the table while we walk it */
        c->ndesc++;
        if (d.flags & VRING_DESC_F_INDIRECT)
            return vnb_vq_fail(vq, VNB_FAULT_NESTED_INDIRECT);
        int r = vnb_chain_add(vq, c, d.addr, d.len, d.flags & VRING_DESC_F_WRITE);
        if (r)
            return r;
    }
    return 0;
}

/* Take the next available buffer: 1 with *c filled (c->head is its buffer id), 0 if none, or -fault
 * after stopping the queue. Work is bounded as in the split ring: at most num ring descriptors, and
 * one indirect table that ends the chain. */
int packed_pop(struct vnb_vq *vq, struct vnb_chain *c)
{
    const struct vring_packed_desc *ring = vq->desc;
    uint16_t idx = vq->last_avail_idx;
    uint8_t wrap = vq->avail_wrap;
    /* Acquire: the driver writes a chain's other descriptors, and this one's addr, len and id, before
     * it releases this one's flags (§2.8.6); everything read below is at least that new. */
    if (!desc_avail(vnb_load_acquire(&ring[idx].flags), wrap))
        return 0;
    c->nout = c->nin = c->ndesc = c->nring = 0;
    c->out_len = c->in_len = 0;
    uint32_t seen = 0;
    uint16_t id = 0;
    for (;;) {
        struct vring_packed_desc d;
        memcpy(&d, &ring[idx], sizeof(d));   /* copy before validating: see file comment */
        /* Every descriptor of the chain carries the AVAIL/USED bits of its own lap (§2.8.6), the
         * first one again in our copy: a guest that changed it since the check above is refused. */
        if (!desc_avail(d.flags, wrap))
            return vnb_vq_fail(vq, VNB_FAULT_CHAIN_FLAGS);
        /* A chain cannot hold more slots than the ring has free: that bounds the walk, and keeps
         * the used descriptors written later inside the slots the buffers held. */
        if (++seen + vq->inflight_desc > vq->num)
            return vnb_vq_fail(vq, seen > vq->num ? VNB_FAULT_LOOP : VNB_FAULT_AVAIL_IDX);
        c->ndesc++;
        if ((d.flags & (VRING_DESC_F_INDIRECT | VRING_DESC_F_NEXT)) == (VRING_DESC_F_INDIRECT | VRING_DESC_F_NEXT))
            return vnb_vq_fail(vq, VNB_FAULT_INDIRECT_NEXT);   /* as in the split ring (§2.8.7) */
        int r = (d.flags & VRING_DESC_F_INDIRECT) ? walk_indirect(vq, c, &d)
                                                  : vnb_chain_add(vq, c, d.addr, d.len, d.flags & VRING_DESC_F_WRITE);
        if (r)
            return r;
        advance(vq, &idx, &wrap, 1);
        if (!(d.flags & VRING_DESC_F_NEXT)) {
            id = d.id;   /* the buffer id is the last descriptor's (§2.8.6) */
            break;
        }
    }
    if (id >= vq->num || vq->inflight[id])
        return vnb_vq_fail(vq, VNB_FAULT_BUFFER_ID);
    vq->inflight[id] = (uint16_t)seen;
    vq->inflight_desc += seen;
    vq->pop_log[vq->npopped++ % VNB_MAX_QUEUE_SIZE] = id;
    c->head = id;
    c->nring = (uint16_t)seen;
    vq->last_avail_idx = idx;
    vq->avail_wrap = wrap;
    return 1;
}

/* Give back the last n popped buffers, not yet used: their slots are read again by the next pops. */
void packed_unpop(struct vnb_vq *vq, uint16_t n)
{
    for (uint16_t i = 0; i < n && vq->inflight_desc; i++) {
        uint16_t id = vq->pop_log[--vq->npopped % VNB_MAX_QUEUE_SIZE];
        uint16_t slots = vq->inflight[id];
        vq->inflight[id] = 0;
        vq->inflight_desc -= slots;
        /* Back by slots (< num): forward by num - slots, with the wrap counter flipped back. */
        uint8_t wrap = vq->avail_wrap;
        advance(vq, &vq->last_avail_idx, &wrap, vq->num - slots);
        vq->avail_wrap = wrap ^ 1;
    }
}

void packed_add_used(struct vnb_vq *vq, uint16_t id, uint32_t len)
{
    /* Only ids a pop returned reach here; one not in flight would be the caller's bug: skip it. */
    uint16_t slots = id < vq->num ? vq->inflight[id] : 0;
    if (!slots)
        return;
    vq->inflight[id] = 0;
    vq->inflight_desc -= slots;
    struct vring_packed_desc *d = (struct vring_packed_desc *)vq->desc + vq->used_idx;
    vnb_store_relaxed(&d->id, id);
    vnb_store_relaxed(&d->len, len);
    uint16_t flags = (vq->used_wrap ? VNB_PACKED_F_AVAIL | VNB_PACKED_F_USED : 0) | (len ? VRING_DESC_F_WRITE : 0);
    if (!vq->batch_pending) {
        /* The driver polls this slot first: its flags wait for the flush, so the batch (and a merged
         * RX frame's buffers, §2.8.8) appears whole. */
        vq->batch_pending = 1;
        vq->batch_head = vq->used_idx;
        vq->batch_flags = flags;
    } else {
        /* Release: id and len before the flags. The driver reaches this slot only after the batch
         * head's flags, released later. */
        vnb_store_release(&d->flags, flags);
    }
    vq_log(vq, vq->desc_gpa, vq->desc, d, sizeof(*d));   /* the head's flags are logged again at the flush */
    vq->used_since_signal = 1;
    advance(vq, &vq->used_idx, &vq->used_wrap, slots);
}

void packed_flush_used(struct vnb_vq *vq)
{
    if (!vq->batch_pending)
        return;
    struct vring_packed_desc *d = (struct vring_packed_desc *)vq->desc + vq->batch_head;
    /* Release: the batch's ids, lengths and later flags are visible before its head says used. */
    vnb_store_release(&d->flags, vq->batch_flags);
    vq_log(vq, vq->desc_gpa, vq->desc, &d->flags, sizeof(d->flags));
    vq->batch_pending = 0;
}

/* Does the driver want a used buffer notification for what was flushed since the last one? As
 * DPDK's vhost_vring_call_packed, from the driver event suppression structure (§2.8.10). */
int packed_should_notify(struct vnb_vq *vq)
{
    if (vq->signalled_used_valid && !vq->used_since_signal)
        return 0;   /* nothing used since the last decision (as in the split ring) */
    /* Full barrier: the used flags stored by the flush are visible before we read the driver's
     * event suppression, or the driver could miss both the buffers and the notification. */
    vnb_mb();
    const struct vring_packed_desc_event *ev = vq->avail;
    uint16_t old = vq->signalled_used, new_idx = vq->used_idx;
    int valid = vq->signalled_used_valid;
    vq->signalled_used = new_idx;
    vq->signalled_used_valid = 1;
    vq->used_since_signal = 0;
    uint16_t flags = vnb_load_relaxed(&ev->flags);
    if (flags != VRING_PACKED_EVENT_FLAG_DESC || !(vq->flags & VNB_F_EVENT_IDX))
        return flags != VRING_PACKED_EVENT_FLAG_DISABLE;
    if (!valid)
        return 1;
    uint16_t off_wrap = vnb_load_relaxed(&ev->off_wrap);
    uint16_t off = off_wrap & ~VNB_PACKED_WRAP;
    /* Positions on one line: the old one a lap back if we wrapped since, the event's if it is for
     * the lap before ours; then the split ring's formula applies (16-bit arithmetic, num <= 2^15). */
    if (new_idx <= old)
        old = (uint16_t)(old - vq->num);
    if ((off_wrap >> VRING_PACKED_EVENT_F_WRAP_CTR) != vq->used_wrap)
        off = (uint16_t)(off - vq->num);
    return vring_need_event(off, new_idx, old);
}

static void set_event_flags(struct vnb_vq *vq, uint16_t flags)
{
    struct vring_packed_desc_event *ev = vq->used;
    if (vq->event_flags != flags) {   /* a store only on change: the driver reads this line per kick */
        vnb_store_release(&ev->flags, flags);   /* release: after off_wrap, which DESC refers to */
        vq_log(vq, vq->used_gpa, ev, ev, sizeof(*ev));
        vq->event_flags = flags;
    }
}

void packed_disable_notify(struct vnb_vq *vq)
{
    set_event_flags(vq, VRING_PACKED_EVENT_FLAG_DISABLE);
}

/* Ask for a notification on the next buffer; 1 if one arrived meanwhile (keep going, don't sleep). */
int packed_enable_notify(struct vnb_vq *vq)
{
    if (vq->flags & VNB_F_EVENT_IDX) {
        struct vring_packed_desc_event *ev = vq->used;
        vnb_store_relaxed(&ev->off_wrap, (uint16_t)(vq->last_avail_idx | (vq->avail_wrap ? VNB_PACKED_WRAP : 0)));
        vq->event_flags = VRING_PACKED_EVENT_FLAG_DISABLE;   /* force the store: off_wrap changed */
        set_event_flags(vq, VRING_PACKED_EVENT_FLAG_DESC);
    } else {
        set_event_flags(vq, VRING_PACKED_EVENT_FLAG_ENABLE);
    }
    /* Full barrier: as in the split ring, the enable is visible before we look at the ring again. */
    vnb_mb();
    return packed_avail_pending(vq);
}
