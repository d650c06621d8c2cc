/* The userspace datapath's state, the seam between its loop and its two tap I/O modes (struct
 * vnb_dp_io: plain system calls in vnb_dp_plain.c, io_uring in vnb_dp_uring.c), and the steps the
 * modes share (vnb_dp_core.c). Calls go one way: vnb_datapath.c (the loop) -> a mode -> the core;
 * the core reaches a mode only through dp->io. Internal: not seen by cffi. */
#ifndef VNB_DP_IMPL_H
#define VNB_DP_IMPL_H
#include "vnb_datapath.h"
#include "vnb_log.h"
#include "vnb_net.h"
#include "vnb_uring_impl.h"
#include "vnb_virtq.h"
#include <pthread.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/uio.h>

#define VNB_INTERNAL __attribute__((visibility("hidden")))

#define RXQ 0
#define TXQ 1
#define BUDGET 256            /* frames per queue per round, so neither direction starves the other */
/* Descriptors walked per queue per round. A chain costs up to VNB_MAX_CHAIN_DESC walks however few
 * bytes it carries, so frames alone do not bound a round: this does, and so bounds how long a stop
 * request waits however the guest builds its rings (a round walks < 2 * VNB_MAX_CHAIN_DESC). */
#define DESC_BUDGET VNB_MAX_CHAIN_DESC
/* Publish used entries this often inside a batch. TX: every 32, so the guest reclaims buffers while
 * we work and never stalls for a whole ring (at 64 it did, and the datapath slept once per ring).
 * RX: every 64, as vhost-net's VHOST_NET_BATCH: under load the guest gets at most one interrupt per
 * 64 frames, and nothing waits for those entries but the guest's reading of them. */
#define TX_FLUSH_MAX 32
#define RX_FLUSH_MAX 64
#define BOUNCE_LEN (VNB_MAX_FRAME + VNB_NET_HDR_LEN + 1)  /* +1: a read that fills it was truncated */
#define RX_MAX_HEADS 1024
#define HDR_IOV 12            /* iovecs kept to reach num_buffers in the first buffer (each >= 1 byte) */

enum { EV_STOP = 1, EV_KICK_RX, EV_KICK_TX, EV_TAP, EV_NETLINK };

struct rx_pending {
    int active;
    uint32_t total;            /* frame length read, header included */
    uint32_t placed;           /* bytes already in guest buffers */
    uint32_t first_cap;        /* bytes readv put straight into the first chain; the rest is in bounce */
    const uint8_t *bounce;     /* where the bytes past first_cap are */
    uint32_t nheads;
    uint32_t nring;            /* ring descriptors held by the chains in heads[] (not indirect entries) */
    uint32_t min_nring;        /* the shortest of those chains, in ring descriptors */
    uint16_t heads[RX_MAX_HEADS];
    uint32_t lens[RX_MAX_HEADS];
    struct iovec hdr_iov[HDR_IOV];  /* where the header landed, possibly across the first chains */
    int hdr_niov;
    size_t hdr_cov;                 /* bytes of the header hdr_iov covers */
};


/* ---- the io_uring mode (vnb_dp_uring.c) ---- */
#define URING_MAX_BATCH VNB_DP_URING_MAX_BATCH

struct uring_tx_slot {
    uint16_t head;
    int16_t drop;              /* a drop reason (the chain is not written), or -1: a write was queued */
    int32_t res;               /* its CQE's result, once the batch is done */
    uint32_t out_len;
    struct iovec *iov;         /* the chain's iovecs for a WRITEV: they must outlive the submission */
};

struct uring_rx_slot {
    int32_t res;
    int done;
    int frame;                 /* holds a frame read and not yet placed */
    uint8_t *buf;              /* BOUNCE_LEN bytes the frame is read into */
};

