/* The tagged-frame format of vnb_peer.h: must match vnetbe/tools/packet.py byte for byte. */
#include "vnb_peer_impl.h"

static inline uint32_t mix32(uint32_t x)
{
    x ^= x >> 16;
    x *= 0x85ebca6bu;
    x ^= x >> 13;
    x *= 0xc2b2ae35u;
    x ^= x >> 16;
    return x;
}

static inline void tag_params(uint32_t seq, uint32_t size, uint32_t *base, uint32_t *step)
{
    *base = mix32(seq ^ (size * 0x9E3779B1u));
    *step = mix32(*base ^ 0x6A09E667u) | 1u;
}

static inline void put_be32(uint8_t *p, uint32_t v)
{
    uint32_t be = htobe32(v);
    memcpy(p, &be, 4);
}


/* The payload loops run at memory speed only if they are vectorised, and gcc -O2 does not do it by
 * itself here (the per-lane multiply defeats its cheap cost model).  Generic vector extensions
 * (gcc, clang) say it directly, without tying the code to one instruction set; a little-endian host
 * is needed because the words are stored as they sit in the register. */
#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define VNB_PEER_VEC 1
typedef uint32_t v4u32 __attribute__((vector_size(16)));
#endif

static void fill_payload(uint8_t *p, uint32_t n, uint32_t seq, uint32_t size)
{
    uint32_t base, step, nw = n / 4, j = 0;
    tag_params(seq, size, &base, &step);
#ifdef VNB_PEER_VEC
    {
        v4u32 e = { base, base + step, base + 2 * step, base + 3 * step };
        v4u32 inc = { 4 * step, 4 * step, 4 * step, 4 * step };
        for (; j + 4 <= nw; j += 4) {
            memcpy(p + 4 * (size_t)j, &e, 16);
            e += inc;
        }
    }
#endif
    for (; j < nw; j++) {
        uint32_t w = htole32(base + j * step);
        memcpy(p + 4 * (size_t)j, &w, 4);
    }
    if (n & 3) {
        uint32_t w = htole32(base + nw * step);
        memcpy(p + 4 * (size_t)nw, &w, n & 3);
    }
}

int vnb_tag_payload_ok(const uint8_t *p, uint32_t n, uint32_t seq, uint32_t size)
{
    uint32_t base, step, nw = n / 4, j = 0, diff = 0;
    tag_params(seq, size, &base, &step);
    /* No early exit: an OR-accumulated difference keeps the loop branch-free, and a good frame (the
     * common case) has to be read to the end anyway. */
#ifdef VNB_PEER_VEC
    {
        v4u32 e0 = { base, base + step, base + 2 * step, base + 3 * step };
        v4u32 inc = { 4 * step, 4 * step, 4 * step, 4 * step };
        v4u32 e1 = e0 + inc, inc2 = inc + inc, acc0 = { 0, 0, 0, 0 }, acc1 = acc0;
        /* Two independent lanes of work per round, so the loads overlap. */
        for (; j + 8 <= nw; j += 8) {
            v4u32 w0, w1;
            memcpy(&w0, p + 4 * (size_t)j, 16);
            memcpy(&w1, p + 4 * (size_t)j + 16, 16);
            acc0 |= w0 ^ e0;
            acc1 |= w1 ^ e1;
            e0 += inc2;
            e1 += inc2;
        }
        acc0 |= acc1;
        diff = acc0[0] | acc0[1] | acc0[2] | acc0[3];
    }
#endif
    for (; j < nw; j++) {
        uint32_t w;
        memcpy(&w, p + 4 * (size_t)j, 4);
        diff |= le32toh(w) ^ (base + j * step);
    }
    if (n & 3) {
        uint32_t w = htole32(base + nw * step);
        diff |= (uint32_t)(memcmp(p + 4 * (size_t)nw, &w, n & 3) != 0);
    }
    return diff == 0;
}

void vnb_peer_fill_tagged(uint8_t *buf, const uint8_t *dst_mac, const uint8_t *src_mac,
                          uint32_t flow, uint32_t seq, uint32_t size)
{
    if (size < VNB_TAG_HDR_LEN)
        return;
    memcpy(buf, dst_mac, 6);
    memcpy(buf + 6, src_mac, 6);
    buf[12] = VNB_TAG_ETHERTYPE >> 8;
    buf[13] = VNB_TAG_ETHERTYPE & 0xff;
    put_be32(buf + 14, seq);
    put_be32(buf + 18, flow);
    fill_payload(buf + VNB_TAG_HDR_LEN, size - VNB_TAG_HDR_LEN, seq, size);
}


int vnb_peer_check_tagged(const uint8_t *frame, uint32_t len, uint32_t *seq, uint32_t *flow)
{
    uint32_t s, f;
    if (!is_tagged(frame, len))
        return -1;
    s = get_be32(frame + 14);
    f = get_be32(frame + 18);
    if (seq)
        *seq = s;
    if (flow)
        *flow = f;
    return vnb_tag_payload_ok(frame + VNB_TAG_HDR_LEN, len - VNB_TAG_HDR_LEN, s, len);
}
