/* The userspace datapath with its tap I/O through io_uring: the same ring logic, validation and
 * notification suppression as vnb_datapath.c, but a batch of frames costs one io_uring_enter instead
 * of a write or read each, and the waiting (kicks, the tap, the stop request) is one more.
 *
 * TX: up to a batch of chains are popped, one WRITE (WRITEV for a chain of several buffers) is
 * prepared per frame, linked (IOSQE_IO_LINK) so that a failed write cancels the ones after it and
 * frames never go out of order; one enter submits them and waits for all, and only then are the
 * chains put in the used ring: the guest cannot reuse a buffer the kernel may still read. A write
 * that found the tap full (RWF_NOWAIT: EAGAIN) gives its chain and the cancelled ones back
 * (vnb_vq_unpop), as the plain path does, and the ring polls the tap for room. Without NOWAIT (a
 * tap that refuses it) the writes wait in the kernel instead.
 *
 * RX: up to a batch of NOWAIT READs, no more than the guest has posted chains for, land in a pool of
 * bounce buffers (one copy more than reading into the guest chain, but the guest's chains are popped
 * only when a frame is placed, so a frame needing several buffers (MRG_RXBUF) or a drop never holds
 * chains out of order); the frames are then placed exactly as the plain path places its bounce tail.
 * A tap that refuses NOWAIT is read with the plain path's readv (uring_rx() in vnb_dp_impl.h says why).
 *
 * Waiting: the epoll set of vnb_datapath.c (stop, kicks, netlink, the tap's EPOLLERR/EPOLLHUP) is
 * itself polled through the ring (POLL_ADD of the epoll fd) and read with epoll_wait(0) only when it
 * fired; the tap is polled for IN when RX found it empty and for OUT when TX found it full. An idle
 * loop therefore sleeps in one io_uring_enter, with the heartbeat as its timeout. */
#include "vnb_dp_impl.h"
#include "vnb_time.h"
#include <errno.h>
#include <poll.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

enum { TAG_TX = 1, TAG_RX, TAG_EPOLL, TAG_TAP_IN, TAG_TAP_OUT, TAG_CANCEL, TAG_IRQ };
#define UD(tag, i) (((uint64_t)(tag) << 32) | (uint32_t)(i))
#define SQPOLL_SPIN_NS 20000   /* with SQPOLL, look at the CQ this long before sleeping for a batch */
#define TX_FULL_NS 1000000     /* a batch of writes still waiting after this long found the tap full */

static void uring_teardown(struct vnb_dp *dp);

static int uring_setup(struct vnb_dp *dp)
{
    struct vnb_dp_uring *u = &dp->u;
    u->iov_pool = malloc((size_t)u->batch * VNB_MAX_IOV * sizeof(struct iovec));
    u->buf_pool = malloc((size_t)u->batch * BOUNCE_LEN);
    if (!u->iov_pool || !u->buf_pool) {
        uring_teardown(dp);
        return -ENOMEM;
    }
    /* A batch of I/O plus the three polls is the most ever in flight; twice that leaves the SQ room. */
    int r = vnb_uring_init(&u->ring, 2 * u->batch + 8, u->sqpoll_idle_ms);
    if (r) {
        uring_teardown(dp);
        return r;
    }
    for (uint32_t i = 0; i < u->batch; i++) {
        u->tx[i].iov = u->iov_pool + (size_t)i * VNB_MAX_IOV;
        u->rx[i].buf = u->buf_pool + (size_t)i * BOUNCE_LEN;
    }
    u->epoll_armed = u->tap_in_armed = u->tap_out_armed = 0;
    u->epoll_fired = u->tap_in_fired = u->tap_out_fired = 0;
    u->rx_tap_empty = 0;
    u->entered = 0;
    u->waiting = 0;
    u->ntx = u->rx_first = u->rx_count = 0;
    u->last_linked = NULL;
    return 0;
}