struct vnb_dp_uring {
    uint32_t batch;            /* frames per submission (0: the datapath uses epoll and plain calls) */
    uint32_t sqpoll_idle_ms;   /* > 0: SQPOLL, its kernel thread idling after this long */
    int no_nowait;             /* VNB_DP_URING_NO_NOWAIT: never ask for RWF_NOWAIT */
    struct vnb_uring ring;
    int epoll_armed, tap_in_armed, tap_out_armed;   /* a POLL_ADD of each is in flight */
    int epoll_fired, tap_in_fired, tap_out_fired;   /* and has completed, not yet acted on */
    int rx_tap_empty;          /* a NOWAIT read found the tap empty: poll it before reading again */
    uint32_t read_flags;       /* RWF_NOWAIT while the tap supports it; 0: RX reads with readv */
    int entered;               /* an io_uring_enter ran since the loop last waited */
    uint32_t write_flags;      /* RWF_NOWAIT while the tap supports it (a full tap then says EAGAIN) */
    uint64_t irq_one;          /* the 1 an interrupt SQE writes to a call eventfd: it outlives the SQE */
    struct io_uring_sqe *last_linked;   /* the batch's last SQE: its IO_LINK is cleared before submission */
    uint32_t waiting;          /* CQEs of the current batch not yet seen */
    int ntx;
    struct uring_tx_slot tx[URING_MAX_BATCH];
    /* RX reads land in this pool: rx_count frames not yet placed, the oldest at or after rx_first.
     * A new batch is read once every frame of the last one is placed. */
    struct uring_rx_slot rx[URING_MAX_BATCH];
    uint32_t rx_first, rx_count;
    struct iovec *iov_pool;    /* URING_MAX_BATCH * VNB_MAX_IOV, for the TX slots */
    uint8_t *buf_pool;         /* URING_MAX_BATCH * BOUNCE_LEN, for the RX slots */
};

struct vnb_dp;

/* How a datapath moves frames between the rings and the tap, and how its loop sleeps. */
struct vnb_dp_io {
    const char *name;
    int (*setup)(struct vnb_dp *dp);       /* on the thread, before the loop (NULL: nothing to set up) */
    void (*drain)(struct vnb_dp *dp);      /* on the thread after the loop, guest memory still guarded */
    void (*teardown)(struct vnb_dp *dp);   /* last, undoes setup */
    /* Wait up to timeout_ms (0: only collect) for the loop's events; fills evs as epoll_wait does. */
    int (*wait)(struct vnb_dp *dp, struct epoll_event *evs, int max, int timeout_ms);
    /* A round of TX (guest -> tap) or RX (tap -> guest): 1 if the round's budget ran out with work left. */
    int (*tx)(struct vnb_dp *dp);
    int (*rx)(struct vnb_dp *dp);
    void (*interrupt)(struct vnb_dp *dp, int q);   /* signal queue q's call eventfd */
};
VNB_INTERNAL extern const struct vnb_dp_io vnb_dp_plain_io, vnb_dp_uring_io;

struct vnb_dp {
    const struct vnb_dp_io *io;
    struct vnb_mem mem;
    struct vnb_vq vq[2];
    int configured[2];
    uint32_t ring_mode[2];     /* VNB_RING_POLLED, VNB_RING_DISCARD */
    int kick_fd[2], call_fd[2];
    int tap_fd, err_fd, stop_fd, epfd;
    int link_ifindex, nl_fd;   /* the link's interface, watched for RTM_DELLINK (0: not watched) */
    uint32_t flags, hdr_len;
    pthread_t thread;
    int running;
    int tid;
    int64_t beat_ns;           /* vnb_dp_heartbeat: written by the thread, read by any */
    int rx_wants_tap;          /* RX has buffers: wake on EPOLLIN */
    int tx_blocked;            /* the tap's send buffer is full (EAGAIN): wake on EPOLLOUT */
    uint32_t tap_events;       /* what epoll watches on the tap now */
    int tx_retry;              /* the kernel was short of memory (ENOBUFS/ENOMEM): no event will say when
                                * that ends, so retry after a 1 ms sleep */
    int64_t busyloop_ns;       /* poll this long after the last work before sleeping (0: sleep at once) */
    int tx_quiet, rx_quiet;    /* ring idle (TX) or out of buffers (RX) with the guest's kicks left off:
                                * we poll it instead, and arm_notify turns them on before we sleep */
    uint32_t walked;           /* descriptors popped in this round of the queue being handled */
    uint32_t link_down;        /* EPOLLERR/EPOLLHUP the tap reported for good (its interface is gone);
                                * written by the thread, read by vnb_dp_link_down */
    uint32_t mem_gone;         /* guest memory vanished (memory_gone): the thread touches it no more */
    struct vnb_dp_uring u;
    int setup_err;             /* what setting the thread up failed with (the io_uring), for vnb_dp_start */
    struct vnb_dp_stats st;
    struct vnb_chain chain;
    struct rx_pending pend;
    uint8_t bounce[BOUNCE_LEN];
};


