/* Split and packed virtqueue layouts (VIRTIO 1.2 §2.7, §2.8), from the kernel's own
 * <linux/virtio_ring.h>, and the barriers both sides use. Ring memory is shared with the other side, so every load of a field the
 * other side writes is an explicit atomic (never a plain read the compiler could re-read or tear). */
#ifndef VNB_RING_H
#define VNB_RING_H
#include <stdint.h>
#include <linux/virtio_ring.h>   /* struct vring_desc/avail/used, VRING_*_F_*, vring_need_event */

/* cffi:begin */
#define VNB_MAX_QUEUE_SIZE 32768
/* What the C sides act on of the negotiated features, one family for the device's queue, its
 * datapath and vnetbe's own driver (vnetbe.spec.ring_flags computes it from the feature bits). */
#define VNB_F_EVENT_IDX 1
#define VNB_F_INDIRECT 2
#define VNB_F_MRG_RXBUF 4
#define VNB_F_PACKED 8          /* VIRTIO_F_RING_PACKED: the queue is a packed virtqueue (§2.8) */
/* cffi:end */

#if 0   /* what cffi is told; the compiler takes <linux/virtio_ring.h>'s, and cffi checks they agree */
/* cffi:begin */
struct vring_desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};

struct vring_used_elem {
    uint32_t id;
    uint32_t len;
};

struct vring_packed_desc {
    uint64_t addr;
    uint32_t len;
    uint16_t id;
    uint16_t flags;
};

struct vring_packed_desc_event {
    uint16_t off_wrap;
    uint16_t flags;
};
/* cffi:end */
#endif

#define vnb_load_acquire(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define vnb_load_relaxed(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define vnb_store_release(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define vnb_store_relaxed(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#define vnb_mb() __atomic_thread_fence(__ATOMIC_SEQ_CST)

/* The event fields sit after ring[num] (§2.7.10); the kernel's vring_used_event/vring_avail_event
 * macros want a struct vring, we have the ring parts and num. */
static inline uint16_t *vnb_used_event(struct vring_avail *avail, uint16_t num)
{
    return &avail->ring[num];
}

static inline uint16_t *vnb_avail_event(struct vring_used *used, uint16_t num)
{
    return (uint16_t *)&used->ring[num];
}

/* Packed ring flags as masks (<linux/virtio_ring.h> gives the bit numbers). */
#define VNB_PACKED_F_AVAIL (1u << VRING_PACKED_DESC_F_AVAIL)
#define VNB_PACKED_F_USED (1u << VRING_PACKED_DESC_F_USED)
#define VNB_PACKED_WRAP (1u << VRING_PACKED_EVENT_F_WRAP_CTR)   /* in off_wrap, and in a 16-bit ring index */

static inline uint64_t vring_desc_size(uint32_t num) { return 16ull * num; }
static inline uint64_t vring_avail_size(uint32_t num) { return 6ull + 2ull * num; }
static inline uint64_t vring_used_size(uint32_t num) { return 6ull + 8ull * num; }

#endif
