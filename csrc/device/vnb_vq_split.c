/* Device side of the split virtqueue (§2.7). Modelled on drivers/vhost/vhost.c (vhost_get_vq_desc,
 * vhost_add_used_n, vhost_notify, vhost_enable_notify) and rust-vmm virtio-queue, with one rule:
 * a descriptor is copied out of guest memory before it is looked at, so the guest cannot change it
 * between check and use. */
#include "vnb_vq_impl.h"
#include <errno.h>
#include <string.h>

int split_init(struct vnb_vq *vq, uint64_t desc_gpa, uint64_t avail_gpa, uint64_t used_gpa)
{
    uint32_t num = vq->num;
    if (num & (num - 1))
        return -EINVAL;
    /* Alignment per §2.7: descriptors 16, avail 2, used 4. */
    if ((desc_gpa & 15) || (avail_gpa & 1) || (used_gpa & 3))
        return -EINVAL;
    int ev = (vq->flags & VNB_F_EVENT_IDX) ? 2 : 0;
    vq->desc = vnb_mem_ptr(vq->mem, desc_gpa, vring_desc_size(num));
    vq->avail = vnb_mem_ptr(vq->mem, avail_gpa, vring_avail_size(num) - 2 + ev);
    vq->used = vnb_mem_ptr(vq->mem, used_gpa, vring_used_size(num) - 2 + ev);
    return vq->desc && vq->avail && vq->used ? 0 : -EFAULT;
}

int split_avail_pending(struct vnb_vq *vq)
{
    struct vring_avail *avail = vq->avail;
    return (uint16_t)(vnb_load_acquire(&avail->idx) - vq->last_avail_idx);
}

static int walk_indirect(struct vnb_vq *vq, struct vnb_chain *c, const struct vring_desc *ind)
{
    const struct vring_desc *table = vnb_chain_indirect(vq, ind->addr, ind->len, sizeof(struct vring_desc));
    if (!table)
        return -vq->fault;
    uint32_t count = ind->len / sizeof(struct vring_desc);
    uint32_t i = 0, seen = 0;
    for (;;) {
        struct vring_desc d;
        /* Copy first: the guest may rewrite the table while we walk it. */
        memcpy(&d, &table[i], sizeof(d));
        if (++seen > count)
            return vnb_vq_fail(vq, VNB_FAULT_LOOP);
        c->ndesc++;
        if (d.flags & VRING_DESC_F_INDIRECT)
            return vnb_vq_fail(vq, VNB_FAULT_NESTED_INDIRECT);
        int r = vnb_chain_add(vq, c, d.addr, d.len, d.flags & VRING_DESC_F_WRITE);
        if (r)
            return r;
        if (!(d.flags & VRING_DESC_F_NEXT))
            return 0;
        if (d.next >= count)
            return vnb_vq_fail(vq, VNB_FAULT_NEXT_RANGE);
        i = d.next;
    }
}

/* Take the next available chain. Returns 1 with *c filled, 0 if the ring is empty, or -fault after
 * stopping the queue. Like vhost, a buffer that merely has odd lengths is the caller's business;
 * only what makes the ring itself untrustworthy is a fault. */
