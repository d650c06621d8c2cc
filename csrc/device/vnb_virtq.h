/* Device side of a virtqueue, split (§2.7) or packed (§2.8, VNB_F_PACKED): one API over both
 * formats, pure ring logic over a guest memory table. No system calls here; "should the driver be
 * interrupted" is returned as a value. The formats live in vnb_vq_split.c and vnb_vq_packed.c,
 * what they share (a descriptor to iovecs, faults) in vnb_vq_chain.c. */
#ifndef VNB_VIRTQ_H
#define VNB_VIRTQ_H
#include <stdint.h>
#include <sys/uio.h>
#include "vnb_mem.h"
#include "vnb_ring.h"
#include "vnb_fault.h"

#define VNB_MAX_IOV 1024   /* UIO_MAXIOV: one chain must fit one writev/readv */

/* cffi:begin */
/* Entries of one indirect table, as vhost's get_indirect (USHRT_MAX + 1). */
#define VNB_MAX_INDIRECT 65536
/* Descriptors one pop may walk: the ring part is at most num (else it loops), and since INDIRECT
 * with NEXT is refused an indirect table can only end the chain. Zero-length descriptors map to
 * no iovec, so this, not VNB_MAX_IOV, is what bounds the work a guest can make one pop do. */
#define VNB_MAX_CHAIN_DESC 98304

struct vnb_vq {
    /* set up by vnb_vq_init: translated once, validated to lie inside guest memory */
    const struct vnb_mem *mem;
    void *desc;          /* struct vring_desc[num]; packed: struct vring_packed_desc[num] */
    void *avail;         /* struct vring_avail; packed: the driver's struct vring_packed_desc_event */
    void *used;          /* struct vring_used; packed: the device's struct vring_packed_desc_event */
    uint64_t desc_gpa, avail_gpa, used_gpa;
    uint64_t log_used_gpa;   /* where used-ring writes are logged (vhost-user's log_guest_addr; used_gpa) */
    uint32_t num;
    uint32_t flags;      /* VNB_VQ_F_* from the negotiated features */
    /* device state, as vhost names it (packed: ring positions 0..num-1, each with its wrap counter) */
    uint16_t last_avail_idx;
    uint16_t used_idx;          /* next used->idx value to publish (shadow); packed: where the next used
                                 * descriptor goes */
    uint16_t signalled_used;
    uint8_t signalled_used_valid;
    uint8_t broken;             /* a fault stopped the queue: no further pops */
    int32_t fault;              /* enum vnb_fault of the first fault */
    uint64_t faults;            /* number of faults seen (stays 1: the queue stops at the first) */
    /* packed only */
    uint8_t avail_wrap;         /* the wrap counter of last_avail_idx (§2.8.1), 1 at the start */
    uint8_t used_wrap;          /* and of used_idx */
    uint8_t used_since_signal;  /* a used descriptor was written since should_notify last decided */
    uint8_t batch_pending;      /* used descriptors written whose first one's flags wait for the flush */
    uint16_t batch_head;        /* that first one: the driver polls it, so its flags go out last */
    uint16_t batch_flags;
    uint16_t event_flags;       /* what the device event suppression structure says (shadow) */
    uint16_t pad;
    uint32_t inflight_desc;     /* ring descriptors held by popped, not yet used buffers (<= num) */
    uint32_t npopped;           /* buffers popped, ever: pop_log[npopped % 32768] is the next slot */
    uint16_t inflight[32768];   /* ring descriptors the buffer of each id holds (0: not in flight) */
    uint16_t pop_log[32768];    /* buffer ids in the order popped: unpop gives the last ones back */
};

struct vnb_chain {
    uint16_t head;
    uint16_t nout;       /* device-readable iovecs, first in iov[] */
    uint16_t nin;        /* device-writable iovecs, after the readable ones */
    uint32_t ndesc;      /* descriptors walked (indirect tables included), <= VNB_MAX_CHAIN_DESC */
    uint16_t nring;      /* descriptors of the ring itself the chain holds until it is used */
    uint64_t out_len;
    uint64_t in_len;
    struct iovec iov[1024];  /* VNB_MAX_IOV */
};

