/* The datapath's tap I/O with plain system calls: a write (writev for a chain of several buffers)
 * per TX frame, a readv per RX frame straight into the guest's chain (a bounce buffer catches the
 * tail of a frame larger than the chain), epoll_wait to sleep, an eventfd write per interrupt.
 * Per frame that is what any userspace virtio back end pays: the guest's kick wakes this thread
 * (kernel -> user), one writev/readv crosses back into the kernel, and an interrupt is one more
 * eventfd write. Batching and EVENT_IDX make the kick and the interrupt rare; the writev/readv per
 * frame remains (that is the cost vhost-net avoids, and what vnb_dp_uring.c batches). */
#include "vnb_dp_impl.h"
#include "vnb_sys_impl.h"
#include <errno.h>
#include <sys/epoll.h>
#include <sys/uio.h>

/* ---- TX: guest -> tap ---- */

/* Returns 1 if the budget ran out with work left, 0 when the ring is empty and notifications are on. */
static int handle_tx(struct vnb_dp *dp)
{
    struct vnb_vq *vq = &dp->vq[TXQ];
    struct vnb_chain *c = &dp->chain;
    dp->tx_quiet = 0;   /* set again below if this pass ends idle; a blocked tap waits for EPOLLOUT */
    if (!dp->configured[TXQ] || vq->broken || dp->tx_blocked || dp->link_down)
        return 0;
    int done = 0, since_flush = 0, flush_at = flush_every(vq, TX_FLUSH_MAX);
    dp->walked = 0;
    vnb_vq_disable_notify(vq);
    for (;;) {
        if (round_over(dp, done)) {
            flush_and_notify(dp, TXQ);
            return 1;
        }
        int r = dp_pop(dp, TXQ);
        if (r < 0) {
            flush_and_notify(dp, TXQ);
            report_fault(dp, TXQ, -r);
            return 0;
        }
        if (r == 0) {
            flush_and_notify(dp, TXQ);
            if (!tx_ring_empty(dp))
                return 0;
            continue;
        }
        if (c->nin) {
            flush_and_notify(dp, TXQ);
            report_fault(dp, TXQ, -vnb_vq_fail(vq, VNB_FAULT_TX_WRITABLE));
            return 0;
        }
        if (dp->ring_mode[TXQ] & VNB_RING_DISCARD) {
            stat_inc(&dp->st.drops[VNB_DROP_TX_DISABLED]);
        } else if (c->out_len < dp->hdr_len) {
            stat_inc(&dp->st.drops[VNB_DROP_TX_SHORT]);
        } else if (c->out_len > VNB_MAX_FRAME + dp->hdr_len) {
            stat_inc(&dp->st.drops[VNB_DROP_TX_OVERSIZE]);
        } else {
            /* The chain is header + frame in any layout; the tap parses the header itself. One
             * buffer (the usual layout) goes out with write(): writev would first copy the iovec
             * array in from user space for nothing. */
            ssize_t n = c->nout == 1 ? vnb_sys_write(dp->tap_fd, c->iov[0].iov_base, c->iov[0].iov_len)
                                     : vnb_sys_writev(dp->tap_fd, c->iov, c->nout);
            stat_inc(&dp->st.syscalls);
            stat_inc(&dp->st.tap_writes);
            if (n < 0 && (errno == EAGAIN || errno == ENOBUFS || errno == ENOMEM)) {
                /* Like vhost: give the chain back and retry once the tap has room. */
                vnb_vq_unpop(vq, 1);
                stat_inc(&dp->st.tx_tap_full);
                if (errno == EAGAIN) {
                    dp->tx_blocked = 1;
                    update_tap(dp);
                } else {
                    dp->tx_retry = 1;
                }
                flush_and_notify(dp, TXQ);
                return 0;
            }
            if (n < 0 && errno == EBADFD) {
                /* The tun's interface is gone (a wake-up keyed EPOLLIN may not have reached us). */
                vnb_vq_unpop(vq, 1);
                flush_and_notify(dp, TXQ);
                link_gone(dp, EPOLLERR);
                return 0;
            }
            if (n < 0 && errno == EFAULT) {
                /* The chain was inside guest memory when popped: the memory itself went away. */
                memory_gone(dp);
                return 0;
            }
            if (n < 0) {
                stat_inc(&dp->st.drops[errno == EINVAL ? VNB_DROP_TX_TAP_REFUSED : VNB_DROP_TX_TAP_ERROR]);
            } else {
                stat_inc(&dp->st.tx_frames);
                stat_add(&dp->st.tx_bytes, c->out_len - dp->hdr_len);
            }
        }
        /* TX buffers are only read: the used length is 0 (§5.1.6.2). */
        vnb_vq_add_used(vq, c->head, 0);
        done++;
        if (++since_flush == flush_at) {
            flush_and_notify(dp, TXQ);
            since_flush = 0;
        }
    }
}

/* Read one frame from the tap straight into the next guest chain, with the bounce buffer as the
 * tail of the iovec: frames that fit one buffer are never copied. */
/* ---- RX: tap -> guest ---- */

