/* Driver side of the packed virtqueue (§2.8), after Linux drivers/virtio/virtio_ring.c (packed
 * variant): buffer ids from a private free list, a chain's head made available last, used
 * descriptors found at last_used_idx by their USED bit and skipped by the slots each id held. */
#include "vnb_driver_impl.h"
#include <errno.h>
#include <string.h>

static void set_event_flags(struct vnb_drv_vq *q, uint16_t flags);

static inline void advance(const struct vnb_drv_vq *q, uint16_t *idx, uint8_t *wrap)
{
    if (++*idx == q->num) {
        *idx = 0;
        *wrap ^= 1;
    }
}

int drv_packed_init(struct vnb_drv_vq *q, const struct vnb_mem *mem, uint64_t desc_gpa, uint64_t driver_gpa,
                    uint64_t device_gpa)
{
    q->desc = vnb_mem_ptr(mem, desc_gpa, vring_desc_size(q->num));
    q->avail = vnb_mem_ptr(mem, driver_gpa, sizeof(struct vring_packed_desc_event));
    q->used = vnb_mem_ptr(mem, device_gpa, sizeof(struct vring_packed_desc_event));
    if (!q->desc || !q->avail || !q->used)
        return -EFAULT;
    memset(q->desc, 0, vring_desc_size(q->num));
    memset(q->avail, 0, sizeof(struct vring_packed_desc_event));
    memset(q->used, 0, sizeof(struct vring_packed_desc_event));
    q->avail_wrap = q->used_wrap = 1;
    q->pending = 0;
    q->event_flags = VRING_PACKED_EVENT_FLAG_ENABLE;
    if (q->flags & VNB_F_EVENT_IDX) {
        /* As the split ring's used_event of 0: a notification when slot 0 is first used, and then
         * only where the driver moves the event (zeroed memory would say ENABLE: one for every flush). */
        struct vring_packed_desc_event *drv = q->avail;
        vnb_store_relaxed(&drv->off_wrap, (uint16_t)VNB_PACKED_WRAP);
        q->event_flags = VRING_PACKED_EVENT_FLAG_DISABLE;   /* force the store below */
        set_event_flags(q, VRING_PACKED_EVENT_FLAG_DESC);
    }
    return 0;
}

static inline uint16_t avail_flags(const struct vnb_drv_vq *q, uint16_t extra, uint8_t wrap)
{
    return extra | (wrap ? VNB_PACKED_F_AVAIL : VNB_PACKED_F_USED);
}

int drv_packed_add(struct vnb_drv_vq *q, const struct vnb_seg *segs, uint32_t nsegs, void *indirect_table,
                   uint64_t indirect_gpa, uint32_t token)
{
    struct vring_packed_desc *ring = q->desc;
    uint32_t need = indirect_table ? 1 : nsegs;
    if (nsegs == 0)
        return -EINVAL;
    if (need > q->num_free)
        return -ENOSPC;
    uint16_t id = q->free_head;   /* ids come off their own free list: one per chain */
    q->free_head = q->next[id];
    uint16_t pos = q->avail_idx, head = pos, head_flags = 0;
    uint8_t wrap = q->avail_wrap;
    if (indirect_table) {
        struct vring_packed_desc *t = indirect_table;
        for (uint32_t k = 0; k < nsegs; k++)
            t[k] = (struct vring_packed_desc){ .addr = segs[k].gpa, .len = segs[k].len,
                                               .flags = segs[k].write ? VRING_DESC_F_WRITE : 0 };
        ring[pos].addr = indirect_gpa;
        ring[pos].len = nsegs * (uint32_t)sizeof(struct vring_packed_desc);
        ring[pos].id = id;
        head_flags = avail_flags(q, VRING_DESC_F_INDIRECT, wrap);
        advance(q, &pos, &wrap);
    } else {
        for (uint32_t k = 0; k < nsegs; k++) {
            uint16_t f = avail_flags(q, (segs[k].write ? VRING_DESC_F_WRITE : 0) | (k + 1 < nsegs ? VRING_DESC_F_NEXT : 0),
                                     wrap);
            ring[pos].addr = segs[k].gpa;
            ring[pos].len = segs[k].len;
            ring[pos].id = id;
            if (k == 0)
                head_flags = f;
            else
                vnb_store_relaxed(&ring[pos].flags, f);   /* read by the device after the head's flags */
            advance(q, &pos, &wrap);
        }
    }
    if (!q->pending) {
        /* The device polls this head first: its flags wait for vnb_drv_publish, so the batch goes out whole. */
        q->pending = 1;
        q->pending_pos = head;
        q->pending_flags = head_flags;
    } else {
        /* Release: the chain's descriptors before its head's flags. */
        vnb_store_release(&ring[head].flags, head_flags);
    }
    q->ndesc[id] = (uint16_t)need;
    q->token[id] = token;
    q->num_free -= need;
    q->num_added += need;
    q->avail_idx = pos;
    q->avail_wrap = wrap;
    return id;
}

