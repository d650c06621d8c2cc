/* The peer's receivers: per-frame accounting (sequence tracking, payload check) and the recvmmsg loop. */
#include "vnb_peer_impl.h"

#define SEEN_BIT(seq) ((seq) & (VNB_PEER_SEQ_WINDOW - 1))

static inline int seen_test_set(struct vnb_peer_rx_stats *st, uint32_t seq)
{
    uint32_t i = SEEN_BIT(seq);
    uint64_t m = 1ull << (i & 63);
    int was = (st->seen[i >> 6] & m) != 0;
    st->seen[i >> 6] |= m;
    return was;
}

static void track_seq(struct vnb_peer_rx_stats *st, uint32_t seq)
{
    int32_t d;
    if (!st->seen_any) {
        memset(st->seen, 0, sizeof(st->seen));
        st->seen_any = 1;
        st->first_seq = st->max_seq = seq;
        seen_test_set(st, seq);
        return;
    }
    d = (int32_t)(seq - st->max_seq);   /* serial-number order: a wrap of the counter is a step */
    if (d > 0) {
        uint32_t s;
        st->missing += (uint64_t)d - 1;
        if (d >= VNB_PEER_SEQ_WINDOW) {
            memset(st->seen, 0, sizeof(st->seen));
        } else {
            /* The slots of the seqs jumped over now stand for them, not for seqs a window ago. */
            for (s = st->max_seq + 1; s != seq; s++)
                st->seen[SEEN_BIT(s) >> 6] &= ~(1ull << (SEEN_BIT(s) & 63));
            st->seen[SEEN_BIT(seq) >> 6] &= ~(1ull << (SEEN_BIT(seq) & 63));
        }
        seen_test_set(st, seq);
        st->max_seq = seq;
    } else if (-(int64_t)d < VNB_PEER_SEQ_WINDOW) {
        if (seen_test_set(st, seq)) {
            st->duplicates++;
        } else {
            st->out_of_order++;
            if (st->missing)
                st->missing--;
        }
    } else {
        /* Older than the window: a duplicate cannot be told from a late frame; call it late. */
        st->out_of_order++;
        if (st->missing)
            st->missing--;
    }
}

/* Returns 1 if the frame was one of the wanted flow (tagged, right flow), 0 otherwise. */
int vnb_peer_account(struct vnb_peer_rx_stats *st, const uint8_t *f, uint32_t caplen,
                     uint32_t wirelen, uint32_t flow)
{
    uint32_t seq;
    int64_t t;
    if (!is_tagged(f, caplen) || get_be32(f + 18) != flow) {
        st->ignored++;
        return 0;
    }
    t = vnb_now_ns();
    if (st->received == 0)
        st->t_first_ns = t;
    st->t_last_ns = t;
    st->received++;
    st->bytes += wirelen;
    seq = get_be32(f + 14);
    if (caplen < wirelen) {
        st->truncated++;
        st->bad++;
        return 1;
    }
    if (!vnb_tag_payload_ok(f + VNB_TAG_HDR_LEN, caplen - VNB_TAG_HDR_LEN, seq, caplen)) {
        /* The seq itself may be the damaged part, so a bad frame stays out of the seq tracking. */
        st->bad++;
        return 1;
    }
    st->last_seq = seq;
    track_seq(st, seq);
    return 1;
}

int vnb_peer_sock_stats(int fd, uint64_t *packets, uint64_t *drops, uint64_t *freeze_q_cnt)
{
    /* The v3 layout starts with the v1/v2 one; the kernel copies whichever the socket's version
     * has and leaves tp_freeze_q_cnt zeroed for v1/v2. */
    struct tpacket_stats_v3 s;
    socklen_t len = sizeof(s);
    memset(&s, 0, sizeof(s));
    if (getsockopt(fd, SOL_PACKET, PACKET_STATISTICS, &s, &len) < 0)
        return -errno;
    if (packets)
        *packets = s.tp_packets;
    if (drops)
        *drops = s.tp_drops;
    if (freeze_q_cnt)
        *freeze_q_cnt = s.tp_freeze_q_cnt;
    return 0;
}

void vnb_peer_add_sock_stats(int fd, struct vnb_peer_rx_stats *st)
{
    uint64_t p = 0, d = 0, f = 0;
    /* A socket that is not AF_PACKET has no such counters; the frame counts stand on their own. */
    if (vnb_peer_sock_stats(fd, &p, &d, &f) == 0) {
        st->tp_packets += p;
        st->tp_drops += d;
        st->tp_freeze_q_cnt += f;
    }
}

/* ---------------------------------------------------------------------------------------------
 * recvmmsg receiver */

int64_t vnb_peer_recv_tagged(int fd, struct vnb_peer_rx_stats *st, uint64_t expect, int timeout_ms,
                             uint32_t flow)
{
    struct mmsghdr msgs[RX_BATCH];
    struct iovec iov[RX_BATCH];
    uint8_t *bufs;
    uint64_t got = 0;
    int64_t idle_deadline;
    int err = 0, k;

    if (!st)
        return -EINVAL;
    bufs = malloc((size_t)RX_BATCH * RX_CAP);
    if (!bufs)
        return -ENOMEM;
    mmsg_setup(msgs, iov, bufs, RX_BATCH, RX_CAP);
    idle_deadline = vnb_now_ns() + (int64_t)timeout_ms * 1000000LL;
    while (expect == 0 || got < expect) {
        /* Never take more frames off the socket than are still wanted: frames read past `expect`
         * would be lost to the next caller. */
        unsigned vlen = RX_BATCH;
        int n;
        if (expect && expect - got < vlen)
            vlen = (unsigned)(expect - got);
        /* MSG_TRUNC makes msg_len the frame's real length, so an oversized frame shows as such. */
        n = recvmmsg(fd, msgs, vlen, MSG_DONTWAIT | MSG_TRUNC, NULL);
        if (n > 0) {
            int wanted = 0;
            for (k = 0; k < n; k++) {
                uint32_t wire = msgs[k].msg_len;
                wanted += vnb_peer_account(st, bufs + (size_t)k * RX_CAP, wire < RX_CAP ? wire : RX_CAP,
                                  wire, flow);
            }
            if (wanted) {
                got += (uint64_t)wanted;
                idle_deadline = vnb_now_ns() + (int64_t)timeout_ms * 1000000LL;
            }
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno != EAGAIN) {
            err = errno;
            break;
        }
        k = ms_left(idle_deadline);
        if (k == 0)
            break;
        k = poll_one(fd, POLLIN, k);
        if (k < 0) {
            err = -k;
            break;
        }
    }
    vnb_peer_add_sock_stats(fd, st);
    free(bufs);
    if (got == 0 && err)
        return -err;
    return (int64_t)got;
}
