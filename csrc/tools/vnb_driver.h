/* Driver side of a virtqueue, split or packed (VNB_F_PACKED), as a guest's virtio_ring.c does it:
 * pure ring logic, no I/O; one API over both formats (vnb_driver.c, vnb_driver_packed.c).
 * The guest is our own test and benchmark tool, so its private bookkeeping (free list, tokens) lives
 * outside guest memory where a device could not corrupt it. */
#ifndef VNB_DRIVER_H
#define VNB_DRIVER_H
#include <stdint.h>
#include "vnb_mem.h"
#include "vnb_ring.h"

/* cffi:begin */

struct vnb_seg {
    uint64_t gpa;
    uint32_t len;
    uint32_t write;     /* 1: device-writable */
};

struct vnb_drv_vq {
    void *desc;
    void *avail;
    void *used;
    uint32_t num;
    uint32_t flags;
    uint16_t free_head;
    uint16_t num_free;
    uint16_t avail_idx;         /* shadow of avail->idx: what we have published or will */
    uint16_t last_used_idx;
    uint16_t num_added;         /* chains (packed: ring slots) added since the last kick decision */
    /* packed: avail_idx and last_used_idx are ring positions, each with its wrap counter */
    uint8_t avail_wrap, used_wrap;
    uint8_t pending;            /* a chain added since the last publish: its head's flags wait for it */
    uint8_t _pad;
    uint16_t pending_pos, pending_flags;
    uint16_t event_flags;       /* what our (driver) event suppression structure says (shadow) */
    uint16_t next[32768];       /* private free list */
    uint16_t ndesc[32768];      /* descriptors held by the chain headed here */
    uint32_t token[32768];      /* caller's cookie per head */
};

int vnb_drv_vq_init(struct vnb_drv_vq *q, const struct vnb_mem *mem, uint32_t num, uint64_t desc_gpa,
                    uint64_t avail_gpa, uint64_t used_gpa, uint32_t flags);
int vnb_drv_add(struct vnb_drv_vq *q, const struct vnb_seg *segs, uint32_t nsegs, void *indirect_table,
                uint64_t indirect_gpa, uint32_t token);
void vnb_drv_publish(struct vnb_drv_vq *q);
int vnb_drv_kick_prepare(struct vnb_drv_vq *q);
int vnb_drv_used_pending(struct vnb_drv_vq *q);
int vnb_drv_get_used(struct vnb_drv_vq *q, uint32_t *len, uint32_t *token);
int vnb_drv_enable_cb(struct vnb_drv_vq *q, uint16_t delay);
void vnb_drv_disable_cb(struct vnb_drv_vq *q);
/* The kernel's vring_need_event (§2.7.10), which both sides use, callable from the tests. */
int vnb_drv_need_event(uint16_t event_idx, uint16_t new_idx, uint16_t old);
/* cffi:end */

#endif