void drv_packed_publish(struct vnb_drv_vq *q)
{
    if (!q->pending)
        return;
    struct vring_packed_desc *ring = q->desc;
    /* Release: every descriptor added since the last publish is visible before the first head. */
    vnb_store_release(&ring[q->pending_pos].flags, q->pending_flags);
    q->pending = 0;
}

int drv_packed_kick_prepare(struct vnb_drv_vq *q)
{
    const struct vring_packed_desc_event *dev = q->used;
    /* Full barrier: as in the split ring, our flags before the device's event suppression. */
    vnb_mb();
    uint16_t new_idx = q->avail_idx, old = (uint16_t)(new_idx - q->num_added);
    q->num_added = 0;
    uint16_t flags = vnb_load_relaxed(&dev->flags);
    if (flags != VRING_PACKED_EVENT_FLAG_DESC || !(q->flags & VNB_F_EVENT_IDX))
        return flags != VRING_PACKED_EVENT_FLAG_DISABLE;
    uint16_t off_wrap = vnb_load_relaxed(&dev->off_wrap);
    uint16_t event = off_wrap & ~VNB_PACKED_WRAP;
    if ((off_wrap >> VRING_PACKED_EVENT_F_WRAP_CTR) != q->avail_wrap)
        event = (uint16_t)(event - q->num);
    return vring_need_event(event, new_idx, old);
}

int drv_packed_used_pending(struct vnb_drv_vq *q)
{
    const struct vring_packed_desc *ring = q->desc;
    /* Acquire: pairs with the device's release of the flags; id and len are read after. */
    uint16_t f = vnb_load_acquire(&ring[q->last_used_idx].flags);
    return !!(f & VNB_PACKED_F_AVAIL) == !!(f & VNB_PACKED_F_USED) && !!(f & VNB_PACKED_F_USED) == q->used_wrap;
}

int drv_packed_get_used(struct vnb_drv_vq *q, uint32_t *len, uint32_t *token)
{
    if (!drv_packed_used_pending(q))
        return 0;
    const struct vring_packed_desc *ring = q->desc;
    uint16_t id = vnb_load_relaxed(&ring[q->last_used_idx].id);
    uint32_t l = vnb_load_relaxed(&ring[q->last_used_idx].len);
    if (id >= q->num || q->ndesc[id] == 0)
        return -EIO;   /* the device returned an id we never gave it */
    uint16_t n = q->ndesc[id];
    for (uint16_t k = 0; k < n; k++)
        advance(q, &q->last_used_idx, &q->used_wrap);
    q->ndesc[id] = 0;
    q->next[id] = q->free_head;
    q->free_head = id;
    q->num_free += n;
    *len = l;
    *token = q->token[id];
    return 1;
}

static void set_event_flags(struct vnb_drv_vq *q, uint16_t flags)
{
    struct vring_packed_desc_event *drv = q->avail;
    if (q->event_flags != flags) {
        vnb_store_release(&drv->flags, flags);   /* release: after off_wrap, which DESC refers to */
        q->event_flags = flags;
    }
}

int drv_packed_enable_cb(struct vnb_drv_vq *q, uint16_t delay)
{
    if (q->flags & VNB_F_EVENT_IDX) {
        struct vring_packed_desc_event *drv = q->avail;
        uint32_t pos = q->last_used_idx + (delay < q->num ? delay : 0u);
        uint8_t wrap = q->used_wrap;
        if (pos >= q->num) {
            pos -= q->num;
            wrap ^= 1;
        }
        vnb_store_relaxed(&drv->off_wrap, (uint16_t)(pos | (wrap ? VNB_PACKED_WRAP : 0)));
        q->event_flags = VRING_PACKED_EVENT_FLAG_DISABLE;   /* force the store: off_wrap changed */
        set_event_flags(q, VRING_PACKED_EVENT_FLAG_DESC);
    } else {
        set_event_flags(q, VRING_PACKED_EVENT_FLAG_ENABLE);
    }
    /* Full barrier: as in the split ring, the enable before we look at the ring again. */
    vnb_mb();
    return drv_packed_used_pending(q);
}

void drv_packed_disable_cb(struct vnb_drv_vq *q)
{
    set_event_flags(q, VRING_PACKED_EVENT_FLAG_DISABLE);
}
