/* The userspace datapath: its public API (configure, start, stop, counters) and its thread's loop,
 * which sleeps until a kick, the tap, the stop request, rtnetlink or the heartbeat, then runs a round
 * of TX and of RX. How the tap is read and written, and how the loop sleeps, is the mode's (dp->io:
 * plain system calls in vnb_dp_plain.c, io_uring in vnb_dp_uring.c); the steps both share are in
 * vnb_dp_core.c. */
#include "vnb_dp_impl.h"
#include "vnb_sys_impl.h"
#include "vnb_time.h"
#include "vnb_guard.h"
#include <poll.h>
#include <errno.h>
#include <net/if.h>
#include <linux/if_tun.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

_Static_assert(sizeof(struct vnb_dp_stats) % sizeof(uint64_t) == 0, "vnb_dp_stats is all uint64_t");

/* cffi sees literal array sizes in struct vnb_dp_stats: tie them to the enums here. */
_Static_assert(sizeof(((struct vnb_dp_stats *)0)->drops) == VNB_DROP_MAX * sizeof(uint64_t), "drops[]");
_Static_assert(sizeof(((struct vnb_dp_stats *)0)->faults) == VNB_FAULT_MAX * sizeof(uint64_t), "faults[]");

struct vnb_dp *vnb_dp_new(void)
{
    struct vnb_dp *dp = calloc(1, sizeof(*dp));
    if (!dp)
        return NULL;
    dp->tap_fd = dp->err_fd = dp->stop_fd = dp->epfd = dp->nl_fd = -1;
    dp->kick_fd[0] = dp->kick_fd[1] = dp->call_fd[0] = dp->call_fd[1] = -1;
    dp->hdr_len = VNB_NET_HDR_LEN;
    dp->io = &vnb_dp_plain_io;
    return dp;
}

void vnb_dp_free(struct vnb_dp *dp)
{
    if (!dp)
        return;
    if (dp->running)
        vnb_dp_stop(dp);
    free(dp);
}

int vnb_dp_set_mem(struct vnb_dp *dp, const struct vnb_mem *mem)
{
    if (dp->running)
        return -EBUSY;
    dp->mem = *mem;
    dp->configured[0] = dp->configured[1] = 0;   /* queue pointers referred to the old table */
    return 0;
}

int vnb_dp_set_features(struct vnb_dp *dp, uint32_t flags, uint32_t hdr_len)
{
    if (dp->running)
        return -EBUSY;
    if (hdr_len != VNB_NET_HDR_LEN && hdr_len != VNB_NET_HDR_LEN_LEGACY)
        return -EINVAL;
    /* num_buffers lives in the 12-byte header only (§5.1.6): with the legacy one it would never be written. */
    if ((flags & VNB_F_MRG_RXBUF) && hdr_len != VNB_NET_HDR_LEN)
        return -EINVAL;
    dp->flags = flags;
    dp->hdr_len = hdr_len;
    return 0;
}

int vnb_dp_set_queue(struct vnb_dp *dp, int q, uint32_t num, uint64_t desc_gpa, uint64_t avail_gpa,
                     uint64_t used_gpa, int kick_fd, int call_fd, uint16_t last_avail_idx, uint16_t used_idx)
{
    if (dp->running)
        return -EBUSY;
    if (q != RXQ && q != TXQ)
        return -EINVAL;
    /* vnb_vq_init zeroes the queue before it checks anything: until it succeeds there is no queue. */
    dp->configured[q] = 0;
    int r = vnb_vq_init(&dp->vq[q], &dp->mem, num, desc_gpa, avail_gpa, used_gpa, dp->flags);
    if (r)
        return r;
    if ((r = vnb_vq_set_base(&dp->vq[q], last_avail_idx, used_idx)))
        return r;
    dp->ring_mode[q] = 0;
    dp->kick_fd[q] = kick_fd;
    dp->call_fd[q] = call_fd;
    dp->configured[q] = 1;
    return 0;
}

