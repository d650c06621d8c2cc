/* The userspace datapath: one thread, woken through epoll by the kick eventfds and the tap fd, that
 * moves frames between the virtqueues and a macvtap/tap character device. */
#ifndef VNB_DATAPATH_H
#define VNB_DATAPATH_H
#include <stdint.h>
#include "vnb_mem.h"
#include "vnb_fault.h"

/* cffi:begin */

struct vnb_dp_stats {
    uint64_t tx_frames, tx_bytes, rx_frames, rx_bytes;
    uint64_t tx_kicks, rx_kicks;           /* guest kicks, summed from the eventfd counters */
    uint64_t tx_kick_wakeups, rx_kick_wakeups;
    uint64_t tx_interrupts, rx_interrupts; /* call eventfd writes */
    uint64_t syscalls;                     /* every system call the datapath thread made */
    uint64_t wakeups;                      /* epoll_wait returns with events */
    uint64_t tap_writes, tap_reads, tap_read_empty;
    uint64_t rx_stalls;                    /* times RX waited for guest buffers */
    uint64_t tx_tap_full;                  /* times TX found the tap full and waited for room */
    uint64_t busy_polls;                   /* idle loop rounds spent polling instead of sleeping */
    uint64_t rx_merged;                    /* frames spread over more than one buffer */
    uint64_t drops[9];                     /* by enum vnb_drop (VNB_DROP_MAX) */
    uint64_t faults[18];                   /* by enum vnb_fault (VNB_FAULT_MAX) */
};

struct vnb_dp_qstate {
    uint32_t num;
    uint16_t last_avail_idx;
    uint16_t used_idx;
    int32_t broken;
    int32_t fault;
};

struct vnb_dp;
struct vnb_dp *vnb_dp_new(void);
void vnb_dp_free(struct vnb_dp *dp);
int vnb_dp_set_mem(struct vnb_dp *dp, const struct vnb_mem *mem);
int vnb_dp_set_features(struct vnb_dp *dp, uint32_t flags, uint32_t hdr_len);
int vnb_dp_set_queue(struct vnb_dp *dp, int q, uint32_t num, uint64_t desc_gpa, uint64_t avail_gpa,
                     uint64_t used_gpa, int kick_fd, int call_fd, uint16_t last_avail_idx, uint16_t used_idx);
/* After vnb_dp_set_queue: where its used-ring writes are logged while the memory has a dirty log. */
int vnb_dp_set_log_addr(struct vnb_dp *dp, int q, uint64_t log_used_gpa);
int vnb_dp_set_tap(struct vnb_dp *dp, int tap_fd);
int vnb_dp_set_err_fd(struct vnb_dp *dp, int err_fd);
/* Watch the link's interface (ifindex > 0) for deletion over rtnetlink: a macvtap's fd never says. */
int vnb_dp_set_link_ifindex(struct vnb_dp *dp, int ifindex);
/* Tap I/O through io_uring (0: plain system calls on epoll, the default): up to batch frames
 * (<= VNB_DP_URING_MAX_BATCH) per io_uring_enter; sqpoll_idle_ms > 0 adds a kernel SQPOLL thread
 * that idles after that long. The ring is set up by vnb_dp_start, which fails if it cannot be. */
#define VNB_DP_URING_MAX_BATCH 64
/* flags: VNB_DP_URING_NO_NOWAIT makes the datapath behave as on a tap without FMODE_NOWAIT (macvtap
 * before 6.4): writes wait in the kernel, reads stay posted (the tests run that path on any kernel). */
#define VNB_DP_URING_NO_NOWAIT 1
int vnb_dp_set_uring(struct vnb_dp *dp, uint32_t batch, uint32_t sqpoll_idle_ms, uint32_t flags);
/* How a configured ring is serviced (vnb_dp_set_ring_mode), as vhost-user's ring states ask:
 * POLLED: the driver never kicks (a NOFD kick): the thread looks at the ring every VNB_DP_POLL_MS while
 * idle; DISCARD (TX only): started but disabled, so chains are used and their frames dropped. */
#define VNB_RING_POLLED 1
#define VNB_RING_DISCARD 2
#define VNB_DP_POLL_MS 1
int vnb_dp_set_ring_mode(struct vnb_dp *dp, int q, uint32_t mode);
/* Busy polling: after the last work, poll for usecs before sleeping (0, the default: sleep at once). */
int vnb_dp_set_busyloop(struct vnb_dp *dp, uint32_t usecs);
int vnb_dp_start(struct vnb_dp *dp);
int vnb_dp_stop(struct vnb_dp *dp);
int vnb_dp_running(struct vnb_dp *dp);
/* Nonzero (the EPOLLERR/EPOLLHUP bits) once the tap failed for good; the datapath then moves nothing. */
uint32_t vnb_dp_link_down(struct vnb_dp *dp);
int vnb_dp_tid(struct vnb_dp *dp);
/* The thread passes through its loop at least this often while it runs, idle or not. */
#define VNB_DP_HEARTBEAT_MS 1000
/* CLOCK_MONOTONIC ns of the thread's last pass through its loop (set at start, before the thread
 * runs): a running datapath whose heartbeat is much older than VNB_DP_HEARTBEAT_MS is stuck. */
int64_t vnb_dp_heartbeat(struct vnb_dp *dp);
void vnb_dp_get_stats(struct vnb_dp *dp, struct vnb_dp_stats *out);
int vnb_dp_get_qstate(struct vnb_dp *dp, int q, struct vnb_dp_qstate *out);
/* cffi:end */

#endif