static void uring_teardown(struct vnb_dp *dp)
{
    struct vnb_dp_uring *u = &dp->u;
    if (u->ring.sqes)
        vnb_uring_exit(&u->ring);
    free(u->iov_pool);
    free(u->buf_pool);
    u->iov_pool = NULL;
    u->buf_pool = NULL;
}

static int enter(struct vnb_dp *dp, uint32_t min_complete, int64_t timeout_ns)
{
    uint64_t calls = 0;
    int r = vnb_uring_enter(&dp->u.ring, min_complete, timeout_ns, &calls);
    stat_add(&dp->st.syscalls, calls);
    dp->u.entered = 1;
    return r;
}

static void reap(struct vnb_dp *dp)
{
    struct vnb_dp_uring *u = &dp->u;
    struct io_uring_cqe *cqe;
    while ((cqe = vnb_uring_peek(&u->ring))) {
        uint32_t tag = (uint32_t)(cqe->user_data >> 32), i = (uint32_t)cqe->user_data;
        /* i < batch: we wrote these user_data values ourselves. */
        switch (tag) {
        case TAG_TX:
            u->tx[i].res = cqe->res;
            u->waiting--;
            break;
        case TAG_RX:
            u->rx[i].res = cqe->res;
            u->rx[i].done = 1;
            break;
        case TAG_EPOLL:
            u->epoll_armed = 0;
            u->epoll_fired = 1;
            break;
        case TAG_TAP_IN:
            u->tap_in_armed = 0;
            u->tap_in_fired = 1;   /* POLLIN, or POLLERR/POLLHUP that the next read names */
            break;
        case TAG_TAP_OUT:
            u->tap_out_armed = 0;
            u->tap_out_fired = 1;
            break;
        }
        vnb_uring_cqe_seen(&u->ring);
    }
}

/* The next SQE; if the SQ is full (SQPOLL has not caught up), hand over what is there first. */
static struct io_uring_sqe *get_sqe(struct vnb_dp *dp)
{
    struct io_uring_sqe *sqe;
    while (!(sqe = vnb_uring_get_sqe(&dp->u.ring))) {
        enter(dp, 0, -1);
        reap(dp);
    }
    return sqe;
}

static void queue_linked(struct vnb_dp *dp, uint8_t op, const void *addr, uint32_t len, uint64_t ud)
{
    struct io_uring_sqe *sqe = get_sqe(dp);
    vnb_uring_prep(sqe, op, dp->tap_fd, addr, len, ud);
    sqe->flags = IOSQE_IO_LINK;
    dp->u.last_linked = sqe;
    dp->u.waiting++;
}

/* Whether vnb_dp_stop wrote the stop eventfd (not consumed: the loop reads it as EV_STOP). */
static int stop_asked(struct vnb_dp *dp)
{
    struct pollfd pfd = { .fd = dp->stop_fd, .events = POLLIN };
    stat_inc(&dp->st.syscalls);
    return poll(&pfd, 1, 0) == 1;
}

