/* Raw tap loops: the baselines that write()/read() frames straight on a macvtap fd. */
#include "vnb_peer_impl.h"

int64_t vnb_raw_write_loop_ex(int fd, const uint8_t *buf, uint32_t len, uint64_t count,
                              struct vnb_raw_stats *st)
{
    struct vnb_raw_stats local;
    int64_t t0, last_progress;

    if (!st)
        st = &local;
    memset(st, 0, sizeof(*st));
    t0 = last_progress = vnb_now_ns();
    while (st->done < count) {
        ssize_t r = write(fd, buf, len);
        int p;
        if (r >= 0) {
            st->done++;
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
