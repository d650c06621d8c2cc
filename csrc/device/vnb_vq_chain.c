/* What the split and the packed ring share once a descriptor has been copied out of the ring:
 * turning its buffer into iovecs, finding an indirect table, and stopping the queue on a fault. */
#include "vnb_vq_impl.h"
#include <errno.h>

int vnb_vq_fail(struct vnb_vq *vq, int fault)
{
    if (!vq->broken) {
        /* Another thread may read these while the queue runs (vnb_dp_get_qstate): fault first,
         * then broken with release, so a reader that sees broken sees its fault. */
        __atomic_store_n(&vq->fault, fault, __ATOMIC_RELAXED);
        __atomic_store_n(&vq->broken, 1, __ATOMIC_RELEASE);
    }
    vq->faults++;
    return -fault;
}

int vnb_chain_add(struct vnb_vq *vq, struct vnb_chain *c, uint64_t addr, uint32_t len, int writable)
{
    if (!writable && c->nin)
        return vnb_vq_fail(vq, VNB_FAULT_ORDER);
    int used = c->nout + c->nin;
    int n = vnb_mem_map(vq->mem, addr, len, &c->iov[used], VNB_MAX_IOV - used);
    if (n == -ENOBUFS)
        return vnb_vq_fail(vq, VNB_FAULT_CHAIN_TOO_LONG);
    if (n < 0)
        return vnb_vq_fail(vq, VNB_FAULT_DESC_ADDR);
    if (writable) {
        c->nin += n;
        c->in_len += len;
    } else {
        c->nout += n;
        c->out_len += len;
    }
    return 0;
}

const void *vnb_chain_indirect(struct vnb_vq *vq, uint64_t addr, uint32_t len, uint32_t entry_size)
{
    if (!(vq->flags & VNB_F_INDIRECT)) {
        vnb_vq_fail(vq, VNB_FAULT_INDIRECT_NOT_NEGOTIATED);
        return NULL;
    }
    if (len == 0 || len % entry_size || len / entry_size > VNB_MAX_INDIRECT) {
        vnb_vq_fail(vq, VNB_FAULT_INDIRECT_LEN);
        return NULL;
    }
    /* The table must be contiguous in host memory; one that spans regions is refused as out of bounds. */
    const void *table = vnb_mem_ptr(vq->mem, addr, len);
    if (!table)
        vnb_vq_fail(vq, VNB_FAULT_DESC_ADDR);
    return table;
}