/* Submit the batch queued with queue_linked and wait until every one of its CQEs is in. */
static void run_batch(struct vnb_dp *dp)
{
    struct vnb_dp_uring *u = &dp->u;
    if (!u->waiting)
        return;
    u->last_linked->flags &= ~IOSQE_IO_LINK;   /* the chain ends with this batch */
    u->last_linked = NULL;
    int64_t spin_until = vnb_uring_sqpoll(&u->ring) ? vnb_now_ns() + SQPOLL_SPIN_NS : 0;
    if (spin_until)
        enter(dp, 0, -1);   /* publish (and wake the SQ thread if it sleeps) */
    int cancelled = 0, waits = 0;
    for (;;) {
        reap(dp);
        if (!u->waiting)
            return;
        if (spin_until && vnb_now_ns() < spin_until)
            continue;
        /* Without NOWAIT a write waits in the kernel (io_uring polls the tap) while the tap is full; a
         * write to a tap with room takes microseconds, so a batch still waiting after 1 ms found the
         * tap full: counted once, as the plain path counts its EAGAIN. Then wake once a heartbeat, so
         * the thread shows it is alive, and give up the batch if a stop is asked meanwhile: the
         * cancelled writes' chains are given back (tx_submit) for the next datapath. */
        if (waits++ == 1 && !u->write_flags && u->ntx)
            stat_inc(&dp->st.tx_tap_full);
        int r = enter(dp, u->waiting, waits == 1 ? TX_FULL_NS : VNB_DP_HEARTBEAT_MS * 1000000LL);
        __atomic_store_n(&dp->beat_ns, vnb_now_ns(), __ATOMIC_RELAXED);
        /* EINTR, EAGAIN, EBUSY (CQ backlog: reap first), ETIME pass; nothing else fails on our ring. */
        (void)r;
        reap(dp);   /* before asking: a batch that is done needs no look at the stop eventfd */
        if (!cancelled && u->waiting && stop_asked(dp)) {
            struct io_uring_sqe *sqe = get_sqe(dp);
            vnb_uring_prep(sqe, IORING_OP_ASYNC_CANCEL, dp->tap_fd, NULL, 0, UD(TAG_CANCEL, 0));
            sqe->off = 0;
            sqe->cancel_flags = IORING_ASYNC_CANCEL_FD | IORING_ASYNC_CANCEL_ALL;
            cancelled = 1;
        }
    }
}

static void uring_interrupt(struct vnb_dp *dp, int q)
{
    /* Never inside a batch being queued: flush_and_notify runs only after tx_submit / a read batch,
     * so this SQE cannot join a chain of linked writes. */
    struct io_uring_sqe *sqe = get_sqe(dp);
    dp->u.irq_one = 1;
    vnb_uring_prep(sqe, IORING_OP_WRITE, dp->call_fd[q], &dp->u.irq_one, sizeof(dp->u.irq_one), UD(TAG_IRQ, q));
    sqe->off = 0;   /* an eventfd ignores it */
}

/* ---- TX ---- */

enum { TXS_OK, TXS_AGAIN /* chains given back after a failed write: pop them again now */, TXS_STOP };

static void tx_queue(struct vnb_dp *dp, const struct vnb_chain *c)
{
    struct vnb_dp_uring *u = &dp->u;
    int i = u->ntx++;
    struct uring_tx_slot *s = &u->tx[i];
    s->head = c->head;
    s->out_len = c->out_len;
    if (dp->ring_mode[TXQ] & VNB_RING_DISCARD) {
        s->drop = VNB_DROP_TX_DISABLED;
        return;
    }
    if (c->out_len < dp->hdr_len) {
        s->drop = VNB_DROP_TX_SHORT;
        return;
    }
    if (c->out_len > VNB_MAX_FRAME + dp->hdr_len) {
        s->drop = VNB_DROP_TX_OVERSIZE;
        return;
    }
    s->drop = -1;
    if (c->nout == 1) {
        queue_linked(dp, IORING_OP_WRITE, c->iov[0].iov_base, (uint32_t)c->iov[0].iov_len, UD(TAG_TX, i));
    } else {
        /* dp->chain is reused by the next pop: the kernel reads the iovecs at issue, which may be later. */
        memcpy(s->iov, c->iov, c->nout * sizeof(struct iovec));
        queue_linked(dp, IORING_OP_WRITEV, s->iov, c->nout, UD(TAG_TX, i));
    }
    u->last_linked->rw_flags = (int)u->write_flags;
}