int vnb_dp_set_log_addr(struct vnb_dp *dp, int q, uint64_t log_used_gpa)
{
    if (dp->running)
        return -EBUSY;
    if ((q != RXQ && q != TXQ) || !dp->configured[q])
        return -EINVAL;
    vnb_vq_set_log_addr(&dp->vq[q], log_used_gpa);
    return 0;
}

int vnb_dp_set_ring_mode(struct vnb_dp *dp, int q, uint32_t mode)
{
    if (dp->running)
        return -EBUSY;
    if ((q != RXQ && q != TXQ) || !dp->configured[q] || mode & ~(uint32_t)(VNB_RING_POLLED | VNB_RING_DISCARD))
        return -EINVAL;
    if ((mode & VNB_RING_DISCARD) && q != TXQ)
        return -EINVAL;   /* a disabled RX ring is simply not serviced: no RX is supplied */
    dp->ring_mode[q] = mode;
    return 0;
}

int vnb_dp_set_tap(struct vnb_dp *dp, int tap_fd)
{
    if (dp->running)
        return -EBUSY;
    dp->tap_fd = tap_fd;
    return 0;
}

int vnb_dp_set_uring(struct vnb_dp *dp, uint32_t batch, uint32_t sqpoll_idle_ms, uint32_t flags)
{
    if (dp->running)
        return -EBUSY;
    if (batch > URING_MAX_BATCH || (flags & ~VNB_DP_URING_NO_NOWAIT))
        return -EINVAL;
    dp->u.batch = batch;
    dp->io = batch ? &vnb_dp_uring_io : &vnb_dp_plain_io;
    dp->u.sqpoll_idle_ms = batch ? sqpoll_idle_ms : 0;
    dp->u.no_nowait = !!(flags & VNB_DP_URING_NO_NOWAIT);
    uring_nowait_reset(dp);
    return 0;
}

int vnb_dp_set_busyloop(struct vnb_dp *dp, uint32_t usecs)
{
    if (dp->running)
        return -EBUSY;
    dp->busyloop_ns = (int64_t)usecs * 1000;
    return 0;
}

int vnb_dp_set_link_ifindex(struct vnb_dp *dp, int ifindex)
{
    if (dp->running)
        return -EBUSY;
    dp->link_ifindex = ifindex > 0 ? ifindex : 0;
    return 0;
}

int vnb_dp_set_err_fd(struct vnb_dp *dp, int err_fd)
{
    dp->err_fd = err_fd;
    return 0;
}

int vnb_dp_running(struct vnb_dp *dp) { return dp->running; }
uint32_t vnb_dp_link_down(struct vnb_dp *dp) { return __atomic_load_n(&dp->link_down, __ATOMIC_RELAXED); }
int vnb_dp_tid(struct vnb_dp *dp) { return __atomic_load_n(&dp->tid, __ATOMIC_ACQUIRE); }

/* Relaxed: a clock reading that stands alone, ordered with nothing else. */
int64_t vnb_dp_heartbeat(struct vnb_dp *dp) { return __atomic_load_n(&dp->beat_ns, __ATOMIC_RELAXED); }

void vnb_dp_get_stats(struct vnb_dp *dp, struct vnb_dp_stats *out)
{
    /* Each counter at some recent value (see stat_add); the set is not a snapshot of one instant. */
    const uint64_t *src = (const uint64_t *)&dp->st;
    uint64_t *dst = (uint64_t *)out;
    for (size_t i = 0; i < sizeof(*out) / sizeof(uint64_t); i++)
        dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
}

int vnb_dp_get_qstate(struct vnb_dp *dp, int q, struct vnb_dp_qstate *out)
{
    if (q != RXQ && q != TXQ)
        return -EINVAL;
    struct vnb_vq *vq = &dp->vq[q];
    out->num = vq->num;
    vnb_vq_get_base(vq, &out->last_avail_idx, &out->used_idx);
    /* broken and fault may be set by the running thread (vnb_vq_fail): acquire pairs with its release. */
    out->broken = __atomic_load_n(&vq->broken, __ATOMIC_ACQUIRE);
    out->fault = __atomic_load_n(&vq->fault, __ATOMIC_RELAXED);
    return 0;
}

/* ---- helpers running on the datapath thread ---- */


