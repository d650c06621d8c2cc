/* Raw tap loops: the baselines that write()/read() frames straight on a macvtap fd. */
#include "vnb_peer_impl.h"

/* The write loop of both baselines. tag: NULL writes buf as it is every time; else before each
 * write the frame after tag->hdr_len bytes of buf is rebuilt as tagged frame seq (first_seq + n). */
struct tag_fill {
    uint32_t hdr_len, size, first_seq;
    const uint8_t *dst, *src;
};

static int64_t write_loop(int fd, uint8_t *buf, uint32_t len, uint64_t count, const struct tag_fill *tag,
                          struct vnb_raw_stats *st)
{
    struct vnb_raw_stats local;
    int64_t t0, last_progress;

    if (!st)
        st = &local;
    memset(st, 0, sizeof(*st));
    t0 = last_progress = vnb_now_ns();
    if (tag)
        vnb_peer_fill_tagged(buf + tag->hdr_len, tag->dst, tag->src, 0, tag->first_seq, tag->size);
    while (st->done < count) {
        ssize_t r = write(fd, buf, len);
        int p;
        if (r >= 0) {
            st->done++;
            /* A frame as fresh as a guest's: its seq and payload, as the device path's guest builds them. */
            if (tag && st->done < count)
                vnb_peer_fill_tagged(buf + tag->hdr_len, tag->dst, tag->src, 0,
                                     tag->first_seq + (uint32_t)st->done, tag->size);
            st->bytes += (uint64_t)r;
            /* Reading the clock per frame would cost a third of a 90 ns syscall; every 4096 is
             * plenty for a two-second stall guard. */
            if ((st->done & 4095) == 0)
                last_progress = vnb_now_ns();
            continue;
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN) {
            st->err = errno;
            break;
        }
        st->eagain++;
        if (vnb_now_ns() - last_progress > STALL_NS) {
            st->err = EAGAIN;
            break;
        }
        p = poll_one(fd, POLLOUT, 100);
        if (p < 0) {
            st->err = -p;
            break;
        }
        if (p > 0)
            last_progress = vnb_now_ns();
    }
    st->elapsed_ns = vnb_now_ns() - t0;
    if (st->done == 0 && st->err)
        return -st->err;
    return (int64_t)st->done;
}

int64_t vnb_raw_write_loop_ex(int fd, const uint8_t *buf, uint32_t len, uint64_t count,
                              struct vnb_raw_stats *st)
{
    /* Cast: with no tag the loop only reads buf. */
    return write_loop(fd, (uint8_t *)buf, len, count, NULL, st);
}

int64_t vnb_raw_write_tagged_ex(int fd, uint8_t *buf, uint32_t hdr_len, const uint8_t *dst_mac,
                                const uint8_t *src_mac, uint32_t size, uint32_t first_seq, uint64_t count,
                                struct vnb_raw_stats *st)
{
    struct tag_fill tag = { hdr_len, size, first_seq, dst_mac, src_mac };
    if (size < VNB_TAG_HDR_LEN || size > VNB_TAG_MAX_SIZE)
        return -EINVAL;
    return write_loop(fd, buf, hdr_len + size, count, &tag, st);
}

int64_t vnb_raw_write_loop(int fd, const uint8_t *buf, uint32_t len, uint64_t count)
{
    return vnb_raw_write_loop_ex(fd, buf, len, count, NULL);
}

int64_t vnb_raw_read_loop_ex(int fd, uint8_t *buf, uint32_t cap, uint64_t count, int timeout_ms,
                             struct vnb_raw_stats *st)
{
    struct vnb_raw_stats local;
    int64_t t0;
    int fl = fcntl(fd, F_GETFL);
    /* On a blocking fd read() would sleep past the timeout: poll before every read instead (slower;
     * pass an O_NONBLOCK fd to measure). */
    int blocking = fl >= 0 && !(fl & O_NONBLOCK);

    if (!st)
        st = &local;
    memset(st, 0, sizeof(*st));
    if (fl < 0)
        return -errno;
    t0 = vnb_now_ns();
    while (st->done < count) {
        ssize_t r;
        int p;
        if (!blocking) {
            r = read(fd, buf, cap);
            if (r >= 0) {
                st->done++;
                st->bytes += (uint64_t)r;
                continue;
            }
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN) {
                st->err = errno;
                break;
            }
            st->eagain++;
        }
        p = poll_one(fd, POLLIN, timeout_ms);
        if (p < 0) {
            st->err = -p;
            break;
        }
        if (p == 0)
            break;   /* idle for timeout_ms: the caller compares done with count */
        if (blocking) {
            r = read(fd, buf, cap);
            if (r >= 0) {
                st->done++;
                st->bytes += (uint64_t)r;
            } else if (errno != EINTR && errno != EAGAIN) {
                st->err = errno;
                break;
            }
        }
    }
    st->elapsed_ns = vnb_now_ns() - t0;
    if (st->done == 0 && st->err)
        return -st->err;
    return (int64_t)st->done;
}

int64_t vnb_raw_read_loop(int fd, uint8_t *buf, uint32_t cap, uint64_t count, int timeout_ms)
{
    return vnb_raw_read_loop_ex(fd, buf, cap, count, timeout_ms, NULL);
}