/* Write the queued frames, then account for them in order and put their chains in the used ring. */
static int tx_submit(struct vnb_dp *dp)
{
    struct vnb_dp_uring *u = &dp->u;
    struct vnb_vq *vq = &dp->vq[TXQ];
    int n = u->ntx, out = TXS_OK;
    if (!n)
        return TXS_OK;
    run_batch(dp);
    u->ntx = 0;
    for (int i = 0; i < n; i++) {
        struct uring_tx_slot *s = &u->tx[i];
        if (s->drop >= 0) {
            stat_inc(&dp->st.drops[s->drop]);
            vnb_vq_add_used(vq, s->head, 0);
            continue;
        }
        int res = s->res;
        if (res != -ECANCELED && res != -EOPNOTSUPP)
            stat_inc(&dp->st.tap_writes);   /* a write the tap saw */
        if (res >= 0) {
            stat_inc(&dp->st.tx_frames);
            stat_add(&dp->st.tx_bytes, s->out_len - dp->hdr_len);
            vnb_vq_add_used(vq, s->head, 0);   /* TX buffers are only read: used length 0 (§5.1.6.2) */
            continue;
        }
        if (res == -EOPNOTSUPP && dp->u.write_flags) {
            /* The tap has no FMODE_NOWAIT (macvtap before 6.4): from now on writes wait in the kernel
             * for room (io_uring polls the tap), uncounted in tx_tap_full. This one is written again. */
            dp->u.write_flags = 0;
            res = -ECANCELED;
        }
        if (res == -EFAULT) {   /* checked chains whose memory went away, as in handle_tx */
            memory_gone(dp);
            return TXS_STOP;
        }
        if (res == -EAGAIN || res == -ENOBUFS || res == -ENOMEM || res == -ECANCELED || res == -EBADFD) {
            /* This chain and every one after it were not sent (the link cancelled them): give them
             * back, they are the last ones popped. */
            vnb_vq_unpop(vq, (uint16_t)(n - i));
            if (res == -ECANCELED) {
                out = TXS_AGAIN;   /* an earlier write was refused (EINVAL) and counted, or NOWAIT went: go on */
            } else if (res == -EBADFD) {
                link_gone(dp, EPOLLERR);   /* the tun's interface is gone, as in handle_tx */
                out = TXS_STOP;
            } else {
                stat_inc(&dp->st.tx_tap_full);
                if (res == -EAGAIN) {
                    dp->tx_blocked = 1;   /* uring_wait polls the tap for POLLOUT */
                    update_tap(dp);
                } else {
                    dp->tx_retry = 1;
                }
                out = TXS_STOP;
            }
            break;
        }
        stat_inc(&dp->st.drops[res == -EINVAL ? VNB_DROP_TX_TAP_REFUSED : VNB_DROP_TX_TAP_ERROR]);
        vnb_vq_add_used(vq, s->head, 0);
    }
    return out;
}

/* As handle_tx. Returns 1 if the budget ran out with work left. */
static int handle_tx_uring(struct vnb_dp *dp)
{
    struct vnb_vq *vq = &dp->vq[TXQ];
    struct vnb_chain *c = &dp->chain;
    dp->tx_quiet = 0;
    if (!dp->configured[TXQ] || vq->broken || dp->tx_blocked || dp->link_down)
        return 0;
    int done = 0, batch = flush_every(vq, dp->u.batch);   /* a flush per batch: never a whole ring held */
    dp->walked = 0;
    vnb_vq_disable_notify(vq);
    for (;;) {
        if (round_over(dp, done)) {
            int s = tx_submit(dp);
            flush_and_notify(dp, TXQ);
            return s != TXS_STOP;
        }
        int r = dp_pop(dp, TXQ);
        if (r < 0) {
            tx_submit(dp);
            flush_and_notify(dp, TXQ);
            report_fault(dp, TXQ, -r);
            return 0;
        }
        if (r == 0) {
            int s = tx_submit(dp);
            flush_and_notify(dp, TXQ);
            if (s == TXS_STOP)
                return 0;
            if (s == TXS_AGAIN || tx_ring_empty(dp))
                continue;
            return 0;
        }
        if (c->nin) {
            tx_submit(dp);
            flush_and_notify(dp, TXQ);
            report_fault(dp, TXQ, -vnb_vq_fail(vq, VNB_FAULT_TX_WRITABLE));
            return 0;
        }
        tx_queue(dp, c);
        done++;
        if (dp->u.ntx == batch) {
            int s = tx_submit(dp);
            flush_and_notify(dp, TXQ);
            if (s == TXS_STOP)
                return 0;
        }
    }
}