static uint64_t drain_eventfd(struct vnb_dp *dp, int fd)
{
    uint64_t v = 0;
    /* Non-blocking eventfd: EAGAIN just means nothing was pending. */
    if (vnb_sys_read(fd, &v, sizeof(v)) != sizeof(v))
        v = 0;
    stat_inc(&dp->st.syscalls);
    return v;
}


/* ---- TX: guest -> tap ---- */


/* ---- RX: tap -> guest ---- */


/* ---- the thread ---- */

/* Busy polling (as vhost's VHOST_SET_VRING_BUSYLOOP_TIMEOUT): once idle, keep looking for busyloop_ns
 * instead of sleeping, so that work arriving soon after costs no wake-up. Returns 1 while polling. */
static int busy_polling(struct vnb_dp *dp, int64_t *deadline)
{
    if (!dp->busyloop_ns)
        return 0;
    int64_t now = vnb_now_ns();
    if (!*deadline)
        *deadline = now + dp->busyloop_ns;
    if (now < *deadline) {
        stat_inc(&dp->st.busy_polls);
        return 1;
    }
    *deadline = 0;
    return 0;
}

/* Before sleeping: turn back on the kicks busy polling left off. Returns 1 if the guest posted
 * meanwhile (its kick may never come: go on instead of sleeping). */
static int arm_notify(struct vnb_dp *dp, int *tx_more, int *rx_more)
{
    int work = 0;
    if (dp->tx_quiet) {
        dp->tx_quiet = 0;
        if (vnb_vq_enable_notify(&dp->vq[TXQ]))
            work = *tx_more = 1;
    }
    if (dp->rx_quiet) {
        dp->rx_quiet = 0;
        if (vnb_vq_enable_notify(&dp->vq[RXQ])) {
            arm_tap(dp, 1);
            work = *rx_more = 1;
        }
    }
    return work;
}

/* While polling, the rings whose kicks are off: has the guest posted to one of them? */
static void poll_quiet_rings(struct vnb_dp *dp, int *kick_tx, int *kick_rx)
{
    /* A polled ring (the driver never kicks) is looked at on every pass, as a quiet one is; RX only
     * while it waits for buffers (with buffers, the tap's readiness is what wakes it). */
    int tx = dp->tx_quiet || (dp->ring_mode[TXQ] & VNB_RING_POLLED);
    int rx = dp->rx_quiet || ((dp->ring_mode[RXQ] & VNB_RING_POLLED) && !dp->rx_wants_tap);
    if (tx && dp->configured[TXQ] && !dp->vq[TXQ].broken && vnb_vq_avail_pending(&dp->vq[TXQ])) {
        dp->tx_quiet = 0;
        *kick_tx = 1;
    }
    if (rx && dp->configured[RXQ] && !dp->vq[RXQ].broken && vnb_vq_avail_pending(&dp->vq[RXQ])) {
        dp->rx_quiet = 0;
        *kick_rx = 1;
    }
}

/* Whether the link's interface still exists, in whatever namespace it now lives: a deleted macvtap
 * answers TUNGETIFF with ENOLINK, a deleted tap with EBADFD. An RTM_DELLINK alone does not say it (a
 * move to another namespace is announced the same way), and after such a move no message here will. */
static int link_alive(struct vnb_dp *dp)
{
    struct ifreq ifr;
    stat_inc(&dp->st.syscalls);
    if (ioctl(dp->tap_fd, TUNGETIFF, &ifr) == 0)
        return 1;
    return errno != ENOLINK && errno != EBADFD;
}

/* A deleted macvtap tells its fd nothing (reads EAGAIN, writes vanish): only rtnetlink says it is gone.
 * Read what the kernel sent and, on an RTM_DELLINK of ours, ask the fd whether it really is. */
