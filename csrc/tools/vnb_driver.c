/* Driver side of the split virtqueue, after Linux drivers/virtio/virtio_ring.c (split variant), and
 * the API's dispatch to the packed one (vnb_driver_packed.c) on VNB_F_PACKED. */
#include "vnb_driver_impl.h"
#include <errno.h>
#include <string.h>

/* cffi reads the literals in struct vnb_drv_vq: tie them to the largest queue. */
_Static_assert(sizeof(((struct vnb_drv_vq *)0)->next) == VNB_MAX_QUEUE_SIZE * sizeof(uint16_t), "next[]");
_Static_assert(sizeof(((struct vnb_drv_vq *)0)->token) == VNB_MAX_QUEUE_SIZE * sizeof(uint32_t), "token[]");
_Static_assert(sizeof(((struct vnb_drv_vq *)0)->ndesc) == VNB_MAX_QUEUE_SIZE * sizeof(uint16_t), "ndesc[]");

int vnb_drv_vq_init(struct vnb_drv_vq *q, const struct vnb_mem *mem, uint32_t num, uint64_t desc_gpa,
                    uint64_t avail_gpa, uint64_t used_gpa, uint32_t flags)
{
    int packed = flags & VNB_F_PACKED;
    if (num == 0 || num > VNB_MAX_QUEUE_SIZE || (!packed && (num & (num - 1))))
        return -EINVAL;
    q->num = num;
    q->flags = flags;
    q->free_head = 0;
    q->num_free = num;
    q->avail_idx = q->last_used_idx = q->num_added = 0;
    for (uint32_t i = 0; i < num; i++)
        q->next[i] = (uint16_t)(i + 1);
    if (packed)
        return drv_packed_init(q, mem, desc_gpa, avail_gpa, used_gpa);
    q->desc = vnb_mem_ptr(mem, desc_gpa, vring_desc_size(num));
    q->avail = vnb_mem_ptr(mem, avail_gpa, vring_avail_size(num));
    q->used = vnb_mem_ptr(mem, used_gpa, vring_used_size(num));
    if (!q->desc || !q->avail || !q->used)
        return -EFAULT;
    memset(q->desc, 0, vring_desc_size(num));
    memset(q->avail, 0, vring_avail_size(num));
    memset(q->used, 0, vring_used_size(num));
    return 0;
}

static uint16_t take_desc(struct vnb_drv_vq *q)
{
    uint16_t i = q->free_head;
    q->free_head = q->next[i];
    q->num_free--;
    return i;
}

/* Add one chain: segments in order (readable ones first). With indirect_table set, the segments go
 * into that table (host pointer indirect_table, guest address indirect_gpa) and take one ring slot.
 * Returns the head index, or -ENOSPC when the ring lacks free descriptors. */
int vnb_drv_add(struct vnb_drv_vq *q, const struct vnb_seg *segs, uint32_t nsegs, void *indirect_table,
                uint64_t indirect_gpa, uint32_t token)
{
    if (q->flags & VNB_F_PACKED)
        return drv_packed_add(q, segs, nsegs, indirect_table, indirect_gpa, token);
    struct vring_desc *desc = q->desc;
    struct vring_avail *avail = q->avail;
    if (nsegs == 0)
        return -EINVAL;
    uint32_t need = indirect_table ? 1 : nsegs;
    if (need > q->num_free)
        return -ENOSPC;
    uint16_t head;
    if (indirect_table) {
        struct vring_desc *t = indirect_table;
        for (uint32_t k = 0; k < nsegs; k++) {
            t[k].addr = segs[k].gpa;
            t[k].len = segs[k].len;
            t[k].flags = (segs[k].write ? VRING_DESC_F_WRITE : 0) | (k + 1 < nsegs ? VRING_DESC_F_NEXT : 0);
            t[k].next = (uint16_t)(k + 1);
        }
        head = take_desc(q);
        desc[head] = (struct vring_desc){ .addr = indirect_gpa, .len = nsegs * 16,
                                          .flags = VRING_DESC_F_INDIRECT, .next = 0 };
    } else {
        head = q->free_head;
        uint16_t prev = 0;
        for (uint32_t k = 0; k < nsegs; k++) {
            uint16_t i = take_desc(q);
            desc[i] = (struct vring_desc){ .addr = segs[k].gpa, .len = segs[k].len,
                                           .flags = segs[k].write ? VRING_DESC_F_WRITE : 0, .next = 0 };
            if (k) {
                desc[prev].flags |= VRING_DESC_F_NEXT;
                desc[prev].next = i;
                q->next[prev] = i;   /* private copy of the link: freeing never trusts guest memory */
            }
            prev = i;
        }
    }
    q->ndesc[head] = (uint16_t)need;
    q->token[head] = token;
    /* Plain store: the entry is published by the release store of avail->idx in vnb_drv_publish. */
    avail->ring[q->avail_idx & (q->num - 1)] = head;
    q->avail_idx++;
    q->num_added++;
    return head;
}

