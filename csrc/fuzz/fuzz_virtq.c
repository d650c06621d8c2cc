/* libFuzzer target: the device side of the split ring (csrc/device/vnb_virtq.c) over guest memory
 * the input fills. Oracles, beyond "no crash" (ASan/UBSan):
 *  - a reference walker, written here from the rules and independent of vnb_virtq.c, agrees on every
 *    pop: the same fault or the same chain (head, readable and writable bytes, byte for byte);
 *  - every iovec lies inside one region's host buffer;
 *  - one pop walks at most VNB_MAX_CHAIN_DESC descriptors;
 *  - the device writes only the used ring, and used->idx equals a shadow count of what it used.
 *
 * Input: byte 0 picks the queue size (a power of two up to 256), byte 1 the negotiated flags, bytes
 * 2-3 the ring position; the rest fills guest memory: regions A and B (adjacent guest-physically,
 * separate host buffers, so buffers split across them) and C past a hole. */
#include "vnb_mem.h"
#include "vnb_virtq.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RSIZE 0x4000u
static const uint64_t GPA[3] = { 0x0, RSIZE, 0x10000 };   /* A, B adjacent; C after a hole */
#define DESC_GPA 0x0
#define AVAIL_GPA 0x1000
#define USED_GPA 0x1400

static uint8_t *host[3];

#define CHECK(c, ...) do { if (!(c)) { fprintf(stderr, "fuzz_virtq: " __VA_ARGS__); fputc('\n', stderr); abort(); } } while (0)

#include "ref_ring.h"

/* ---- comparing the device's chain with the reference's ---- */

static int merge(const struct piece *in, int n, struct piece *out)
{
    int m = 0;
    for (int i = 0; i < n; i++) {
        if (m && out[m - 1].hva + out[m - 1].len == in[i].hva)
            out[m - 1].len += in[i].len;
        else
            out[m++] = in[i];
    }
    return m;
}

static void same_pieces(const struct iovec *iov, int n, const struct piece *want, int nwant, const char *what)
{
    static struct piece a[MAXP], am[MAXP], bm[MAXP];
    for (int i = 0; i < n; i++) {
        a[i] = (struct piece){ (uint64_t)(uintptr_t)iov[i].iov_base, iov[i].iov_len };
        CHECK(iov[i].iov_len > 0, "empty %s iovec", what);
        int inside = 0;
        for (int r = 0; r < 3; r++)
            inside |= (uint8_t *)iov[i].iov_base >= host[r] &&
                      (uint8_t *)iov[i].iov_base + iov[i].iov_len <= host[r] + RSIZE;
        CHECK(inside, "%s iovec %d outside guest memory", what, i);
    }
    int ma = merge(a, n, am), mb = merge(want, nwant, bm);
    CHECK(ma == mb && !memcmp(am, bm, sizeof(struct piece) * ma), "%s iovecs differ from the reference", what);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 4)
        return 0;
    static int init;
    if (!init) {
        for (int r = 0; r < 3; r++)
            host[r] = malloc(RSIZE);   /* separate buffers: ASan catches a byte past any of them */
        init = 1;
    }
    uint32_t num = 1u << (data[0] % 9);                    /* 1 .. 256 */
    uint32_t flags = data[1] & (VNB_F_EVENT_IDX | VNB_F_INDIRECT);
    uint16_t base = (uint16_t)(data[2] | data[3] << 8);
    fill_regions(data + 4, size - 4);
    struct vnb_mem mem = { 0 };
    for (int r = 0; r < 3; r++)
        CHECK(vnb_mem_add_region(&mem, GPA[r], RSIZE, (uint64_t)(uintptr_t)host[r]) == 0, "region");
    static struct vnb_vq vq;
    CHECK(vnb_vq_init(&vq, &mem, num, DESC_GPA, AVAIL_GPA, USED_GPA, flags) == 0, "vq_init");
    /* The device starts where the ring says it is, as after a hand-over: used->idx = base. */
    memcpy(host[0] + USED_GPA + 2, &base, 2);
    vnb_vq_set_base(&vq, base, base);

    static uint8_t before[3][RSIZE];
    for (int r = 0; r < 3; r++)
        memcpy(before[r], host[r], RSIZE);

    static struct vnb_chain c;
    static struct ref_chain want;
    uint16_t last = base, used = base;
    for (uint32_t k = 0; k < num + 2; k++) {
        int rc = vnb_vq_pop(&vq, &c);
        int rr = ref_pop(DESC_GPA, AVAIL_GPA, num, last, !!(flags & VNB_F_INDIRECT), &want);
        CHECK(rc == rr, "pop %u: device %d, reference %d", k, rc, rr);
        if (rc <= 0)
            break;
        CHECK(c.ndesc <= VNB_MAX_CHAIN_DESC, "one pop walked %u descriptors", c.ndesc);
        CHECK(c.head == want.head, "head %u vs %u", c.head, want.head);
        CHECK(c.out_len == want.out_len && c.in_len == want.in_len, "lengths differ");
        same_pieces(c.iov, c.nout, want.out, want.nout, "readable");
        same_pieces(c.iov + c.nout, c.nin, want.in, want.nin, "writable");
        last++;
        vnb_vq_add_used(&vq, c.head, (uint32_t)(c.in_len > 0xffffffffu ? 0xffffffffu : c.in_len));
        used++;
        vnb_vq_flush_used(&vq);
        uint16_t uidx;
        memcpy(&uidx, host[0] + USED_GPA + 2, 2);
        CHECK(uidx == used, "used->idx %u, shadow %u", uidx, used);
        (void)vnb_vq_should_notify(&vq);
        (void)vnb_vq_enable_notify(&vq);
        vnb_vq_disable_notify(&vq);
    }
    if (vq.broken)
        CHECK(vnb_vq_pop(&vq, &c) == -vq.fault, "a broken queue popped again");

    /* Only the used ring may have changed: flags, idx, ring[num], avail_event. */
    uint64_t used_end = USED_GPA + 6 + 8ull * num;
    for (int r = 0; r < 3; r++)
        for (uint32_t i = 0; i < RSIZE; i++)
            if (host[r][i] != before[r][i]) {
                uint64_t gpa = GPA[r] + i;
                CHECK(gpa >= USED_GPA && gpa < used_end, "device wrote guest byte %#llx outside the used ring",
                      (unsigned long long)gpa);
            }
    return 0;
}
