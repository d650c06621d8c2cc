/* The two ring formats behind vnb_virtq.h's API, and what they share. Internal: not seen by cffi.
 * Calls go one way: vnb_virtq.c (the API) -> vnb_vq_split.c / vnb_vq_packed.c -> vnb_vq_chain.c. */
#ifndef VNB_VQ_IMPL_H
#define VNB_VQ_IMPL_H
#include "vnb_virtq.h"
#include "vnb_log.h"

#define VNB_VQ_INTERNAL __attribute__((visibility("hidden")))

static inline int vnb_vq_packed(const struct vnb_vq *vq) { return vq->flags & VNB_F_PACKED; }

/* A write of len bytes at host address p inside the ring part that starts at host address base and
 * is logged from guest-physical address log_gpa: its pages marked dirty while a migration runs. */
static inline void vq_log(const struct vnb_vq *vq, uint64_t log_gpa, const void *base, const void *p, uint64_t len)
{
    if (vnb_logging(vq->mem))
        vnb_log_write(vq->mem, log_gpa + (uint64_t)((const uint8_t *)p - (const uint8_t *)base), len);
}

/* vnb_vq_chain.c: append one descriptor's buffer to the chain's iovecs (it may split across adjacent
 * regions); 0, or -fault after stopping the queue. */
VNB_VQ_INTERNAL int vnb_chain_add(struct vnb_vq *vq, struct vnb_chain *c, uint64_t addr, uint32_t len, int writable);
/* The indirect table a descriptor names: NULL (the queue stopped with its fault) unless it is
 * negotiated, sized in whole entries of entry_size, at most VNB_MAX_INDIRECT, and inside guest memory. */
VNB_VQ_INTERNAL const void *vnb_chain_indirect(struct vnb_vq *vq, uint64_t addr, uint32_t len, uint32_t entry_size);

/* vnb_vq_split.c */
VNB_VQ_INTERNAL int split_init(struct vnb_vq *vq, uint64_t desc_gpa, uint64_t avail_gpa, uint64_t used_gpa);
VNB_VQ_INTERNAL int split_pop(struct vnb_vq *vq, struct vnb_chain *c);
VNB_VQ_INTERNAL int split_avail_pending(struct vnb_vq *vq);
VNB_VQ_INTERNAL void split_add_used(struct vnb_vq *vq, uint16_t head, uint32_t len);
VNB_VQ_INTERNAL void split_flush_used(struct vnb_vq *vq);
VNB_VQ_INTERNAL int split_should_notify(struct vnb_vq *vq);
VNB_VQ_INTERNAL void split_disable_notify(struct vnb_vq *vq);
VNB_VQ_INTERNAL int split_enable_notify(struct vnb_vq *vq);

/* vnb_vq_packed.c */
VNB_VQ_INTERNAL int packed_init(struct vnb_vq *vq, uint64_t desc_gpa, uint64_t driver_gpa, uint64_t device_gpa);
VNB_VQ_INTERNAL int packed_pop(struct vnb_vq *vq, struct vnb_chain *c);
VNB_VQ_INTERNAL void packed_unpop(struct vnb_vq *vq, uint16_t n);
VNB_VQ_INTERNAL int packed_avail_pending(struct vnb_vq *vq);
VNB_VQ_INTERNAL int packed_avail_count(struct vnb_vq *vq, uint16_t max);
VNB_VQ_INTERNAL void packed_add_used(struct vnb_vq *vq, uint16_t id, uint32_t len);
VNB_VQ_INTERNAL void packed_flush_used(struct vnb_vq *vq);
VNB_VQ_INTERNAL int packed_should_notify(struct vnb_vq *vq);
VNB_VQ_INTERNAL void packed_disable_notify(struct vnb_vq *vq);
VNB_VQ_INTERNAL int packed_enable_notify(struct vnb_vq *vq);

#endif