static void read_netlink(struct vnb_dp *dp)
{
    /* Aligned for struct nlmsghdr, as NLMSG_NEXT expects. */
    static __thread uint64_t buf[8192 / sizeof(uint64_t)];
    for (;;) {
        ssize_t n = recv(dp->nl_fd, buf, sizeof(buf), MSG_DONTWAIT);
        stat_inc(&dp->st.syscalls);
        if (n <= 0)
            return;   /* EAGAIN: drained; ENOBUFS (overrun) would only lose others' messages */
        int len = (int)n;
        for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, len); h = NLMSG_NEXT(h, len)) {
            if (h->nlmsg_type != RTM_DELLINK || h->nlmsg_len < NLMSG_LENGTH(sizeof(struct ifinfomsg)))
                continue;
            const struct ifinfomsg *ifi = NLMSG_DATA(h);
            if (ifi->ifi_index == dp->link_ifindex && !dp->link_down && !link_alive(dp))
                link_gone(dp, EPOLLHUP);
        }
    }
}

static int open_netlink(void)
{
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, NETLINK_ROUTE);
    if (fd < 0)
        return -errno;
    struct sockaddr_nl a = { .nl_family = AF_NETLINK, .nl_groups = RTMGRP_LINK };
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}


/* After memory_gone: wait for the stop, beating the heart so the thread is not taken for stuck. */
static void park(struct vnb_dp *dp)
{
    struct pollfd p = { .fd = dp->stop_fd, .events = POLLIN };
    for (;;) {
        __atomic_store_n(&dp->beat_ns, vnb_now_ns(), __ATOMIC_RELAXED);
        int n = poll(&p, 1, VNB_DP_HEARTBEAT_MS);
        stat_inc(&dp->st.syscalls);
        if (n > 0 || (n < 0 && errno != EINTR))
            return;
    }
}

static void dp_loop(struct vnb_dp *dp);

static void *dp_thread(void *arg)
{
    struct vnb_dp *dp = arg;
    /* The ring is made here: with SINGLE_ISSUER only the thread that made it may submit. */
    int setup = dp->io->setup ? dp->io->setup(dp) : 0;
    if (setup) {
        __atomic_store_n(&dp->setup_err, setup, __ATOMIC_RELAXED);
        /* Release: setup_err is seen before the tid that vnb_dp_start waits for. */
        __atomic_store_n(&dp->tid, -1, __ATOMIC_RELEASE);
        return NULL;
    }
    __atomic_store_n(&dp->tid, (int)syscall(SYS_gettid), __ATOMIC_RELEASE);
    /* Every guest-memory access of this thread happens inside dp_loop: a SIGBUS there (memory the
     * front end shrank) lands back here, with dp_loop's state abandoned and nothing else to undo. */
    struct vnb_guard guard;
    if (sigsetjmp(guard.jb, 0) == 0) {
        vnb_guard_arm(&guard, &dp->mem);
        dp_loop(dp);
    } else {
        memory_gone(dp);
    }
    if (dp->mem_gone)
        park(dp);   /* returns at once if the stop came first (stop_fd is never read) */
    if (dp->io->drain)
        dp->io->drain(dp);       /* places what the posted reads took, unless memory is gone; counts the rest */
    vnb_guard_disarm(&guard);
    if (dp->io->teardown)
        dp->io->teardown(dp);    /* io_uring: closing the ring cancels the polls in flight */
    if (dp->pend.active)
        rx_drop_pending(dp, VNB_DROP_RX_STOPPED);
    /* Used entries of completed frames are already flushed by handle_rx/handle_tx. */
    return NULL;
}

