/* Internal to the peer's C files (csrc/tools/vnb_peer_*.c, vnb_tag.c, vnb_raw.c, vnb_rr.c): shared
 * limits, waits and the parts of the tagged-frame format the receivers need. Not seen by cffi. */
#ifndef VNB_PEER_IMPL_H
#define VNB_PEER_IMPL_H
#include "vnb_peer.h"
#include "vnb_time.h"
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>


#define TX_BATCH 64
#define RX_BATCH 32
/* Largest frame the recvmmsg receiver takes whole: a 64 KiB GSO/GRO frame plus headers. */
#define RX_CAP (65536 + 512)
/* A send or write that makes no progress for this long is reported rather than retried forever:
 * a link that is down or a queue nobody drains would otherwise hang the test. */
#define STALL_NS 2000000000LL
/* How long a sender backs off after ENOBUFS: long enough for a softirq to drain a queue, short
 * compared with the time a batch takes at line rate. */
#define NOBUFS_WAIT_NS 20000

_Static_assert(VNB_PEER_SEQ_WINDOW == 1024 * 64, "seen[] holds one bit per seq of the window");

#if defined(__x86_64__) || defined(__i386__)
#define cpu_relax() __builtin_ia32_pause()
#else
#define cpu_relax() __asm__ __volatile__("" ::: "memory")
#endif

static inline void sleep_ns(int64_t ns)
{
    struct timespec ts = { .tv_sec = ns / 1000000000LL, .tv_nsec = ns % 1000000000LL };
    /* An early wake-up (EINTR) only shortens a back-off; the caller retries either way. */
    nanosleep(&ts, NULL);
}

/* Waits for an absolute CLOCK_MONOTONIC time: sleeps for most of it, spins for the last stretch,
 * because a sleep alone overshoots by tens of microseconds and pacing wants better than that. */
static inline void wait_until(int64_t t)
{
    for (;;) {
        int64_t d = t - vnb_now_ns();
        if (d <= 0)
            return;
        if (d > 150000) {
            struct timespec ts;
            int64_t wake = t - 80000;
            ts.tv_sec = wake / 1000000000LL;
            ts.tv_nsec = wake % 1000000000LL;
            /* EINTR just brings the next loop round sooner. */
            clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
        } else {
            cpu_relax();
        }
    }
}

/* n messages of one buffer each, the k-th at buf + k * each: the layout sendmmsg/recvmmsg take. */
static inline void mmsg_setup(struct mmsghdr *msgs, struct iovec *iov, uint8_t *buf, uint32_t n, size_t each)
{
    memset(msgs, 0, sizeof(*msgs) * n);
    for (uint32_t k = 0; k < n; k++) {
        iov[k].iov_base = buf + (size_t)k * each;
        iov[k].iov_len = each;
        msgs[k].msg_hdr.msg_iov = &iov[k];
        msgs[k].msg_hdr.msg_iovlen = 1;
    }
}

static inline int poll_one(int fd, short events, int timeout_ms)
{
    struct pollfd p = { .fd = fd, .events = events };
    int n = poll(&p, 1, timeout_ms);
    if (n < 0)
        return errno == EINTR ? 0 : -errno;
    if (n > 0 && (p.revents & POLLNVAL))
        return -EBADF;
    if (n > 0 && (p.revents & POLLERR)) {
        /* A pending socket error (a packet socket whose device went away) would make every poll
         * return at once; reading SO_ERROR reports and clears it.  Not a socket: say EIO. */
        int e = 0;
        socklen_t len = sizeof(e);
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &len) < 0)
            return -EIO;
        if (e)
            return -e;
    }
    return n;
}

static inline int ms_left(int64_t deadline)
{
    int64_t d = deadline - vnb_now_ns();
    if (d <= 0)
        return 0;
    d = (d + 999999) / 1000000;
    return d > 1000000 ? 1000000 : (int)d;
}

static inline uint32_t get_be32(const uint8_t *p)
{
    uint32_t be;
    memcpy(&be, p, 4);
    return be32toh(be);
}

static inline int is_tagged(const uint8_t *f, uint32_t len)
{
    return len >= VNB_TAG_HDR_LEN && f[12] == (VNB_TAG_ETHERTYPE >> 8) &&
           f[13] == (VNB_TAG_ETHERTYPE & 0xff);
}

/* vnb_tag.c: does the payload match what (seq, size) generates? */
int vnb_tag_payload_ok(const uint8_t *p, uint32_t n, uint32_t seq, uint32_t size);
/* vnb_peer_rx.c: receive-side accounting, shared by the recvmmsg and ring receivers. */
int vnb_peer_account(struct vnb_peer_rx_stats *st, const uint8_t *f, uint32_t caplen,
                     uint32_t wirelen, uint32_t flow);
void vnb_peer_add_sock_stats(int fd, struct vnb_peer_rx_stats *st);

#endif
