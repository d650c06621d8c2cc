/* The fuzz targets' reference walker of a split-ring chain (VIRTIO 1.2 §2.7) and of a packed-ring
 * buffer (§2.8), written from the spec and the bounds in vnb_virtq.h, independent of vnb_virtq.c: guest-physical reads go through the target's own
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

/* ---- packed rings (§2.8) ---- */

struct ref_packed {
    uint16_t idx;          /* the next slot to look at, and its lap's wrap counter */
    uint8_t wrap;
    uint32_t inflight;     /* slots held by buffers taken */
};

static int ref_packed_avail(uint16_t flags, uint8_t wrap)
{
    return !!(flags & VNB_PACKED_F_AVAIL) == wrap && !!(flags & VNB_PACKED_F_USED) != wrap;
}

/* §2.8.7: an indirect table's entries are used in order, all of them; only WRITE counts. */
static int ref_indirect_packed(struct ref_chain *c, uint64_t addr, uint32_t len, int negotiated)
{
    if (!negotiated)
        return VNB_FAULT_INDIRECT_NOT_NEGOTIATED;
    if (len == 0 || len % 16 || len / 16 > VNB_MAX_INDIRECT)
        return VNB_FAULT_INDIRECT_LEN;
    if (addr + len < addr || !ref_inside_one(addr, len))
        return VNB_FAULT_DESC_ADDR;
    c->ind_gpa = addr;
    c->ind_len = len;
    for (uint32_t i = 0; i < len / 16; i++) {
        struct vring_packed_desc p;
        ref_read(addr + 16ull * i, &p, 16);
        if (p.flags & VRING_DESC_F_INDIRECT)
            return VNB_FAULT_NESTED_INDIRECT;
        struct rdesc d = { p.addr, p.len, (uint16_t)(p.flags & VRING_DESC_F_WRITE), 0 };
        int f = ref_add(c, &d);
        if (f)
            return f;
    }
    return 0;
}

/* The next buffer of a packed ring: 1 with *c (c->head is its id) and *rp advanced, 0 if none, or
 * -fault. *nslots: the ring slots the buffer holds. A walk made before the device runs cannot know
 * which buffers the device will have used by then, so an id taken twice is not refused here (the
 * device refuses it only while in flight): the buffers allowed are then a superset, never fewer. */
static int ref_pop_packed(uint64_t desc_gpa, uint32_t num, struct ref_packed *rp, int indirect,
                          struct ref_chain *c, uint32_t *nslots)
{
    uint16_t idx = rp->idx;
    uint8_t wrap = rp->wrap;
    struct vring_packed_desc p;
    ref_read(desc_gpa + 16ull * idx, &p, 16);
    if (!ref_packed_avail(p.flags, wrap))
        return 0;
    memset(c, 0, sizeof(*c));
    uint32_t seen = 0;
    for (;;) {
        ref_read(desc_gpa + 16ull * idx, &p, 16);
        if (!ref_packed_avail(p.flags, wrap))
            return -VNB_FAULT_CHAIN_FLAGS;
        if (++seen + rp->inflight > num)
            return seen > num ? -VNB_FAULT_LOOP : -VNB_FAULT_AVAIL_IDX;
        if ((p.flags & VRING_DESC_F_INDIRECT) && (p.flags & VRING_DESC_F_NEXT))
            return -VNB_FAULT_INDIRECT_NEXT;
        struct rdesc d = { p.addr, p.len, (uint16_t)(p.flags & VRING_DESC_F_WRITE), 0 };
        int f = (p.flags & VRING_DESC_F_INDIRECT) ? ref_indirect_packed(c, p.addr, p.len, indirect) : ref_add(c, &d);
        if (f)
            return -f;
        if (++idx == num) {
            idx = 0;
            wrap ^= 1;
        }
        if (!(p.flags & VRING_DESC_F_NEXT))
            break;
    }
    if (p.id >= num)
        return -VNB_FAULT_BUFFER_ID;
    rp->inflight += seen;
    rp->idx = idx;
    rp->wrap = wrap;
    c->head = p.id;
    *nslots = seen;
    return 1;
}

/* Slots from position a to position b (vhost-user encoding: index | wrap << 15) going forward, with
 * at most one lap between them. */
static uint32_t ref_packed_dist(uint16_t a, uint16_t b, uint32_t num)
{
    uint32_t la = (a & 0x7fffu) + ((a >> 15) ? 0 : num), lb = (b & 0x7fffu) + ((b >> 15) ? 0 : num);
    return (lb + 2 * num - la) % (2 * num);
}

#endif