static void dp_loop(struct vnb_dp *dp)
{
    struct epoll_event evs[8];
    int tx_more = 1, rx_more = 1;   /* look at both rings once at start: a hand-over may leave work */
    int64_t busy_deadline = 0;
    int64_t alive_checked = vnb_now_ns();
    for (;;) {
        int64_t now = vnb_now_ns();
        __atomic_store_n(&dp->beat_ns, now, __ATOMIC_RELAXED);
        /* Once a heartbeat: a link moved to another namespace and deleted there sends nothing here. */
        if (dp->link_ifindex && !dp->link_down && now - alive_checked >= VNB_DP_HEARTBEAT_MS * 1000000LL) {
            alive_checked = now;
            if (!link_alive(dp))
                link_gone(dp, EPOLLHUP);
        }
        int idle = !tx_more && !rx_more;
        /* A tap short of memory is retried after 1 ms, not polled: polling would only spin on ENOBUFS. */
        int polling = idle && !dp->tx_retry && busy_polling(dp, &busy_deadline);
        if (idle && !polling && arm_notify(dp, &tx_more, &rx_more))
            continue;
        /* Idle, the thread still wakes once a heartbeat, so that a stuck one can be told from an idle one. */
        int polled = (dp->ring_mode[TXQ] | dp->ring_mode[RXQ]) & VNB_RING_POLLED;
        int timeout = !idle || polling ? 0 : dp->tx_retry ? 1 : polled ? VNB_DP_POLL_MS : VNB_DP_HEARTBEAT_MS;
        int n = dp->io->wait(dp, evs, 8, timeout);
        if (n < 0 && errno != EINTR)
            return;
        if (n > 0)
            stat_inc(&dp->st.wakeups);
        int kick_tx = 0, kick_rx = 0, tap_in = 0, tap_out = 0;
        for (int i = 0; i < n; i++) {
            switch (evs[i].data.u32) {
            case EV_STOP:
                return;
            case EV_KICK_TX:
                stat_add(&dp->st.tx_kicks, drain_eventfd(dp, dp->kick_fd[TXQ]));
                stat_inc(&dp->st.tx_kick_wakeups);
                kick_tx = 1;
                break;
            case EV_KICK_RX:
                stat_add(&dp->st.rx_kicks, drain_eventfd(dp, dp->kick_fd[RXQ]));
                stat_inc(&dp->st.rx_kick_wakeups);
                kick_rx = 1;
                break;
            case EV_NETLINK:
                read_netlink(dp);
                break;
            case EV_TAP:
                if (evs[i].events & (EPOLLERR | EPOLLHUP)) {
                    link_gone(dp, evs[i].events);
                    break;
                }
                tap_in |= !!(evs[i].events & EPOLLIN);   /* io_uring mode reports IN and OUT apart */
                tap_out |= !!(evs[i].events & EPOLLOUT);
                break;
            }
        }
        poll_quiet_rings(dp, &kick_tx, &kick_rx);
        if (n > 0 || kick_tx || kick_rx)
            busy_deadline = 0;   /* work came: the next idle stretch polls afresh */
        if (tap_out && dp->tx_blocked) {
            dp->tx_blocked = 0;
            update_tap(dp);
        }
        if (kick_tx || tx_more || dp->tx_retry || tap_out) {
            dp->tx_retry = 0;
            tx_more = dp->io->tx(dp);
        }
        if (kick_rx && dp->configured[RXQ] && !dp->vq[RXQ].broken)
            arm_tap(dp, 1);
        if (kick_rx || tap_in || rx_more)
            rx_more = dp->io->rx(dp);
        if (dp->mem_gone)   /* the kernel said EFAULT on a range we had checked */
            return;
    }
}

static int ep_add(int epfd, int fd, uint32_t events, uint32_t tag)
{
    struct epoll_event ev = { .events = events, .data.u32 = tag };
    return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) ? -errno : 0;
}

#ifdef VNB_FUZZ
/* What vnb_dp_start would set up, without the epoll set, the stop eventfd and the thread. */
int vnb_dp_fuzz_setup(struct vnb_dp *dp, int epfd)
{
    dp->epfd = epfd;
    dp->tap_events = 0;
    dp->pend.active = 0;
    dp->link_down = 0;
    return dp->io->setup ? dp->io->setup(dp) : 0;
}

/* What the thread does when it stops (the out: path of dp_thread). */
void vnb_dp_fuzz_stop(struct vnb_dp *dp)
{
    if (dp->io->drain)
        dp->io->drain(dp);
    if (dp->io->teardown)
        dp->io->teardown(dp);
    if (dp->pend.active)
        rx_drop_pending(dp, VNB_DROP_RX_STOPPED);
}

/* One round of TX then RX on a configured, not started datapath, as the thread would run it after a
 * kick or a readable tap: the libFuzzer target's entry, with the system calls stubbed (vnb_sys_impl.h).
 * Returns the descriptors the two rounds walked. */