int split_pop(struct vnb_vq *vq, struct vnb_chain *c)
{
    struct vring_avail *avail = vq->avail;
    /* Acquire: the ring entry and descriptors the driver wrote before bumping idx are visible. */
    uint16_t avail_idx = vnb_load_acquire(&avail->idx);
    uint16_t pending = (uint16_t)(avail_idx - vq->last_avail_idx);
    if (pending == 0)
        return 0;
    if (pending > vq->num)
        return vnb_vq_fail(vq, VNB_FAULT_AVAIL_IDX);

    uint16_t head = vnb_load_relaxed(&avail->ring[vq->last_avail_idx & (vq->num - 1)]);
    if (head >= vq->num)
        return vnb_vq_fail(vq, VNB_FAULT_HEAD_RANGE);

    c->head = head;
    c->nout = c->nin = c->ndesc = c->nring = 0;
    c->out_len = c->in_len = 0;
    const struct vring_desc *table = vq->desc;
    uint32_t i = head, seen = 0;
    for (;;) {
        struct vring_desc d;
        memcpy(&d, &table[i], sizeof(d));  /* copy before validating: see file comment */
        if (++seen > vq->num)
            return vnb_vq_fail(vq, VNB_FAULT_LOOP);
        c->ndesc++;
        /* §2.7.5.3.1 forbids INDIRECT with NEXT. vhost follows NEXT anyway, which lets one chain
         * visit the same indirect table num times: refusing it bounds a pop by VNB_MAX_CHAIN_DESC. */
        if ((d.flags & (VRING_DESC_F_INDIRECT | VRING_DESC_F_NEXT)) == (VRING_DESC_F_INDIRECT | VRING_DESC_F_NEXT))
            return vnb_vq_fail(vq, VNB_FAULT_INDIRECT_NEXT);
        int r = (d.flags & VRING_DESC_F_INDIRECT) ? walk_indirect(vq, c, &d)
                                                  : vnb_chain_add(vq, c, d.addr, d.len, d.flags & VRING_DESC_F_WRITE);
        if (r)
            return r;
        if (!(d.flags & VRING_DESC_F_NEXT))
            break;
        if (d.next >= vq->num)
            return vnb_vq_fail(vq, VNB_FAULT_NEXT_RANGE);
        i = d.next;
    }
    c->nring = (uint16_t)seen;
    vq->last_avail_idx++;
    return 1;
}

void split_add_used(struct vnb_vq *vq, uint16_t head, uint32_t len)
{
    struct vring_used *used = vq->used;
    struct vring_used_elem *e = &used->ring[vq->used_idx & (vq->num - 1)];
    /* Relaxed: published to the driver only by the release store of used->idx in vnb_vq_flush_used. */
    vnb_store_relaxed(&e->id, (uint32_t)head);
    vnb_store_relaxed(&e->len, len);
    vq_log(vq, vq->log_used_gpa, used, e, sizeof(*e));
    vq->used_idx++;
}

void split_flush_used(struct vnb_vq *vq)
{
    struct vring_used *used = vq->used;
    /* Release: the used elements written above become visible no later than the new idx. */
    vnb_store_release(&used->idx, vq->used_idx);
    vq_log(vq, vq->log_used_gpa, used, &used->idx, sizeof(used->idx));
}

/* Does the driver want an interrupt for what was flushed since the last one? (vhost_notify) */
int split_should_notify(struct vnb_vq *vq)
{
    struct vring_avail *avail = vq->avail;
    uint16_t old = vq->signalled_used;
    uint16_t new_idx = vq->used_idx;
    /* Nothing used since the last decision: an interrupt would be spurious (EVENT_IDX's formula says
     * so too), and there is nothing to order. The datapath asks after every pass, even an idle one.
     * Safe without EVENT_IDX: a driver that clears NO_INTERRUPT re-reads used->idx itself (enable_cb),
     * so entries flushed while it had interrupts off are not lost. */
    if (vq->signalled_used_valid && new_idx == old)
        return 0;
    /* Full barrier: our used->idx store must be visible before we read the driver's used_event or
     * flags, or the driver could miss both the new entries and the interrupt (§2.7.10). */
    vnb_mb();
    int valid = vq->signalled_used_valid;
    vq->signalled_used = new_idx;
    vq->signalled_used_valid = 1;
    if (!(vq->flags & VNB_F_EVENT_IDX))
        return !(vnb_load_relaxed(&avail->flags) & VRING_AVAIL_F_NO_INTERRUPT);
    if (!valid)
        return 1;
    uint16_t event = vnb_load_relaxed(vnb_used_event(avail, vq->num));
    return vring_need_event(event, new_idx, old);
}

/* Stop asking for kicks while we are already polling the ring. With EVENT_IDX a stale avail_event
 * does that by itself (the driver's new idx runs past it), so there is nothing to write. */
void split_disable_notify(struct vnb_vq *vq)
{
    if (vq->flags & VNB_F_EVENT_IDX)
        return;
    struct vring_used *used = vq->used;
    vnb_store_relaxed(&used->flags, (uint16_t)VRING_USED_F_NO_NOTIFY);
    vq_log(vq, vq->log_used_gpa, used, &used->flags, sizeof(used->flags));
}

