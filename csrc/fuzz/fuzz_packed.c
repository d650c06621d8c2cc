/* libFuzzer target: the device side of the packed ring (csrc/device/vnb_vq_packed.c, through the one
 * ring API of vnb_virtq.h) over guest memory the input fills, driven by a script of pops, unpops,
 * uses, flushes and notification decisions. Oracles, beyond "no crash" (ASan/UBSan):
 *  - every iovec lies inside one region's host buffer, and one pop walks at most
 *    VNB_MAX_CHAIN_DESC descriptors;
 *  - a popped buffer id is below num and not already in flight; the slots in flight never exceed num;
 *  - an unpop gives back exactly the last buffers popped: popping again returns the same ids, unless
 *    the bytes the device writes (used descriptors, its event structure) changed since they were
 *    popped: a hostile indirect table may lie over them, and then the buffers may differ, or fault;
 *  - the device writes only the descriptor ring (used descriptors) and its own event suppression
 *    structure, and each used descriptor it wrote carries the id it was given;
 *  - a queue that faulted stays stopped with its first fault.
 *
 * Input: byte 0 picks the queue size (any size 1..256), byte 1 the negotiated flags, byte 2 the length
 * of the op script that follows; the rest fills guest memory: regions A and B (adjacent, separate host
 * buffers) and C past a hole. */
#include "vnb_mem.h"
#include "vnb_virtq.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RSIZE 0x4000u
static const uint64_t GPA[3] = { 0x0, RSIZE, 0x10000 };
#define DESC_GPA 0x0          /* up to 256 * 16 bytes */
#define DRIVER_GPA 0x1000
#define DEVICE_GPA 0x1004

static uint8_t *host[3];

#define CHECK(c, ...) do { if (!(c)) { fprintf(stderr, "fuzz_packed: " __VA_ARGS__); fputc('\n', stderr); abort(); } } while (0)

static void check_iov(const struct iovec *iov, int n)
{
    for (int i = 0; i < n; i++) {
        int inside = 0;
        for (int r = 0; r < 3; r++)
            inside |= (uint8_t *)iov[i].iov_base >= host[r] &&
                      (uint8_t *)iov[i].iov_base + iov[i].iov_len <= host[r] + RSIZE;
        CHECK(inside && iov[i].iov_len > 0, "iovec %d outside guest memory or empty", i);
    }
}

/* FNV-1a over every byte the device may write: the descriptor ring and its event structure (the only
 * guest memory that changes during a run: no driver runs here). */
