/* The fuzz targets' reference walker of a split-ring chain, written from VIRTIO 1.2 §2.7 and the
 * bounds in vnb_virtq.h, independent of vnb_virtq.c: guest-physical reads go through the target's own
 * region list (GPA[], host[], RSIZE, which the including file defines), nothing shared with vnb_mem.c. */
#ifndef FUZZ_REF_RING_H
#define FUZZ_REF_RING_H
#include "vnb_virtq.h"
#include <string.h>

#define MAXP 2048

struct piece { uint64_t hva, len; };
struct ref_chain {
    uint16_t head;
    int nout, nin;
    struct piece out[MAXP], in[MAXP];
    uint64_t out_len, in_len;
    uint64_t ind_gpa, ind_len;   /* the indirect table the chain ends in, if any */
};

/* ---- the reference: guest-physical reads through the region list, nothing shared with vnb_mem.c ---- */

/* Fill the regions' host buffers from the input, zero-padded; returns the bytes used. */
static size_t fill_regions(const uint8_t *data, size_t size)
{
    size_t used = 0;
    for (int r = 0; r < 3; r++) {
        size_t n = size - used > RSIZE ? RSIZE : size - used;
        memset(host[r], 0, RSIZE);
        memcpy(host[r], data + used, n);
        used += n;
    }
    return used;
}

static int region_of(uint64_t gpa)
{
    for (int r = 0; r < 3; r++)
        if (gpa >= GPA[r] && gpa - GPA[r] < RSIZE)
            return r;
    return -1;
}

static int ref_inside_one(uint64_t gpa, uint64_t len)
{
    int r = region_of(gpa);
    return r >= 0 && len <= RSIZE - (gpa - GPA[r]);
}

static void ref_read(uint64_t gpa, void *dst, size_t n)   /* caller checked ref_inside_one */
{
    int r = region_of(gpa);
    memcpy(dst, host[r] + (gpa - GPA[r]), n);
}

struct rdesc { uint64_t addr; uint32_t len; uint16_t flags, next; };

static int ref_add(struct ref_chain *c, const struct rdesc *d)
{
    int w = d->flags & VRING_DESC_F_WRITE;
    if (!w && c->nin)
        return VNB_FAULT_ORDER;
    if (d->len && d->addr + d->len < d->addr)
        return VNB_FAULT_DESC_ADDR;
    if (d->len == 0)
        return region_of(d->addr) >= 0 ? 0 : VNB_FAULT_DESC_ADDR;
    uint64_t gpa = d->addr, left = d->len;
    struct piece tmp[8];
    int n = 0;
    while (left) {
        int r = region_of(gpa);
        if (r < 0)
            return VNB_FAULT_DESC_ADDR;
        uint64_t k = RSIZE - (gpa - GPA[r]);
        if (k > left)
            k = left;
        tmp[n++] = (struct piece){ (uint64_t)(uintptr_t)(host[r] + (gpa - GPA[r])), k };
        gpa += k;
        left -= k;
    }
    if (c->nout + c->nin + n > VNB_MAX_IOV)
        return VNB_FAULT_CHAIN_TOO_LONG;
    for (int i = 0; i < n; i++) {
        if (w)
            c->in[c->nin++] = tmp[i];
        else
            c->out[c->nout++] = tmp[i];
    }
    if (w)
        c->in_len += d->len;
    else
        c->out_len += d->len;
    return 0;
}

static int ref_indirect(struct ref_chain *c, const struct rdesc *ind, int negotiated)
{
    if (!negotiated)
        return VNB_FAULT_INDIRECT_NOT_NEGOTIATED;
    if (ind->len == 0 || ind->len % 16 || ind->len / 16 > VNB_MAX_INDIRECT)
        return VNB_FAULT_INDIRECT_LEN;
    if (ind->addr + ind->len < ind->addr || !ref_inside_one(ind->addr, ind->len))
        return VNB_FAULT_DESC_ADDR;
    c->ind_gpa = ind->addr;
    c->ind_len = ind->len;
    uint32_t count = ind->len / 16, i = 0, seen = 0;
    for (;;) {
        struct rdesc d;
        ref_read(ind->addr + 16ull * i, &d, 16);
        if (++seen > count)
            return VNB_FAULT_LOOP;
        if (d.flags & VRING_DESC_F_INDIRECT)
            return VNB_FAULT_NESTED_INDIRECT;
        int f = ref_add(c, &d);
        if (f)
            return f;
        if (!(d.flags & VRING_DESC_F_NEXT))
            return 0;
        if (d.next >= count)
            return VNB_FAULT_NEXT_RANGE;
        i = d.next;
    }
}

/* 1 with *c, 0 if empty, or -fault; the rules of VIRTIO 1.2 §2.7 and vnb_virtq.h's bounds. */
static int ref_pop(uint64_t desc_gpa, uint64_t avail_gpa, uint32_t num, uint16_t last, int indirect,
                   struct ref_chain *c)
{
    uint16_t idx, head;
    ref_read(avail_gpa + 2, &idx, 2);
    uint16_t pending = (uint16_t)(idx - last);
    if (!pending)
        return 0;
    if (pending > num)
        return -VNB_FAULT_AVAIL_IDX;
    ref_read(avail_gpa + 4 + 2ull * (last % num), &head, 2);
    if (head >= num)
        return -VNB_FAULT_HEAD_RANGE;
    memset(c, 0, sizeof(*c));
    c->head = head;
    uint32_t i = head, seen = 0;
    for (;;) {
        struct rdesc d;
        ref_read(desc_gpa + 16ull * i, &d, 16);
        if (++seen > num)
            return -VNB_FAULT_LOOP;
        if ((d.flags & VRING_DESC_F_INDIRECT) && (d.flags & VRING_DESC_F_NEXT))
            return -VNB_FAULT_INDIRECT_NEXT;
        int f = (d.flags & VRING_DESC_F_INDIRECT) ? ref_indirect(c, &d, indirect) : ref_add(c, &d);
        if (f)
            return -f;
        if (!(d.flags & VRING_DESC_F_NEXT))
            return 1;
        if (d.next >= num)
            return -VNB_FAULT_NEXT_RANGE;
        i = d.next;
    }
}

#endif
