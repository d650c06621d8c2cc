/* Split virtqueue layout (VIRTIO 1.2 §2.7) and the barriers both sides use.
 * Ring memory is shared with the other side, so every load of a field the other side writes is
 * an explicit atomic (never a plain read the compiler could re-read or tear). */
#ifndef VNB_RING_H
#define VNB_RING_H
#include <stdint.h>

#define VRING_DESC_F_NEXT 1
#define VRING_DESC_F_WRITE 2
#define VRING_DESC_F_INDIRECT 4
#define VRING_AVAIL_F_NO_INTERRUPT 1
#define VRING_USED_F_NO_NOTIFY 1
#define VNB_MAX_QUEUE_SIZE 32768

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
/* cffi:end */

/* Ring headers; the trailing event fields sit after ring[num] and are reached with the helpers below. */
struct vring_avail {
    uint16_t flags;
    uint16_t idx;
    uint16_t ring[];
};

struct vring_used {
    uint16_t flags;
    uint16_t idx;
    struct vring_used_elem ring[];
};

#define vnb_load_acquire(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define vnb_load_relaxed(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define vnb_store_release(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define vnb_store_relaxed(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#define vnb_mb() __atomic_thread_fence(__ATOMIC_SEQ_CST)

static inline uint16_t *vring_used_event(struct vring_avail *avail, uint16_t num)
{
    return &avail->ring[num];
}

static inline uint16_t *vring_avail_event(struct vring_used *used, uint16_t num)
{
    return (uint16_t *)&used->ring[num];
}

/* §2.7.10: notify iff event_idx lies in [old, new_idx). Wraps naturally in 16 bits. */
static inline int vring_need_event(uint16_t event_idx, uint16_t new_idx, uint16_t old)
{
    return (uint16_t)(new_idx - event_idx - 1) < (uint16_t)(new_idx - old);
}

static inline uint64_t vring_desc_size(uint32_t num) { return 16ull * num; }
static inline uint64_t vring_avail_size(uint32_t num) { return 6ull + 2ull * num; }
static inline uint64_t vring_used_size(uint32_t num) { return 6ull + 8ull * num; }

#endif
