/* The device-side ring API (vnb_virtq.h): one set of calls for the datapaths, the vhost-user session
 * and the fuzz targets, whichever format the driver negotiated. Each call picks the format's code
 * (vnb_vq_split.c, vnb_vq_packed.c) by the queue's VNB_F_PACKED flag: one predictable branch. */
#include "vnb_vq_impl.h"
#include <errno.h>
#include <string.h>

int vnb_vq_init(struct vnb_vq *vq, const struct vnb_mem *mem, uint32_t num, uint64_t desc_gpa,
                uint64_t avail_gpa, uint64_t used_gpa, uint32_t flags)
{
    memset(vq, 0, sizeof(*vq));
    if (num == 0 || num > VNB_MAX_QUEUE_SIZE)
        return -EINVAL;
    vq->mem = mem;
    vq->num = num;
    vq->flags = flags;
    int r = (flags & VNB_F_PACKED) ? packed_init(vq, desc_gpa, avail_gpa, used_gpa)
                                   : split_init(vq, desc_gpa, avail_gpa, used_gpa);
    if (r) {
        memset(vq, 0, offsetof(struct vnb_vq, inflight));   /* no queue: nothing points into memory */
        return r;
    }
    vq->desc_gpa = desc_gpa;
    vq->avail_gpa = avail_gpa;
    vq->used_gpa = used_gpa;
    vq->log_used_gpa = used_gpa;
    return 0;
}

void vnb_vq_set_log_addr(struct vnb_vq *vq, uint64_t log_used_gpa)
{
    vq->log_used_gpa = log_used_gpa;
}

int vnb_vq_set_base(struct vnb_vq *vq, uint16_t last_avail_idx, uint16_t used_idx)
{
    if (vnb_vq_packed(vq)) {
        uint16_t avail = last_avail_idx & ~VNB_PACKED_WRAP, used = used_idx & ~VNB_PACKED_WRAP;
        if (avail >= vq->num || used >= vq->num)
            return -EINVAL;
        vq->last_avail_idx = avail;
        vq->avail_wrap = !!(last_avail_idx & VNB_PACKED_WRAP);
        vq->used_idx = used;
        vq->used_wrap = !!(used_idx & VNB_PACKED_WRAP);
        /* Buffers in flight before were the previous owner's: none is ours to use or give back. */
        memset(vq->inflight, 0, sizeof(vq->inflight));
        vq->inflight_desc = 0;
        vq->batch_pending = 0;
    } else {
        vq->last_avail_idx = last_avail_idx;
        vq->used_idx = used_idx;
    }
    /* After a hand-over we do not know what the driver last saw: signal on the next used buffer. */
    vq->signalled_used_valid = 0;
    return 0;
}

void vnb_vq_get_base(const struct vnb_vq *vq, uint16_t *last_avail_idx, uint16_t *used_idx)
{
    if (vnb_vq_packed(vq)) {
        *last_avail_idx = (uint16_t)(vq->last_avail_idx | (vq->avail_wrap ? VNB_PACKED_WRAP : 0));
        *used_idx = (uint16_t)(vq->used_idx | (vq->used_wrap ? VNB_PACKED_WRAP : 0));
    } else {
        *last_avail_idx = vq->last_avail_idx;
        *used_idx = vq->used_idx;
    }
}

int vnb_vq_avail_pending(struct vnb_vq *vq)
{
    return vnb_vq_packed(vq) ? packed_avail_pending(vq) : split_avail_pending(vq);
}

int vnb_vq_avail_count(struct vnb_vq *vq, uint16_t max)
{
    if (vnb_vq_packed(vq))
        return packed_avail_count(vq, max);
    int n = split_avail_pending(vq);
    return n < max ? n : max;
}

/* Take the next available chain. Returns 1 with *c filled, 0 if the ring is empty, or -fault after
 * stopping the queue. Like vhost, a buffer that merely has odd lengths is the caller's business;
 * only what makes the ring itself untrustworthy is a fault. */
int vnb_vq_pop(struct vnb_vq *vq, struct vnb_chain *c)
{
    if (vq->broken)
        return -vq->fault;
    return vnb_vq_packed(vq) ? packed_pop(vq, c) : split_pop(vq, c);
}

/* Give back the last n popped chains (RX: not enough room for a frame yet), as vhost_discard_vq_desc. */
void vnb_vq_unpop(struct vnb_vq *vq, uint16_t n)
{
    if (vnb_vq_packed(vq))
        packed_unpop(vq, n);
    else
        vq->last_avail_idx -= n;
}

void vnb_vq_add_used(struct vnb_vq *vq, uint16_t head, uint32_t len)
{
    if (vnb_vq_packed(vq))
        packed_add_used(vq, head, len);
    else
        split_add_used(vq, head, len);
}

void vnb_vq_flush_used(struct vnb_vq *vq)
{
    if (vnb_vq_packed(vq))
        packed_flush_used(vq);
    else
        split_flush_used(vq);
}

int vnb_vq_should_notify(struct vnb_vq *vq)
{
    return vnb_vq_packed(vq) ? packed_should_notify(vq) : split_should_notify(vq);
}

void vnb_vq_disable_notify(struct vnb_vq *vq)
{
    if (vnb_vq_packed(vq))
        packed_disable_notify(vq);
    else
        split_disable_notify(vq);
}

int vnb_vq_enable_notify(struct vnb_vq *vq)
{
    return vnb_vq_packed(vq) ? packed_enable_notify(vq) : split_enable_notify(vq);
}