/* ---- RX ---- */

/* Take the n completed reads of a batch, in slot order (which is frame order), into the pool. */
static void rx_collect(struct vnb_dp *dp, uint32_t n)
{
    struct vnb_dp_uring *u = &dp->u;
    for (uint32_t i = 0; i < n; i++) {
        struct uring_rx_slot *s = &u->rx[i];
        int res = s->res;
        if (res == -EOPNOTSUPP) {
            /* The tap has no FMODE_NOWAIT (macvtap before 6.4): every read of the batch says so and
             * none took a frame. RX goes over to the plain path's readv (uring_rx() is now 0). */
            u->read_flags = 0;
            update_tap(dp);   /* epoll now watches the tap for EPOLLIN too */
            continue;
        }
        stat_inc(&dp->st.tap_reads);
        if (res == -EAGAIN) {
            stat_inc(&dp->st.tap_read_empty);
            u->rx_tap_empty = 1;   /* uring_wait polls the tap before RX reads again */
            continue;
        }
        if (res < 0) {
            if (res == -EBADFD)
                link_gone(dp, EPOLLERR);   /* as in rx_one */
            else if (res == -EFAULT)
                memory_gone(dp);           /* as in rx_one */
            else
                stat_inc(&dp->st.drops[VNB_DROP_RX_TAP_ERROR]);
            continue;
        }
        if (res == 0 && tap_hung_up(dp)) {   /* end of file, as in rx_one */
            if (!dp->link_down)
                link_gone(dp, EPOLLHUP);
            continue;
        }
        if ((size_t)res < dp->hdr_len || res >= BOUNCE_LEN) {
            stat_inc(&dp->st.drops[VNB_DROP_RX_TRUNCATED]);
            continue;
        }
        s->frame = 1;
        u->rx_count++;
    }
}

/* Place the frames of the pool, oldest first, as rx_continue places a bounce tail. RX_OK once the
 * pool is empty; otherwise what stopped it, the frame in hand kept in dp->pend. */
static int rx_place_queued(struct vnb_dp *dp, int *done, int *since_flush, int flush_at)
{
    struct vnb_dp_uring *u = &dp->u;
    struct rx_pending *p = &dp->pend;
    while (p->active || u->rx_count) {
        if (!p->active) {
            while (!u->rx[u->rx_first].frame)
                u->rx_first++;   /* a slot that took no frame; rx_count > 0 says one follows */
            struct uring_rx_slot *s = &u->rx[u->rx_first];
            memset(p, 0, offsetof(struct rx_pending, heads));
            p->active = 1;
            p->total = (uint32_t)s->res;
            p->bounce = s->buf;
            p->hdr_niov = 0;
            p->hdr_cov = 0;
        }
        int r = rx_continue(dp);
        if (r != RX_OK)
            return r;
        u->rx[u->rx_first++].frame = 0;
        u->rx_count--;
        (*done)++;
        if (++*since_flush == flush_at) {
            flush_and_notify(dp, RXQ);
            *since_flush = 0;
        }
        if (u->rx_count && round_over(dp, *done))
            return RX_YIELD;
    }
    return RX_OK;
}

/* n NOWAIT reads into the pool, one enter. They are issued one after the other at submission, so
 * slot order is frame order without links (a read that finds the tap empty says EAGAIN and leaves a
 * gap; a later one may still take a frame that came meanwhile). Linked, each read after the first
 * was issued as task work and the batch cost an enter per frame (measured: 147 vs 686 kpps). */