void vnb_drv_publish(struct vnb_drv_vq *q)
{
    if (q->flags & VNB_F_PACKED) {
        drv_packed_publish(q);
        return;
    }
    struct vring_avail *avail = q->avail;
    /* Release: descriptors and ring entries are visible to the device before the new idx. */
    vnb_store_release(&avail->idx, q->avail_idx);
}

/* virtqueue_kick_prepare: should the device be kicked for what was published since the last call? */
int vnb_drv_kick_prepare(struct vnb_drv_vq *q)
{
    if (q->flags & VNB_F_PACKED)
        return drv_packed_kick_prepare(q);
    struct vring_used *used = q->used;
    /* Full barrier: the idx store must be visible before we read avail_event/flags (pairs with the
     * device's barrier in enable_notify), or a device going to sleep could miss these buffers. */
    vnb_mb();
    uint16_t new_idx = q->avail_idx, old = (uint16_t)(new_idx - q->num_added);
    q->num_added = 0;
    if (q->flags & VNB_F_EVENT_IDX)
        return vring_need_event(vnb_load_relaxed(vnb_avail_event(used, q->num)), new_idx, old);
    return !(vnb_load_relaxed(&used->flags) & VRING_USED_F_NO_NOTIFY);
}

int vnb_drv_used_pending(struct vnb_drv_vq *q)
{
    if (q->flags & VNB_F_PACKED)
        return drv_packed_used_pending(q);
    struct vring_used *used = q->used;
    return (uint16_t)(vnb_load_acquire(&used->idx) - q->last_used_idx);
}

/* Take one used element. Returns 1 with len and token set, 0 if none. */
int vnb_drv_get_used(struct vnb_drv_vq *q, uint32_t *len, uint32_t *token)
{
    if (q->flags & VNB_F_PACKED)
        return drv_packed_get_used(q, len, token);
    struct vring_used *used = q->used;
    /* Acquire: the element is read only after seeing the idx that published it. */
    if (vnb_load_acquire(&used->idx) == q->last_used_idx)
        return 0;
    struct vring_used_elem e = used->ring[q->last_used_idx & (q->num - 1)];
    q->last_used_idx++;
    uint16_t head = (uint16_t)e.id;
    if (e.id >= q->num || q->ndesc[head] == 0)
        return -EIO;   /* the device returned a head we never gave it */
    /* Walk our private copy of the chain to its tail and splice it onto the free list. */
    uint16_t n = q->ndesc[head], tail = head;
    for (uint16_t k = 1; k < n; k++)
        tail = q->next[tail];
    q->next[tail] = q->free_head;
    q->free_head = head;
    q->num_free += n;
    q->ndesc[head] = 0;
    *len = e.len;
    *token = q->token[head];
    return 1;
}

/* Ask for an interrupt once `delay` more buffers are used (0: the next one). Returns 1 if used buffers
 * are already pending, so the caller must not sleep. */
int vnb_drv_enable_cb(struct vnb_drv_vq *q, uint16_t delay)
{
    if (q->flags & VNB_F_PACKED)
        return drv_packed_enable_cb(q, delay);
    struct vring_avail *avail = q->avail;
    struct vring_used *used = q->used;
    if (q->flags & VNB_F_EVENT_IDX)
        vnb_store_relaxed(vnb_used_event(avail, q->num), (uint16_t)(q->last_used_idx + delay));
    else
        vnb_store_relaxed(&avail->flags, (uint16_t)0);
    /* Full barrier: used_event/flags must be visible before we re-read used->idx (pairs with the
     * device's barrier in should_notify), or both sides could wait for each other. */
    vnb_mb();
    return vnb_load_acquire(&used->idx) != q->last_used_idx;
}

void vnb_drv_disable_cb(struct vnb_drv_vq *q)
{
    if (q->flags & VNB_F_PACKED) {
        drv_packed_disable_cb(q);
        return;
    }
    struct vring_avail *avail = q->avail;
    /* With EVENT_IDX, a used_event left behind suppresses interrupts by itself. */
    if (!(q->flags & VNB_F_EVENT_IDX))
        vnb_store_relaxed(&avail->flags, (uint16_t)VRING_AVAIL_F_NO_INTERRUPT);
}

int vnb_drv_need_event(uint16_t event_idx, uint16_t new_idx, uint16_t old)
{
    return vring_need_event(event_idx, new_idx, old);
}
