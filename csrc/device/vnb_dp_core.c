/* The datapath's steps that do not depend on how the tap is read and written: publishing used entries
 * and interrupting, faults and a link or memory that went away, what epoll watches on the tap, and
 * placing a frame read from the tap into the guest's RX chains (MRG_RXBUF across several). The two
 * tap I/O modes (vnb_dp_plain.c, vnb_dp_uring.c) build on these; the loop (vnb_datapath.c) runs them.
 * Nothing here calls into a mode except through dp->io. */
#include "vnb_dp_impl.h"
#include "vnb_sys_impl.h"
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/uio.h>

static void interrupt(struct vnb_dp *dp, int q)
{
    dp->io->interrupt(dp, q);   /* an eventfd write, or (io_uring) an SQE on the loop's next enter */
    if (q == TXQ)
        stat_inc(&dp->st.tx_interrupts);
    else
        stat_inc(&dp->st.rx_interrupts);
}

/* After a read of 0 bytes: whether that was end of file, the far end gone (else an empty frame, which
 * a socket standing in for the tap can carry and a tap cannot). Every later read would return 0 at
 * once: without this RX spun on them, dropping "empty frames", until epoll's EPOLLHUP got a turn. */
int tap_hung_up(struct vnb_dp *dp)
{
    struct pollfd p = { .fd = dp->tap_fd, .events = POLLIN };
    int n = vnb_sys_poll(&p, 1, 0);
    stat_inc(&dp->st.syscalls);
    return n > 0 && (p.revents & (POLLHUP | POLLERR));
}

void flush_and_notify(struct vnb_dp *dp, int q)
{
    struct vnb_vq *vq = &dp->vq[q];
    vnb_vq_flush_used(vq);
    if (vnb_vq_should_notify(vq))
        interrupt(dp, q);
}

void report_fault(struct vnb_dp *dp, int q, int fault)
{
    stat_inc(&dp->st.faults[fault < VNB_FAULT_MAX ? fault : 0]);
    if (dp->err_fd >= 0) {
        uint64_t one = 1;
        /* Same reasoning as interrupt(): an eventfd write cannot fail here. */
        (void)!vnb_sys_write(dp->err_fd, &one, sizeof(one));
        stat_inc(&dp->st.syscalls);
    }
}

uint32_t tap_events_wanted(struct vnb_dp *dp)
{
    if (dp->u.batch)   /* io_uring polls the tap itself (uring_wait); epoll reports its EPOLLERR/EPOLLHUP */
        return uring_rx(dp) || !dp->rx_wants_tap ? 0 : EPOLLIN;   /* RX by readv: as the plain path */
    return (dp->rx_wants_tap ? EPOLLIN : 0) | (dp->tx_blocked ? EPOLLOUT : 0);
}

void update_tap(struct vnb_dp *dp)
{
    uint32_t want = tap_events_wanted(dp);
    if (dp->tap_events == want || dp->link_down)   /* a gone link is no longer in the epoll set */
        return;
    struct epoll_event ev = { .events = want, .data.u32 = EV_TAP };
    /* MOD on an fd we registered ourselves cannot fail unless the fd was closed under us. */
    (void)vnb_sys_epoll_ctl(dp->epfd, EPOLL_CTL_MOD, dp->tap_fd, &ev);
    stat_inc(&dp->st.syscalls);
    dp->tap_events = want;
}

void arm_tap(struct vnb_dp *dp, int on)
{
    dp->rx_wants_tap = on;
    update_tap(dp);
}

/* Pop the next chain of queue q into dp->chain, counting the descriptors it walked into the round. */
int dp_pop(struct vnb_dp *dp, int q)
{
    int r = vnb_vq_pop(&dp->vq[q], &dp->chain);
    if (r > 0)
        dp->walked += dp->chain.ndesc;
    return r;
}

int round_over(const struct vnb_dp *dp, int frames)
{
    return frames >= BUDGET || dp->walked >= DESC_BUDGET;
}

/* The tap reported EPOLLERR/EPOLLHUP: its interface was deleted (a tun fd then fails every read and
 * write with EBADFD, and stays readable). Stop watching it, or the level-triggered error would spin
 * this thread, and tell Python through err_fd. Both directions stop until the device is reset. */
