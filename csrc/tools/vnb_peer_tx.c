/* The peer's sender: tagged frames at line rate over AF_PACKET with sendmmsg, optionally paced. */
#include "vnb_peer_impl.h"

int64_t vnb_peer_send_tagged(int fd, const uint8_t *dst_mac, const uint8_t *src_mac, uint32_t flow,
                             uint32_t first_seq, uint64_t count, uint32_t size, uint32_t pace_ns,
                             struct vnb_peer_tx_stats *st)
{
    struct vnb_peer_tx_stats local;
    struct mmsghdr msgs[TX_BATCH];
    struct iovec iov[TX_BATCH];
    uint8_t *frames;
    uint64_t done = 0;
    uint32_t batch, k;
    int64_t t0, last_progress;

    if (!st)
        st = &local;
    memset(st, 0, sizeof(*st));
    st->next_seq = first_seq;
    if (size < VNB_TAG_HDR_LEN || size > VNB_TAG_MAX_SIZE || !dst_mac || !src_mac)
        return -EINVAL;
    if (count == 0)
        return 0;
    batch = count < TX_BATCH ? (uint32_t)count : TX_BATCH;
    frames = malloc((size_t)batch * size);
    if (!frames)
        return -ENOMEM;
    /* No address: a bound packet socket sends on its bound interface. */
    mmsg_setup(msgs, iov, frames, batch, size);

    t0 = last_progress = vnb_now_ns();
    while (done < count) {
        uint32_t n = (count - done) < batch ? (uint32_t)(count - done) : batch, off = 0;
        if (pace_ns) {
            int64_t due = (vnb_now_ns() - t0) / pace_ns + 1 - (int64_t)done;
            if (due <= 0) {
                wait_until(t0 + (int64_t)done * pace_ns);
                continue;
            }
            if ((uint64_t)due < n)
                n = (uint32_t)due;
        }
        for (k = 0; k < n; k++)
            vnb_peer_fill_tagged(frames + (size_t)k * size, dst_mac, src_mac, flow,
                                 first_seq + (uint32_t)(done + k), size);
        while (off < n) {
            int r = sendmmsg(fd, msgs + off, n - off, 0);
            int e;
            st->syscalls++;
            if (r > 0) {
                off += (uint32_t)r;
                last_progress = vnb_now_ns();
                continue;
            }
            e = r == 0 ? EAGAIN : errno;
            if (e == EINTR)
                continue;
            if (e != ENOBUFS && e != EAGAIN) {
                st->err = e;
                break;
            }
            if (vnb_now_ns() - last_progress > STALL_NS) {
                st->err = e;
                break;
            }
            st->retries++;
            /* EAGAIN: the socket's send buffer is full (non-blocking fd), so wait for room.
             * ENOBUFS: a queue below dropped the frame; poll cannot tell when it drains. */
            if (e == EAGAIN) {
                int p = poll_one(fd, POLLOUT, 10);
                if (p < 0) {
                    st->err = -p;
                    break;
                }
            } else {
                sleep_ns(NOBUFS_WAIT_NS);
            }
        }
        done += off;
        st->bytes += (uint64_t)off * size;
        if (st->err)
            break;
    }
    st->elapsed_ns = vnb_now_ns() - t0;
    st->sent = done;
    st->next_seq = first_seq + (uint32_t)done;
    free(frames);
    if (done == 0 && st->err)
        return -st->err;
    return (int64_t)done;
}