static void rx_read_batch(struct vnb_dp *dp, uint32_t n)
{
    struct vnb_dp_uring *u = &dp->u;
    for (uint32_t i = 0; i < n; i++) {
        u->rx[i].done = u->rx[i].frame = 0;
        struct io_uring_sqe *sqe = get_sqe(dp);
        vnb_uring_prep(sqe, IORING_OP_READ, dp->tap_fd, u->rx[i].buf, BOUNCE_LEN, UD(TAG_RX, i));
        sqe->rw_flags = (int)u->read_flags;
    }
    u->rx_first = 0;
    for (;;) {   /* NOWAIT reads complete at once: with a frame, EAGAIN or EOPNOTSUPP */
        uint32_t left = 0;
        for (uint32_t i = 0; i < n; i++)
            left += !u->rx[i].done;
        if (!left)
            break;
        enter(dp, left, -1);
        reap(dp);
    }
    rx_collect(dp, n);
}

/* As handle_rx, with the tap read a batch at a time. Returns 1 if the budget ran out with work left. */
static int handle_rx_uring(struct vnb_dp *dp)
{
    struct vnb_vq *vq = &dp->vq[RXQ];
    struct vnb_dp_uring *u = &dp->u;
    dp->rx_quiet = 0;
    if (!dp->configured[RXQ] || dp->tap_fd < 0 || dp->link_down)
        return 0;
    if (vq->broken) {
        arm_tap(dp, 0);   /* no more reads: frames stay in (and overflow from) the tap's queue */
        return 0;
    }
    int done = 0, since_flush = 0, more = 0, flush_at = flush_every(vq, RX_FLUSH_MAX);
    dp->walked = 0;
    vnb_vq_disable_notify(vq);
    for (;;) {
        int r = rx_place_queued(dp, &done, &since_flush, flush_at);
        if (r == RX_YIELD) {
            more = 1;
            break;
        }
        if (r == RX_NEED_BUFFERS) {
            if (rx_out_of_buffers(dp))
                continue;
            break;
        }
        if (r == RX_FAULT || dp->link_down)
            break;
        if (!uring_rx(dp)) {
            more = 1;   /* NOWAIT refused: the plain path reads from the next pass on */
            break;
        }
        /* Walk the next chain now, as the plain path does before its read: a hostile ring faults
         * when kicked, not only once a frame comes. Given back at once; placing pops it again. */
        uint32_t navail = (uint32_t)vnb_vq_avail_count(vq, (uint16_t)u->batch);
        r = navail ? rx_pop(dp) : RX_NEED_BUFFERS;
        if (r == RX_FAULT)
            break;
        if (r == RX_NEED_BUFFERS) {
            if (rx_out_of_buffers(dp))
                continue;
            break;
        }
        vnb_vq_unpop(vq, 1);
        if (round_over(dp, done)) {
            more = 1;
            break;
        }
        if (u->rx_tap_empty) {
            arm_tap(dp, 1);   /* uring_wait polls the tap for the next frame */
            break;
        }
        /* No more reads than chains posted: every frame read has a buffer to go to, so a stop (or a
         * hand-over) finds the pool empty unless a frame needs more buffers than one. A hostile
         * avail index (moved by more than num) faults at the pop above. */
        rx_read_batch(dp, navail);
    }
    flush_and_notify(dp, RXQ);
    return more;
}

/* At stop: place what the pool still holds (a frame that waited for buffers, and those after it);
 * what still cannot be placed is counted as dropped at stop. */
