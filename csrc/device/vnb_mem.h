/* Guest memory table and the one bounds-checked guest-physical -> host translation.
 * Every access vnetbe makes to guest-controlled addresses goes through vnb_mem_map / vnb_mem_ptr. */
#ifndef VNB_MEM_H
#define VNB_MEM_H
#include <stdint.h>
#include <stddef.h>
#include <sys/uio.h>

#define VNB_MAX_REGIONS 64

/* cffi:begin */
struct vnb_region {
    uint64_t gpa;
    uint64_t size;
    uint64_t hva;   /* host virtual address of gpa */
};

struct vnb_mem {
    uint32_t nregions;
    struct vnb_region r[64];   /* VNB_MAX_REGIONS; sorted by gpa, non-overlapping */
    /* The dirty log while a migration runs (vnb_log.h), or log_size 0: one bit per 4 KiB page of
     * guest-physical address, log_size bytes at host address log_hva. */
    uint64_t log_hva;
    uint64_t log_size;
};

int vnb_mem_add_region(struct vnb_mem *m, uint64_t gpa, uint64_t size, uint64_t hva);
int vnb_mem_map(const struct vnb_mem *m, uint64_t gpa, uint64_t len, struct iovec *iov, int max_iov);
void *vnb_mem_ptr(const struct vnb_mem *m, uint64_t gpa, uint64_t len);
/* cffi:end */

#endif