void link_gone(struct vnb_dp *dp, uint32_t events)
{
    __atomic_store_n(&dp->link_down, events & (EPOLLERR | EPOLLHUP), __ATOMIC_RELAXED);
    /* DEL of an fd we added cannot fail unless it was closed under us, which is the same end. */
    (void)vnb_sys_epoll_ctl(dp->epfd, EPOLL_CTL_DEL, dp->tap_fd, NULL);
    stat_inc(&dp->st.syscalls);
    dp->tap_events = 0;
    if (dp->err_fd >= 0) {
        uint64_t one = 1;
        (void)!vnb_sys_write(dp->err_fd, &one, sizeof(one));   /* as interrupt(): cannot fail */
        stat_inc(&dp->st.syscalls);
    }
}

/* At most a quarter of the ring, so on small rings the guest never waits for a whole ring's flush. */
int flush_every(const struct vnb_vq *vq, uint32_t max)
{
    uint32_t n = vq->num / 4;
    return n > max ? (int)max : n ? (int)n : 1;
}

/* ---- TX: guest -> tap ---- */

int tx_ring_empty(struct vnb_dp *dp)
{
    struct vnb_vq *vq = &dp->vq[TXQ];
    if (dp->busyloop_ns) {
        /* As vhost_net_busy_poll: the guest need not kick while we are about to poll anyway. */
        dp->tx_quiet = 1;
        return 0;
    }
    if (!vnb_vq_enable_notify(vq))
        return 0;
    vnb_vq_disable_notify(vq);
    return 1;
}

/* ---- RX: tap -> guest ---- */

static void iov_write(const struct iovec *iov, int niov, size_t off, const void *src, size_t len)
{
    const uint8_t *s = src;
    for (int i = 0; i < niov && len; i++) {
        if (off >= iov[i].iov_len) {
            off -= iov[i].iov_len;
            continue;
        }
        size_t n = iov[i].iov_len - off;
        if (n > len)
            n = len;
        memcpy((uint8_t *)iov[i].iov_base + off, s, n);
        s += n;
        len -= n;
        off = 0;
    }
}

static size_t iov_copy_in(const struct iovec *iov, int niov, const uint8_t *src, size_t len)
{
    size_t done = 0;
    for (int i = 0; i < niov && done < len; i++) {
        size_t n = iov[i].iov_len;
        if (n > len - done)
            n = len - done;
        memcpy(iov[i].iov_base, src + done, n);
        done += n;
    }
    return done;
}

static void rx_complete(struct vnb_dp *dp)
{
    struct rx_pending *p = &dp->pend;
    struct vnb_vq *vq = &dp->vq[RXQ];
    if (dp->hdr_len == VNB_NET_HDR_LEN) {
        /* The tap skips num_buffers (it writes only the 10-byte header): we own that field. */
        uint16_t nb = (uint16_t)p->nheads;
        iov_write(p->hdr_iov, p->hdr_niov, VNB_NUM_BUFFERS_OFF, &nb, sizeof(nb));
        if (vnb_logging(&dp->mem))   /* placed (and logged) with the frame already; a write all the same */
            vnb_log_iov(&dp->mem, p->hdr_iov, p->hdr_niov, dp->hdr_len);
    }
    for (uint32_t i = 0; i < p->nheads; i++)
        vnb_vq_add_used(vq, p->heads[i], p->lens[i]);
    if (p->nheads > 1)
        stat_inc(&dp->st.rx_merged);
    stat_inc(&dp->st.rx_frames);
    stat_add(&dp->st.rx_bytes, p->total - dp->hdr_len);
    p->active = 0;
}

void rx_drop_pending(struct vnb_dp *dp, int reason)
{
    /* The held chains are the last ones popped: hand them back untouched, as vhost_discard_vq_desc. */
    vnb_vq_unpop(&dp->vq[RXQ], (uint16_t)dp->pend.nheads);
    dp->pend.active = 0;
    stat_inc(&dp->st.drops[reason]);
}

int rx_pop(struct vnb_dp *dp)
{
    struct vnb_vq *vq = &dp->vq[RXQ];
    int r = dp_pop(dp, RXQ);
    if (r < 0) {
        report_fault(dp, RXQ, -r);
        return RX_FAULT;
    }
    if (r == 0)
        return RX_NEED_BUFFERS;
    if (dp->chain.nout) {
        report_fault(dp, RXQ, -vnb_vq_fail(vq, VNB_FAULT_RX_READABLE));
        return RX_FAULT;
    }
    return RX_OK;
}