static uint64_t device_bytes_sum(uint32_t num)
{
    uint64_t h = 1469598103934665603ull;
    const uint8_t *p = host[0] + DESC_GPA;
    for (uint32_t i = 0; i < 16 * num; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    for (uint32_t i = 0; i < 4; i++)
        h = (h ^ host[0][DEVICE_GPA + i]) * 1099511628211ull;
    return h;
}

/* What identifies a popped chain beyond its id: its ring slots, descriptors and byte counts. */
static uint64_t chain_shape(const struct vnb_chain *c)
{
    return (uint64_t)c->nring | (uint64_t)c->ndesc << 16 | (c->out_len + 3 * c->in_len) << 32;
}

static struct vnb_vq vq;
static struct vnb_chain c;
static uint16_t inflight[256];      /* ids popped and not used, oldest first */
static uint8_t is_inflight[256];
static uint32_t n_in, first_fault;
static uint64_t popped_sum[256];    /* device_bytes_sum() when each id was popped */
static uint64_t popped_shape[256];  /* chain_shape() of what was popped under each id */

/* A pop's result checked and recorded: 1 if it took a buffer (now in flight), else 0. */
static int took(int rc, uint32_t num)
{
    if (rc < 0) {
        first_fault = (uint32_t)-rc;
        CHECK(vq.broken && vq.fault == -rc, "fault %d without a stopped queue", rc);
        return 0;
    }
    if (rc == 0)
        return 0;
    CHECK(c.ndesc <= VNB_MAX_CHAIN_DESC, "one pop walked %u descriptors", c.ndesc);
    CHECK(c.head < num && !is_inflight[c.head], "id %u out of range or in flight", c.head);
    CHECK(vq.inflight_desc <= num, "%u slots in flight in a ring of %u", vq.inflight_desc, num);
    check_iov(c.iov, c.nout + c.nin);
    inflight[n_in++] = c.head;
    is_inflight[c.head] = 1;
    popped_sum[c.head] = device_bytes_sum(num);
    popped_shape[c.head] = chain_shape(&c);
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    static int init;
    if (!init) {
        for (int r = 0; r < 3; r++)
            host[r] = malloc(RSIZE);   /* separate buffers: ASan catches a byte past any of them */
        init = 1;
    }
    uint32_t num = 1u + data[0] % 256;
    uint32_t flags = VNB_F_PACKED | (data[1] & (VNB_F_EVENT_IDX | VNB_F_INDIRECT));
    size_t nops = data[2];
    if (size < 3 + nops)
        return 0;
    const uint8_t *ops = data + 3;
    size_t used = 0;
    for (int r = 0; r < 3; r++) {
        size_t n = size - 3 - nops - used > RSIZE ? RSIZE : size - 3 - nops - used;
        memset(host[r], 0, RSIZE);
        memcpy(host[r], data + 3 + nops + used, n);
        used += n;
    }
    struct vnb_mem mem = { 0 };
    for (int r = 0; r < 3; r++)
        CHECK(vnb_mem_add_region(&mem, GPA[r], RSIZE, (uint64_t)(uintptr_t)host[r]) == 0, "region");
    CHECK(vnb_vq_init(&vq, &mem, num, DESC_GPA, DRIVER_GPA, DEVICE_GPA, flags) == 0, "vq_init");
    static uint8_t before[RSIZE];
    memcpy(before, host[0], RSIZE);
    static uint8_t before_bc[2][RSIZE];
    memcpy(before_bc[0], host[1], RSIZE);
    memcpy(before_bc[1], host[2], RSIZE);

    n_in = first_fault = 0;
    static uint8_t written[256];        /* ring slots the device wrote a used descriptor to */
    static uint16_t written_id[256];
    memset(written, 0, sizeof(written));
    memset(is_inflight, 0, sizeof(is_inflight));
    for (size_t k = 0; k < nops; k++) {
        uint8_t op = ops[k];
        switch (op & 7) {
        case 0: case 1: case 2: {   /* pop */
            int rc = vnb_vq_pop(&vq, &c);
            if (first_fault) {
                CHECK(rc == -(int)first_fault, "a stopped queue popped (%d, first fault %u)", rc, first_fault);
                break;
            }
            (void)took(rc, num);
            break;
        }
        case 3: {   /* unpop the last 1..4, then pop them again: the same ids come back */
            uint32_t n = 1u + (op >> 3) % 4;
            if (n > n_in || first_fault)
                break;
            uint16_t want[4];
            int same = 1;   /* the bytes the device writes are as they were when these were popped */
            uint64_t now = device_bytes_sum(num);
            for (uint32_t i = 0; i < n; i++) {
                want[i] = inflight[n_in - n + i];
                is_inflight[want[i]] = 0;
                same &= popped_sum[want[i]] == now;
            }
            n_in -= n;
            vnb_vq_unpop(&vq, (uint16_t)n);
            for (uint32_t i = 0; i < n; i++) {
                int rc = vnb_vq_pop(&vq, &c);
                /* No guest runs here: unless the device wrote meanwhile, the same bytes give the same buffers. */
                CHECK(!same || (rc == 1 && c.head == want[i] && chain_shape(&c) == popped_shape[want[i]]),
                      "unpopped buffer %u came back as %d/%u (or with other descriptors)", want[i], rc, c.head);
                if (!took(rc, num))
                    break;
            }
            break;
        }
        case 4: case 5: {   /* use the oldest 1..8 */
            uint32_t n = 1u + (op >> 3) % 8;
            for (uint32_t i = 0; i < n && n_in; i++) {
                uint16_t slot = vq.used_idx, id = inflight[0];
                memmove(inflight, inflight + 1, (n_in - 1) * sizeof(inflight[0]));
                n_in--;
                is_inflight[id] = 0;
                vnb_vq_add_used(&vq, id, op);
                written[slot] = 1;
                written_id[slot] = id;
            }
            break;
        }
        case 6:
            vnb_vq_flush_used(&vq);
            (void)vnb_vq_should_notify(&vq);
            break;
        case 7:
            if (op & 8)
                (void)vnb_vq_enable_notify(&vq);
            else
                vnb_vq_disable_notify(&vq);
            break;
        }
    }
    vnb_vq_flush_used(&vq);
    for (uint32_t i = 0; i < RSIZE; i++) {
        if (host[0][i] == before[i])
            continue;
        uint64_t gpa = GPA[0] + i;
        int in_ring = gpa >= DESC_GPA && gpa < DESC_GPA + 16ull * num && written[(gpa - DESC_GPA) / 16];
        int in_dev_event = gpa >= DEVICE_GPA && gpa < DEVICE_GPA + 4;
        CHECK(in_ring || in_dev_event, "device wrote guest byte %#llx outside its used slots and event structure",
              (unsigned long long)gpa);
    }
    for (uint32_t s = 0; s < num; s++)
        if (written[s]) {
            uint16_t id;
            memcpy(&id, host[0] + DESC_GPA + 16 * s + 12, 2);
            CHECK(id == written_id[s], "used slot %u says id %u, the device used %u", s, id, written_id[s]);
        }
    CHECK(!memcmp(before_bc[0], host[1], RSIZE) && !memcmp(before_bc[1], host[2], RSIZE),
          "device wrote into regions B or C");
    return 0;
}