static void uring_drop_queued(struct vnb_dp *dp)
{
    struct vnb_dp_uring *u = &dp->u;
    if (dp->configured[RXQ] && !dp->vq[RXQ].broken && !dp->link_down && (dp->pend.active || u->rx_count)) {
        int done = 0, since_flush = 0;
        dp->walked = 0;
        while ((dp->pend.active || u->rx_count) &&
               rx_place_queued(dp, &done, &since_flush, 1 << 30) == RX_YIELD)
            dp->walked = done = 0;   /* no budget at stop: the pool is at most a batch */
        flush_and_notify(dp, RXQ);
    }
    int n = (int)u->rx_count;
    if (dp->pend.active) {   /* the pool's oldest frame, half placed */
        rx_drop_pending(dp, VNB_DROP_RX_STOPPED);
        n--;
    }
    if (n > 0)
        stat_add(&dp->st.drops[VNB_DROP_RX_STOPPED], (uint64_t)n);
    u->rx_count = 0;
}

/* ---- waiting ---- */

static void arm_poll(struct vnb_dp *dp, int fd, uint32_t events, uint64_t ud, int *armed)
{
    struct io_uring_sqe *sqe = get_sqe(dp);
    vnb_uring_prep(sqe, IORING_OP_POLL_ADD, fd, NULL, 0, ud);
    sqe->off = 0;
    sqe->poll32_events = events;   /* single shot: re-armed by the next wait that wants it */
    *armed = 1;
}

static int uring_wait(struct vnb_dp *dp, struct epoll_event *evs, int max, int timeout_ms)
{
    struct vnb_dp_uring *u = &dp->u;
    if (!u->epoll_armed)
        arm_poll(dp, dp->epfd, POLLIN, UD(TAG_EPOLL, 0), &u->epoll_armed);
    if (!dp->link_down) {
        if (dp->rx_wants_tap && u->rx_tap_empty && !u->tap_in_armed)
            arm_poll(dp, dp->tap_fd, POLLIN, UD(TAG_TAP_IN, 0), &u->tap_in_armed);
        if (dp->tx_blocked && !u->tap_out_armed)
            arm_poll(dp, dp->tap_fd, POLLOUT, UD(TAG_TAP_OUT, 0), &u->tap_out_armed);
    }
    reap(dp);
    int fired = u->epoll_fired || u->tap_in_fired || u->tap_out_fired;
    if (timeout_ms > 0 && !fired)
        enter(dp, 1, (int64_t)timeout_ms * 1000000);   /* ETIME when the heartbeat passes idle */
    else if (!u->entered || u->ring.unsubmitted > 0)
        /* Busy: one enter a loop at most, that submits the polls and (DEFER_TASKRUN) lets the
         * completions of polls in flight post, so a stop request is seen however the guest keeps
         * this thread busy. A batch's enter already did that. */
        enter(dp, 0, -1);
    u->entered = 0;
    reap(dp);
    int n = 0;
    if (u->epoll_fired) {
        u->epoll_fired = 0;
        n = epoll_wait(dp->epfd, evs, max - 2, 0);
        stat_inc(&dp->st.syscalls);
        if (n < 0)
            n = 0;   /* EINTR: the poll is re-armed and fires again */
    }
    if (u->tap_in_fired) {   /* the tap is readable: RX has work */
        u->rx_tap_empty = 0;
        u->tap_in_fired = 0;
        evs[n].events = EPOLLIN;
        evs[n++].data.u32 = EV_TAP;
    }
    if (u->tap_out_fired) {
        u->tap_out_fired = 0;
        evs[n].events = EPOLLOUT;
        evs[n++].data.u32 = EV_TAP;
    }
    return n;
}

/* RX through the ring while the tap takes NOWAIT reads; the plain path's readv otherwise (uring_rx). */
static int uring_rx_round(struct vnb_dp *dp)
{
    return uring_rx(dp) ? handle_rx_uring(dp) : vnb_dp_plain_io.rx(dp);
}

const struct vnb_dp_io vnb_dp_uring_io = {
    .name = "uring",
    .setup = uring_setup,
    .drain = uring_drop_queued,
    .teardown = uring_teardown,
    .wait = uring_wait,
    .tx = handle_tx_uring,
    .rx = uring_rx_round,
    .interrupt = uring_interrupt,
};