/* Ask for a kick on the next buffer. Returns 1 if buffers arrived meanwhile (keep going, don't sleep). */
int split_enable_notify(struct vnb_vq *vq)
{
    struct vring_used *used = vq->used;
    struct vring_avail *avail = vq->avail;
    if (vq->flags & VNB_F_EVENT_IDX) {
        vnb_store_relaxed(vnb_avail_event(used, vq->num), vq->last_avail_idx);
        vq_log(vq, vq->log_used_gpa, used, vnb_avail_event(used, vq->num), sizeof(uint16_t));
    } else {
        vnb_store_relaxed(&used->flags, (uint16_t)0);
        vq_log(vq, vq->log_used_gpa, used, &used->flags, sizeof(used->flags));
    }
    /* Full barrier: the enable must be visible before we re-read avail->idx, pairing with the driver's
     * barrier between its idx store and its avail_event/flags load; else both sides could sleep. */
    vnb_mb();
    return vnb_load_acquire(&avail->idx) != vq->last_avail_idx;
}

/* num_buffers of the virtio-net header at the start of the buffer that descriptor id names; 1 when
 * the descriptor names no readable memory. By the time it is read the guest may have reposted the
 * buffer (vhost reuses it at once at any real rate): the count is then wrong, never unsafe. */
static uint16_t header_num_buffers(const struct vnb_vq *vq, uint32_t id)
{
    if (id >= vq->num)
        return 1;
    const struct vring_desc *d = (const struct vring_desc *)vq->desc + id;
    uint64_t addr = vnb_load_relaxed(&d->addr);
    if (vnb_load_relaxed(&d->flags) & VRING_DESC_F_INDIRECT) {
        const struct vring_desc *t = vnb_mem_ptr(vq->mem, addr, sizeof(*t));
        if (!t)
            return 1;
        addr = vnb_load_relaxed(&t->addr);
    }
    const uint8_t *h = vnb_mem_ptr(vq->mem, addr, 12);
    if (!h)
        return 1;
    /* Byte loads: the header has no alignment, and the guest shares the page. */
    uint16_t nb = (uint16_t)(vnb_load_relaxed(&h[10]) | vnb_load_relaxed(&h[11]) << 8);
    return nb ? nb : 1;
}

void vnb_vq_tally_used(const struct vnb_vq *vq, uint32_t hdr_len, struct vnb_used_tally *t)
{
    if (vnb_vq_packed(vq))
        return;   /* the kernel's vhost, the one other device side we count, has no packed rings */
    const struct vring_used *used = vq->used;
    /* Acquire pairs with the other side's release of used->idx: the entries below it are written. */
    uint16_t idx = vnb_load_acquire(&used->idx);
    uint16_t n = (uint16_t)(idx - t->seen_idx);
    if (n > vq->num) {
        /* More entries passed than the ring holds: the older slots already hold newer entries, so
         * what they say is not theirs. Count those one frame each, unread, and read only the last num. */
        uint16_t lapped = (uint16_t)(n - vq->num);
        t->entries += lapped;
        t->frames += lapped;
        t->unread += lapped;
        t->skip = 0;
        t->seen_idx = (uint16_t)(t->seen_idx + lapped);
    }
    for (uint16_t i = t->seen_idx; i != idx; i++) {
        const struct vring_used_elem *e = &used->ring[i & (vq->num - 1)];
        uint32_t id = vnb_load_relaxed(&e->id), len = vnb_load_relaxed(&e->len);
        t->entries++;
        t->bytes += len;
        if (t->skip) {
            t->skip--;
            continue;
        }
        t->frames++;
        t->bytes -= len < hdr_len ? len : hdr_len;
        if (vq->flags & VNB_F_MRG_RXBUF) {
            /* Capped: a guest's header cannot make the count skip more than a ring of entries. */
            uint32_t nb = header_num_buffers(vq, id);
            t->skip = (nb < vq->num ? nb : vq->num) - 1u;
        }
    }
    t->seen_idx = idx;
}
