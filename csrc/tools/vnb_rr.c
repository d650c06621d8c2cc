/* Request/response loops: the peer's client (vnb_peer_rr) and the raw responder (vnb_raw_echo). */
#include "vnb_peer_impl.h"

/* One frame out; a full queue (EAGAIN/ENOBUFS) is waited out in poll, up to timeout_ms. */
static int send_one(int fd, const uint8_t *buf, uint32_t len, int timeout_ms, struct vnb_rr_stats *st)
{
    int64_t deadline = vnb_now_ns() + (int64_t)timeout_ms * 1000000LL;
    for (;;) {
        ssize_t r = write(fd, buf, len);
        st->syscalls++;
        if (r >= 0)
            return 0;
        if (errno != EAGAIN && errno != ENOBUFS && errno != EINTR)
            return -errno;
        if (vnb_now_ns() > deadline)
            return -ETIMEDOUT;
        /* ENOBUFS has no wake-up: the 1 ms timeout bounds that wait. */
        int p = poll_one(fd, POLLOUT, 1);
        st->syscalls++;
        if (p < 0)
            return p;
    }
}

/* The frame to send (a copy: its tag is rewritten per round trip), a receive buffer, zeroed stats. */
static int rr_buffers(const uint8_t *tmpl, uint32_t len, uint32_t hdr_len, uint32_t tag_off, uint8_t **out,
                      uint8_t **in, struct vnb_rr_stats *st)
{
    /* Written so that no sum can wrap: the frame holds a header and an Ethernet header, then the tag. */
    if (hdr_len > len || len - hdr_len < 14 || tag_off < hdr_len + 14 || tag_off > len - 4)
        return -EINVAL;
    *out = malloc(len);
    *in = malloc(RX_CAP);
    if (!*out || !*in) {
        free(*out);
        free(*in);
        return -ENOMEM;
    }
    memcpy(*out, tmpl, len);
    memset(st, 0, sizeof(*st));
    return 0;
}

int64_t vnb_peer_rr(int fd, const uint8_t *req, uint32_t len, uint32_t hdr_len, uint32_t tag_off,
                    uint64_t count, int timeout_ms, int64_t *rtt_ns, struct vnb_rr_stats *st)
{
    uint8_t *out, *in;
    int r = rr_buffers(req, len, hdr_len, tag_off, &out, &in, st);
    if (r)
        return r;
    for (uint64_t i = 0; i < count && !st->err; i++) {
        uint32_t tag = htobe32((uint32_t)i);
        memcpy(out + tag_off, &tag, 4);
        int64_t t0 = vnb_now_ns();
        r = send_one(fd, out, len, timeout_ms, st);
        if (r < 0) {
            st->err = -r;
            break;
        }
        for (;;) {
            ssize_t n = recv(fd, in, RX_CAP, MSG_DONTWAIT);
            st->syscalls++;
            if (n >= 0) {
                if (vnb_tagged_at(in, n, hdr_len, tag_off) && memcmp(in + tag_off, &tag, 4) == 0)
                    break;
                continue;   /* a stray frame (another flow, a late duplicate): not ours */
            }
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN) {
                st->err = errno;
                break;
            }
            int p = poll_one(fd, POLLIN, timeout_ms);
            st->syscalls++;
            if (p <= 0) {
                st->err = p < 0 ? -p : ETIMEDOUT;
                break;
            }
        }
        if (st->err)
            break;
        rtt_ns[i] = vnb_now_ns() - t0;
        st->done++;
    }
    free(out);
    free(in);
    return (int64_t)st->done;
}

int64_t vnb_raw_echo(int fd, const uint8_t *reply, uint32_t len, uint32_t hdr_len, uint32_t tag_off,
                     uint64_t count, int timeout_ms, const int *stop, struct vnb_rr_stats *st)
{
    uint8_t *out, *in;
    int r = rr_buffers(reply, len, hdr_len, tag_off, &out, &in, st);
    if (r)
        return r;
    int idle_ms = 0;
    /* Relaxed is enough: stop only has to be seen eventually, and it guards no other data. */
    while (st->done < count && !__atomic_load_n(stop, __ATOMIC_RELAXED)) {
        ssize_t n = read(fd, in, RX_CAP);
        st->syscalls++;
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN) {
                st->err = errno;
                break;
            }
            /* 50 ms slices: stop is looked at that often while idle. */
            int p = poll_one(fd, POLLIN, 50);
            st->syscalls++;
            if (p < 0) {
                st->err = -p;
                break;
            }
            if (p == 0 && (idle_ms += 50) >= timeout_ms)
                break;
            continue;
        }
        idle_ms = 0;
        if (!vnb_tagged_at(in, n, hdr_len, tag_off))
            continue;
        memcpy(out + tag_off, in + tag_off, 4);
        r = send_one(fd, out, len, timeout_ms, st);
        if (r < 0) {
            st->err = -r;
            break;
        }
        st->done++;
    }
    free(out);
    free(in);
    return (int64_t)st->done;
}