/* Counters have one writer, the datapath thread, and vnb_dp_get_stats reads them from another:
 * relaxed atomic stores (and loads there) make that race-free in C11 terms, at the cost of a plain
 * move. The writer's own read of the old value races with nothing (no other thread writes). */
static inline void stat_add(uint64_t *c, uint64_t n) { __atomic_store_n(c, *c + n, __ATOMIC_RELAXED); }
static inline void stat_inc(uint64_t *c) { stat_add(c, 1); }

enum { RX_OK, RX_TAP_EMPTY, RX_NEED_BUFFERS, RX_FAULT, RX_YIELD /* round over mid-frame: resume next round */ };

/* vnb_dp_core.c: shared by both modes */
VNB_INTERNAL void flush_and_notify(struct vnb_dp *dp, int q);
VNB_INTERNAL void report_fault(struct vnb_dp *dp, int q, int fault);
VNB_INTERNAL void memory_gone(struct vnb_dp *dp);
/* What epoll watches on the tap for the mode and the rings' state (EPOLLERR/EPOLLHUP it always does). */
VNB_INTERNAL uint32_t tap_events_wanted(struct vnb_dp *dp);
VNB_INTERNAL void update_tap(struct vnb_dp *dp);
VNB_INTERNAL void arm_tap(struct vnb_dp *dp, int on);
VNB_INTERNAL int dp_pop(struct vnb_dp *dp, int q);
VNB_INTERNAL int round_over(const struct vnb_dp *dp, int frames);
VNB_INTERNAL void link_gone(struct vnb_dp *dp, uint32_t events);
VNB_INTERNAL int tap_hung_up(struct vnb_dp *dp);
VNB_INTERNAL int flush_every(const struct vnb_vq *vq, uint32_t max);
VNB_INTERNAL int rx_pop(struct vnb_dp *dp);
VNB_INTERNAL int rx_continue(struct vnb_dp *dp);
/* Remember where the header bytes of the frame being placed went (num_buffers is written there). */
VNB_INTERNAL void hdr_track(struct vnb_dp *dp, const struct iovec *iov, int niov);
VNB_INTERNAL void rx_drop_pending(struct vnb_dp *dp, int reason);
/* TX tail when the ring ran empty: 1 to go on popping (the guest posted meanwhile), 0 to stop. */
VNB_INTERNAL int tx_ring_empty(struct vnb_dp *dp);
/* RX when the guest is out of buffers: 1 to go on (it posted meanwhile), 0 to stop (RX stalls). */
VNB_INTERNAL int rx_out_of_buffers(struct vnb_dp *dp);

/* vnb_dp_uring.c */
/* RX through io_uring: only while the tap takes RWF_NOWAIT reads. Without it a read that finds the
 * tap empty stays posted in the kernel, and a chain of them completed one per io_uring_enter
 * (measured: 153 kpps, an enter a frame): the plain path's readv is cheaper, so RX uses that. */
static inline int uring_rx(const struct vnb_dp *dp) { return dp->u.batch && dp->u.read_flags; }
/* Ask for RWF_NOWAIT at every start (the tap says at the first I/O whether it takes it). A
 * full tap then says EAGAIN, as to write(): counted, then polled. */
static inline void uring_nowait_reset(struct vnb_dp *dp)
{
    dp->u.read_flags = dp->u.write_flags = dp->u.batch && !dp->u.no_nowait ? RWF_NOWAIT : 0;
}
#endif
