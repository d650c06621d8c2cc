#include "vnb_mem.h"

/* cffi reads the literal in struct vnb_mem: tie it to its name. */
_Static_assert(sizeof(((struct vnb_mem *)0)->r) == VNB_MAX_REGIONS * sizeof(struct vnb_region), "r[]");
#include <errno.h>
#include <string.h>

int vnb_mem_add_region(struct vnb_mem *m, uint64_t gpa, uint64_t size, uint64_t hva)
{
    if (m->nregions >= VNB_MAX_REGIONS)
        return -E2BIG;
    if (size == 0 || gpa + size < gpa || hva + size < hva)
        return -EINVAL;
    uint32_t pos = 0;
    while (pos < m->nregions && m->r[pos].gpa < gpa)
        pos++;
    /* Overlap with a neighbour would make translation ambiguous. */
    if (pos > 0 && m->r[pos - 1].gpa + m->r[pos - 1].size > gpa)
        return -EEXIST;
    if (pos < m->nregions && gpa + size > m->r[pos].gpa)
        return -EEXIST;
    memmove(&m->r[pos + 1], &m->r[pos], (m->nregions - pos) * sizeof(m->r[0]));
    m->r[pos] = (struct vnb_region){ .gpa = gpa, .size = size, .hva = hva };
    m->nregions++;
    return 0;
}

static const struct vnb_region *find_region(const struct vnb_mem *m, uint64_t gpa)
{
    /* Few regions (a VMM has a handful): a linear scan beats a binary search here. */
    for (uint32_t i = 0; i < m->nregions; i++) {
        const struct vnb_region *r = &m->r[i];
        if (gpa >= r->gpa && gpa - r->gpa < r->size)
            return r;
    }
    return NULL;
}

/* Map [gpa, gpa+len) to host iovecs, splitting where it crosses from one region into an adjacent one.
 * Returns the number of iovecs, -EFAULT if any byte lies outside guest memory (a hole or past the end),
 * -ENOBUFS if more than max_iov pieces would be needed. len == 0 maps to zero iovecs but the address
 * must still lie inside guest memory. */
int vnb_mem_map(const struct vnb_mem *m, uint64_t gpa, uint64_t len, struct iovec *iov, int max_iov)
{
    if (gpa + len < gpa)
        return -EFAULT;
    if (len == 0)
        return find_region(m, gpa) ? 0 : -EFAULT;
    int n = 0;
    while (len) {
        const struct vnb_region *r = find_region(m, gpa);
        if (!r)
            return -EFAULT;
        if (n >= max_iov)
            return -ENOBUFS;
        uint64_t off = gpa - r->gpa;
        uint64_t chunk = r->size - off;
        if (chunk > len)
            chunk = len;
        iov[n].iov_base = (void *)(uintptr_t)(r->hva + off);
        iov[n].iov_len = chunk;
        n++;
        gpa += chunk;
        len -= chunk;
    }
    return n;
}

/* A contiguous host pointer for [gpa, gpa+len) or NULL: for rings and headers, which must not be split. */
void *vnb_mem_ptr(const struct vnb_mem *m, uint64_t gpa, uint64_t len)
{
    const struct vnb_region *r = find_region(m, gpa);
    if (!r || gpa + len < gpa)
        return NULL;
    uint64_t off = gpa - r->gpa;
    if (len > r->size - off)
        return NULL;
    return (void *)(uintptr_t)(r->hva + off);
}