int vnb_vq_init(struct vnb_vq *vq, const struct vnb_mem *mem, uint32_t num, uint64_t desc_gpa,
                uint64_t avail_gpa, uint64_t used_gpa, uint32_t flags);
/* Where the queue resumes: split, the free-running indices; packed, ring position | wrap << 15 each
 * (the vhost-user encoding). -EINVAL for a packed position beyond the ring. */
int vnb_vq_set_base(struct vnb_vq *vq, uint16_t last_avail_idx, uint16_t used_idx);
void vnb_vq_get_base(const struct vnb_vq *vq, uint16_t *last_avail_idx, uint16_t *used_idx);
/* The guest-physical address used-ring writes are logged at while the memory has a dirty log
 * (vhost-user's log_guest_addr; by default the used ring's own). Split rings only: a packed ring's
 * used descriptors are in its descriptor ring, logged where they are. */
void vnb_vq_set_log_addr(struct vnb_vq *vq, uint64_t log_used_gpa);
int vnb_vq_pop(struct vnb_vq *vq, struct vnb_chain *c);
void vnb_vq_unpop(struct vnb_vq *vq, uint16_t n);
/* Buffers the driver has made available and we have not popped: split, how many; packed, 1 or 0. */
int vnb_vq_avail_pending(struct vnb_vq *vq);
/* Buffers available and not popped, counted up to max (packed: by walking the ring's flags). */
int vnb_vq_avail_count(struct vnb_vq *vq, uint16_t max);
void vnb_vq_add_used(struct vnb_vq *vq, uint16_t head, uint32_t len);
void vnb_vq_flush_used(struct vnb_vq *vq);
int vnb_vq_should_notify(struct vnb_vq *vq);
void vnb_vq_disable_notify(struct vnb_vq *vq);
int vnb_vq_enable_notify(struct vnb_vq *vq);
int vnb_vq_fail(struct vnb_vq *vq, int fault);

/* What another device side (the kernel's vhost worker) has put on a used ring, counted from the
 * outside: zero it, set seen_idx to used->idx at the start, then call vnb_vq_tally_used often enough
 * that fewer than 65536 entries pass between two calls (the index is 16 bits). Entries are exact;
 * frames and bytes read the entries (and, with MRG_RXBUF, the headers they point to), which are
 * only still theirs while fewer than num entries pass: older ones count one frame each, unread. */
struct vnb_used_tally {
    uint64_t entries;      /* used entries */
    uint64_t frames;       /* one per entry; with MRG_RXBUF one per header (its num_buffers entries) */
    uint64_t bytes;        /* used lengths less one hdr_len per frame (of the entries read) */
    uint64_t unread;       /* entries counted without reading them (a call came after num or more) */
    uint32_t skip;         /* entries of the current merged frame still to come */
    uint16_t seen_idx;     /* used->idx as of the last call */
    uint16_t pad;
};
void vnb_vq_tally_used(const struct vnb_vq *vq, uint32_t hdr_len, struct vnb_used_tally *t);   /* split only */
/* cffi:end */

/* cffi reads only literals: tie them to what they stand for. */
_Static_assert(VNB_MAX_CHAIN_DESC == VNB_MAX_QUEUE_SIZE + VNB_MAX_INDIRECT, "VNB_MAX_CHAIN_DESC");
_Static_assert(sizeof(((struct vnb_chain *)0)->iov) == VNB_MAX_IOV * sizeof(struct iovec), "iov[]");
_Static_assert(sizeof(((struct vnb_vq *)0)->inflight) == VNB_MAX_QUEUE_SIZE * sizeof(uint16_t), "inflight[]");
_Static_assert(sizeof(((struct vnb_vq *)0)->pop_log) == VNB_MAX_QUEUE_SIZE * sizeof(uint16_t), "pop_log[]");

#endif