/* Remember where the header bytes went. A guest may post buffers smaller than the header (against
 * §5.1.6.3.1, but vhost copes), so the header can span the first chains. */
void hdr_track(struct vnb_dp *dp, const struct iovec *iov, int niov)
{
    struct rx_pending *p = &dp->pend;
    for (int i = 0; i < niov && p->hdr_cov < dp->hdr_len && p->hdr_niov < HDR_IOV; i++) {
        p->hdr_iov[p->hdr_niov++] = iov[i];
        p->hdr_cov += iov[i].iov_len;
    }
}

/* Place the rest of a frame that did not fit in its first buffer into further chains (MRG_RXBUF). */
int rx_continue(struct vnb_dp *dp)
{
    struct rx_pending *p = &dp->pend;
    struct vnb_chain *c = &dp->chain;
    while (p->placed < p->total) {
        if (dp->walked >= DESC_BUDGET)
            return RX_YIELD;
        if (p->nheads == RX_MAX_HEADS) {
            rx_drop_pending(dp, VNB_DROP_RX_NO_BUFFER);
            return RX_OK;
        }
        int r = rx_pop(dp);
        /* A sum, not num - nring: a guest listing one chain in several avail slots makes nring pass num.
         * It cannot overflow: at most RX_MAX_HEADS chains of at most num (<= 32768) descriptors. */
        if (r == RX_NEED_BUFFERS && p->nring + p->min_nring > dp->vq[RXQ].num) {
            /* The chains we hold leave the guest fewer free descriptors than any chain it posted for
             * this frame: waiting for more would stall RX for good, so drop it (the guest posts
             * uniform buffers in practice; one that would shrink them loses only this frame). */
            rx_drop_pending(dp, VNB_DROP_RX_NO_BUFFER);
            return RX_OK;
        }
        if (r != RX_OK)
            return r;
        size_t n = iov_copy_in(c->iov, c->nin, p->bounce + (p->placed - p->first_cap), p->total - p->placed);
        if (vnb_logging(&dp->mem))
            vnb_log_iov(&dp->mem, c->iov, c->nin, n);
        hdr_track(dp, c->iov, c->nin);
        p->heads[p->nheads] = c->head;
        p->lens[p->nheads] = (uint32_t)n;
        p->nheads++;
        p->nring += c->nring;
        if (p->nheads == 1 || c->nring < p->min_nring)
            p->min_nring = c->nring;
        p->placed += (uint32_t)n;
        if (p->placed < p->total && !(dp->flags & VNB_F_MRG_RXBUF)) {
            /* Without mergeable buffers a frame must fit one chain (vhost discards it likewise). */
            rx_drop_pending(dp, VNB_DROP_RX_NO_BUFFER);
            return RX_OK;
        }
    }
    rx_complete(dp);
    return RX_OK;
}

int rx_out_of_buffers(struct vnb_dp *dp)
{
    struct vnb_vq *vq = &dp->vq[RXQ];
    /* Busy polling looks for buffers itself, without asking the guest to kick (as TX). */
    dp->rx_quiet = !!dp->busyloop_ns;
    if (!dp->rx_quiet && vnb_vq_enable_notify(vq)) {
        vnb_vq_disable_notify(vq);
        return 1;
    }
    /* No buffers: stop watching the tap until the guest posts new ones. */
    stat_inc(&dp->st.rx_stalls);
    arm_tap(dp, 0);
    return 0;
}

/* The front end took guest memory away under us (SIGBUS on a shrunk memfd, or EFAULT from the kernel
 * on a range we had checked): nothing in it can be trusted or touched again. Both rings stop with
 * VNB_FAULT_MEM_GONE and Python hears it on err_fd; a frame half-placed is dropped without handing its
 * chains back (that would write the used ring). */
void memory_gone(struct vnb_dp *dp)
{
    if (dp->mem_gone)
        return;
    __atomic_store_n(&dp->mem_gone, 1, __ATOMIC_RELAXED);
    for (int q = 0; q < 2; q++)
        if (dp->configured[q])
            (void)vnb_vq_fail(&dp->vq[q], VNB_FAULT_MEM_GONE);
    if (dp->pend.active) {
        dp->pend.active = 0;
        stat_inc(&dp->st.drops[VNB_DROP_RX_STOPPED]);
    }
    report_fault(dp, TXQ, VNB_FAULT_MEM_GONE);
}
