/* Guest memory a front end takes away after it was mapped (a memfd shrunk by ftruncate, which an
 * unsealed memfd such as DPDK virtio-user's allows) faults with SIGBUS on the next access. That must
 * cost only that device: a thread that touches guest memory arms a recovery point first, and a SIGBUS
 * whose address lies in the armed guest memory jumps back to it instead of killing the process.
 * Faults anywhere else go to the handler that was there before (Python's faulthandler, or death). */
#ifndef VNB_GUARD_H
#define VNB_GUARD_H
#include <setjmp.h>
#include <stdint.h>
#include "vnb_mem.h"
#include "vnb_virtq.h"

struct vnb_guard {
    sigjmp_buf jb;               /* the recovery point: sigsetjmp(jb, 0) before arming */
    const struct vnb_mem *mem;   /* faults inside these mappings are recovered */
    struct vnb_guard *prev;      /* guards nest per thread */
};

/* Install the process-wide SIGBUS handler (once; later calls return its result). 0 or -errno. */
int vnb_guard_install(void);
/* Make g this thread's recovery point for faults inside mem (its sigsetjmp must already be done). */
void vnb_guard_arm(struct vnb_guard *g, const struct vnb_mem *mem);
void vnb_guard_disarm(struct vnb_guard *g);
/* Run fn(arg) with a recovery point armed for faults inside m: fn's result, or -EFAULT when the
 * memory behind m was gone (or the handler could not be installed). */
int vnb_run_guarded(const struct vnb_mem *m, int (*fn)(void *), void *arg);

/* cffi:begin */
/* Copy between guest memory and a host buffer, safely for the control plane: 0, -ERANGE when the
 * range is not inside one region, -EFAULT when the memory behind it is gone (SIGBUS recovered). */
int vnb_mem_read(const struct vnb_mem *m, uint64_t gpa, void *dst, uint64_t len);
int vnb_mem_write(const struct vnb_mem *m, uint64_t gpa, const void *src, uint64_t len);
/* SIGBUS faults recovered in this process since it started (every thread). */
uint64_t vnb_guard_recovered(void);
/* vnb_vq_pop and vnb_vq_tally_used for callers outside the datapath thread (the vhost datapath's
 * watcher reads the rings the kernel serves): -EFAULT when the memory behind the ring is gone. */
int vnb_vq_pop_guarded(struct vnb_vq *vq, struct vnb_chain *c);
int vnb_vq_tally_used_guarded(const struct vnb_vq *vq, uint32_t hdr_len, struct vnb_used_tally *t);
/* cffi:end */

#endif
