/* libFuzzer target: the control virtqueue's device side (csrc/device/vnb_ctrl.c) over guest memory
 * the input fills, on a split ring. Oracles, beyond "no crash" (ASan/UBSan):
 *  - a command's gathered bytes are exactly the chain's readable bytes (the reference walker's), its
 *    length capped at VNB_CTRL_MAX_DATA, and its ack byte is the first writable byte of the chain;
 *  - vnb_ctrl_check never accepts VQ_PAIRS_SET outside 1..max_pairs nor a data length its command
 *    does not have;
 *  - the device writes only the used ring and each command's ack byte (nothing else of guest memory).
 *
 * Input: byte 0 the queue size (a power of two up to 256), byte 1 the ring flags, byte 2 the
 * negotiated control features, byte 3 max_pairs; the rest fills guest memory (regions as fuzz_virtq). */
#include "vnb_ctrl.h"
#include "vnb_mem.h"
#include "vnb_virtq.h"

#include <linux/virtio_net.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RSIZE 0x4000u
static const uint64_t GPA[3] = { 0x0, RSIZE, 0x10000 };
#define DESC_GPA 0x0
#define AVAIL_GPA 0x1000
#define USED_GPA 0x1400

static uint8_t *host[3];

#define CHECK(c, ...) do { if (!(c)) { fprintf(stderr, "fuzz_ctrl: " __VA_ARGS__); fputc('\n', stderr); abort(); } } while (0)

#include "ref_ring.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 4)
        return 0;
    static int init;
    if (!init) {
        for (int r = 0; r < 3; r++)
            host[r] = malloc(RSIZE);
        init = 1;
    }
    uint32_t num = 1u << (data[0] % 9);
    uint32_t flags = data[1] & (VNB_F_EVENT_IDX | VNB_F_INDIRECT);
    uint32_t features = data[2] & 31;
    uint16_t max_pairs = (uint16_t)(1 + data[3] % 16);
    fill_regions(data + 4, size - 4);
    struct vnb_mem mem = { 0 };
    for (int r = 0; r < 3; r++)
        CHECK(vnb_mem_add_region(&mem, GPA[r], RSIZE, (uint64_t)(uintptr_t)host[r]) == 0, "region");
    static struct vnb_vq vq;
    CHECK(vnb_vq_init(&vq, &mem, num, DESC_GPA, AVAIL_GPA, USED_GPA, flags) == 0, "vq_init");
    uint16_t zero = 0;
    memcpy(host[0] + USED_GPA + 2, &zero, 2);

    static uint8_t before[3][RSIZE];
    for (int r = 0; r < 3; r++)
        memcpy(before[r], host[r], RSIZE);
    static uint64_t acks[512];   /* guest addresses of the ack bytes written */
    int nacks = 0;

    static struct vnb_ctrl_req req;
    static struct ref_chain want;
    uint16_t last = 0;
    for (uint32_t k = 0; k < num + 2; k++) {
        int rr = ref_pop(DESC_GPA, AVAIL_GPA, num, last, !!(flags & VNB_F_INDIRECT), &want);
        int rc = vnb_ctrl_pop(&vq, &req);
        CHECK(rc == rr, "pop %u: device %d, reference %d", k, rc, rr);
        if (rc <= 0)
            break;
        last++;
        /* the gathered bytes are the readable pieces, in order */
        static uint8_t flat[2 + VNB_CTRL_MAX_DATA + 1];
        uint64_t at = 0;
        for (int i = 0; i < want.nout && at < sizeof(flat); i++) {
            uint64_t n = want.out[i].len < sizeof(flat) - at ? want.out[i].len : sizeof(flat) - at;
            memcpy(flat + at, (void *)(uintptr_t)want.out[i].hva, n);
            at += n;
        }
        if (want.out_len < 2) {
            CHECK(req.err == VNB_CTRL_E_SHORT || req.err == VNB_CTRL_E_NO_ACK, "short command not refused");
        } else if (want.out_len - 2 > VNB_CTRL_MAX_DATA) {
            CHECK(req.err == VNB_CTRL_E_TOO_LONG || req.err == VNB_CTRL_E_NO_ACK, "long command not refused");
        } else {
            CHECK(req.cls == flat[0] && req.cmd == flat[1] && req.len == want.out_len - 2 &&
                  !memcmp(req.data, flat + 2, req.len), "gathered command differs from the chain");
        }
        const uint8_t *first_in = NULL;
        for (int i = 0; i < want.nin && !first_in; i++)
            if (want.in[i].len)
                first_in = (const uint8_t *)(uintptr_t)want.in[i].hva;
        CHECK(req.ack == first_in, "ack not at the first writable byte");
        CHECK(!req.ack || req.err != VNB_CTRL_E_NO_ACK, "an ack slot yet NO_ACK");
        int verdict = req.err ? req.err : vnb_ctrl_check(req.cls, req.cmd, req.data, req.len, features, max_pairs);
        CHECK(verdict >= 0 && verdict < VNB_CTRL_E_MAX, "verdict %d", verdict);
        if (!verdict && req.cls == VIRTIO_NET_CTRL_MQ) {
            uint16_t n;
            memcpy(&n, req.data, 2);
            CHECK(req.len == 2 && n >= 1 && n <= max_pairs, "VQ_PAIRS_SET %u accepted (max %u)", n, max_pairs);
        }
        if (!verdict && req.cls == VIRTIO_NET_CTRL_RX)
            CHECK(req.len == 1, "RX command of %u bytes accepted", req.len);
        if (req.ack) {
            for (int r = 0; r < 3; r++)
                if (req.ack >= host[r] && req.ack < host[r] + RSIZE && nacks < 512)
                    acks[nacks++] = GPA[r] + (uint64_t)(req.ack - host[r]);
        }
        CHECK(vnb_ctrl_complete(&vq, &req, verdict ? VIRTIO_NET_ERR : VIRTIO_NET_OK) >= 0, "complete");
        CHECK(vnb_ctrl_enable_notify(&vq) >= 0, "enable_notify");
    }
    uint64_t used_end = USED_GPA + 6 + 8ull * num;
    for (int r = 0; r < 3; r++)
        for (uint32_t i = 0; i < RSIZE; i++)
            if (host[r][i] != before[r][i]) {
                uint64_t gpa = GPA[r] + i;
                int ok = gpa >= USED_GPA && gpa < used_end;
                for (int a = 0; a < nacks && !ok; a++)
                    ok = acks[a] == gpa;
                CHECK(ok, "device wrote guest byte %#llx, neither the used ring nor an ack", (unsigned long long)gpa);
            }
    return 0;
}