uint64_t vnb_dp_fuzz_round(struct vnb_dp *dp)
{
    uint64_t walked = 0;
    dp->tx_blocked = dp->tx_retry = 0;
    dp->rx_wants_tap = 1;
    if (dp->u.batch)
        dp->u.rx_tap_empty = 0;   /* as when the tap's poll fired */
    dp->io->tx(dp);
    walked += dp->walked;
    dp->io->rx(dp);
    walked += dp->walked;
    return walked;
}
#endif

int vnb_dp_start(struct vnb_dp *dp)
{
    if (dp->running)
        return -EBUSY;
    if (!dp->configured[RXQ] && !dp->configured[TXQ])
        return -EINVAL;
    if (dp->tap_fd < 0)
        return -EBADF;
    int r;
    dp->epfd = epoll_create1(EPOLL_CLOEXEC);
    dp->stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (dp->epfd < 0 || dp->stop_fd < 0) {
        r = -errno;
        goto fail;
    }
    if ((r = ep_add(dp->epfd, dp->stop_fd, EPOLLIN, EV_STOP)))
        goto fail;
    if (dp->configured[TXQ] && (r = ep_add(dp->epfd, dp->kick_fd[TXQ], EPOLLIN, EV_KICK_TX)))
        goto fail;
    if (dp->configured[RXQ] && (r = ep_add(dp->epfd, dp->kick_fd[RXQ], EPOLLIN, EV_KICK_RX)))
        goto fail;
    uring_nowait_reset(dp);   /* before tap_events_wanted, which asks whether RX reads through the ring */
    /* Without an RX queue nobody drains the tap: watching it would spin on a level-triggered fd. */
    dp->rx_wants_tap = dp->configured[RXQ];
    dp->tx_blocked = 0;
    dp->tap_events = tap_events_wanted(dp);
    if ((r = ep_add(dp->epfd, dp->tap_fd, dp->tap_events, EV_TAP)))
        goto fail;
    if (dp->link_ifindex) {
        if ((dp->nl_fd = open_netlink()) < 0) {
            r = dp->nl_fd;
            dp->nl_fd = -1;
            goto fail;
        }
        if ((r = ep_add(dp->epfd, dp->nl_fd, EPOLLIN, EV_NETLINK)))
            goto fail;
    }
    dp->pend.active = 0;
    dp->tx_retry = 0;
    dp->tx_quiet = dp->rx_quiet = 0;
    dp->link_down = 0;
    dp->tid = 0;
    __atomic_store_n(&dp->beat_ns, vnb_now_ns(), __ATOMIC_RELAXED);
    dp->setup_err = 0;
    dp->mem_gone = 0;
    if ((r = vnb_guard_install()))
        goto fail;
    if ((r = -pthread_create(&dp->thread, NULL, dp_thread, dp)))
        goto fail;
    /* Wait for the thread to publish its tid, so CPU accounting can start the moment we return. */
    while (!vnb_dp_tid(dp))
        sched_yield();
    if (vnb_dp_tid(dp) < 0) {   /* its io_uring could not be set up */
        pthread_join(dp->thread, NULL);
        dp->tid = 0;
        r = __atomic_load_n(&dp->setup_err, __ATOMIC_RELAXED);
        goto fail;
    }
    dp->running = 1;
    return 0;
fail:
    if (dp->epfd >= 0)
        close(dp->epfd);
    if (dp->stop_fd >= 0)
        close(dp->stop_fd);
    if (dp->nl_fd >= 0)
        close(dp->nl_fd);
    dp->epfd = dp->stop_fd = dp->nl_fd = -1;
    return r;
}

int vnb_dp_stop(struct vnb_dp *dp)
{
    if (!dp->running)
        return 0;
    uint64_t one = 1;
    /* The thread wakes on stop_fd; an eventfd write cannot fail here. */
    (void)!write(dp->stop_fd, &one, sizeof(one));
    pthread_join(dp->thread, NULL);
    close(dp->epfd);
    close(dp->stop_fd);
    if (dp->nl_fd >= 0)
        close(dp->nl_fd);
    dp->epfd = dp->stop_fd = dp->nl_fd = -1;
    dp->running = 0;
    return 0;
}