static int rx_one(struct vnb_dp *dp)
{
    struct rx_pending *p = &dp->pend;
    struct vnb_chain *c = &dp->chain;
    if (p->active)
        return rx_continue(dp);
    int r = rx_pop(dp);
    if (r != RX_OK)
        return r;
    /* readv takes at most UIO_MAXIOV iovecs: keep one for the bounce tail. */
    int niov = c->nin < VNB_MAX_IOV ? c->nin : VNB_MAX_IOV - 1;
    size_t cap = 0;
    for (int i = 0; i < niov; i++)
        cap += c->iov[i].iov_len;
    c->iov[niov].iov_base = dp->bounce;
    c->iov[niov].iov_len = BOUNCE_LEN;
    ssize_t n = vnb_sys_readv(dp->tap_fd, c->iov, niov + 1);
    stat_inc(&dp->st.syscalls);
    stat_inc(&dp->st.tap_reads);
    if (n < 0) {
        vnb_vq_unpop(&dp->vq[RXQ], 1);
        if (errno == EBADFD) {
            link_gone(dp, EPOLLERR);   /* as in handle_tx */
            return RX_TAP_EMPTY;
        }
        if (errno == EAGAIN) {
            stat_inc(&dp->st.tap_read_empty);
            return RX_TAP_EMPTY;
        }
        if (errno == EFAULT) {   /* as in handle_tx: checked buffers the memory of which went away */
            memory_gone(dp);
            return RX_FAULT;
        }
        stat_inc(&dp->st.drops[VNB_DROP_RX_TAP_ERROR]);
        return RX_TAP_EMPTY;
    }
    if (n == 0 && tap_hung_up(dp)) {
        vnb_vq_unpop(&dp->vq[RXQ], 1);
        link_gone(dp, EPOLLHUP);
        return RX_TAP_EMPTY;
    }
    if (vnb_logging(&dp->mem))   /* what readv wrote, whether or not the frame is then kept */
        vnb_log_iov(&dp->mem, c->iov, niov, (size_t)n < cap ? (size_t)n : cap);
    if ((size_t)n < dp->hdr_len || ((size_t)n > cap && (size_t)n - cap >= BOUNCE_LEN)) {
        vnb_vq_unpop(&dp->vq[RXQ], 1);
        stat_inc(&dp->st.drops[VNB_DROP_RX_TRUNCATED]);
        return RX_OK;
    }
    p->active = 1;
    p->total = (uint32_t)n;
    p->first_cap = (uint32_t)(cap < (size_t)n ? cap : (size_t)n);
    p->bounce = dp->bounce;
    p->placed = p->first_cap;
    p->heads[0] = c->head;
    p->lens[0] = p->first_cap;
    p->nheads = 1;
    p->nring = p->min_nring = c->nring;
    p->hdr_niov = 0;
    p->hdr_cov = 0;
    hdr_track(dp, c->iov, niov);
    if (p->placed < p->total && !(dp->flags & VNB_F_MRG_RXBUF)) {
        rx_drop_pending(dp, VNB_DROP_RX_NO_BUFFER);   /* as in rx_continue */
        return RX_OK;
    }
    return rx_continue(dp);
}

/* Returns 1 if the budget ran out with work left. */
static int handle_rx(struct vnb_dp *dp)
{
    struct vnb_vq *vq = &dp->vq[RXQ];
    dp->rx_quiet = 0;   /* set again below if the guest is still out of buffers */
    if (!dp->configured[RXQ] || dp->tap_fd < 0 || dp->link_down)
        return 0;
    if (vq->broken) {
        /* Stop reading: frames stay in (and overflow from) the tap's queue, where the kernel counts them. */
        arm_tap(dp, 0);
        return 0;
    }
    int done = 0, since_flush = 0, more = 0, flush_at = flush_every(vq, RX_FLUSH_MAX);
    dp->walked = 0;
    vnb_vq_disable_notify(vq);
    for (;;) {
        if (round_over(dp, done)) {
            more = 1;
            break;
        }
        int r = rx_one(dp);
        if (r == RX_YIELD) {
            more = 1;
            break;
        }
        if (r == RX_OK) {
            done++;
            if (++since_flush == flush_at) {
                flush_and_notify(dp, RXQ);
                since_flush = 0;
            }
            continue;
        }
        if (r == RX_NEED_BUFFERS) {
            if (rx_out_of_buffers(dp))
                continue;
            break;
        }
        if (r == RX_FAULT)
            arm_tap(dp, 0);
        else
            arm_tap(dp, 1);   /* tap empty: make sure we hear about the next frame */
        break;
    }
    flush_and_notify(dp, RXQ);
    return more;
}

static void plain_interrupt(struct vnb_dp *dp, int q)
{
    uint64_t one = 1;
    /* An eventfd write fails only on counter overflow, which needs 2^64 interrupts. */
    (void)!vnb_sys_write(dp->call_fd[q], &one, sizeof(one));
    stat_inc(&dp->st.syscalls);
}

static int plain_wait(struct vnb_dp *dp, struct epoll_event *evs, int max, int timeout_ms)
{
    int n = epoll_wait(dp->epfd, evs, max, timeout_ms);
    stat_inc(&dp->st.syscalls);
    return n;
}

const struct vnb_dp_io vnb_dp_plain_io = {
    .name = "plain",
    .wait = plain_wait,
    .tx = handle_tx,
    .rx = handle_rx,
    .interrupt = plain_interrupt,
};
