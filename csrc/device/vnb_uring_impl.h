/* A minimal io_uring over the raw system calls and <linux/io_uring.h> (the kernel headers every
 * compiler already has: no liburing to install). One ring, one submitting thread. Internal: not seen
 * by cffi. */
#ifndef VNB_URING_IMPL_H
#define VNB_URING_IMPL_H
#include <linux/io_uring.h>
#include <stdint.h>
#include <stddef.h>

struct vnb_uring {
    int fd;
    uint32_t setup_flags;             /* what io_uring_setup accepted (IORING_SETUP_*) */
    uint32_t sq_entries, cq_entries;
    uint32_t *sq_head, *sq_tail, *sq_flags, *sq_array, sq_mask;
    uint32_t *cq_head, *cq_tail, cq_mask;
    struct io_uring_sqe *sqes;
    struct io_uring_cqe *cqes;
    uint32_t sqe_tail;                /* our tail: SQEs written, not yet published to the kernel */
    uint32_t unsubmitted;             /* published (or written) but not yet handed over by an enter */
    void *sq_ring, *cq_ring;
    size_t sq_ring_sz, cq_ring_sz, sqes_sz;
};

/* sqpoll_idle_ms > 0: a kernel thread polls the SQ and goes idle after that long without work. */
int vnb_uring_init(struct vnb_uring *u, uint32_t entries, uint32_t sqpoll_idle_ms);
void vnb_uring_exit(struct vnb_uring *u);
/* The next free SQE, zeroed; NULL when the SQ is full (submit first). */
struct io_uring_sqe *vnb_uring_get_sqe(struct vnb_uring *u);
/* Hand written SQEs to the kernel and/or wait for min_complete CQEs (timeout_ns < 0: no limit).
 * Returns what io_uring_enter returned (-errno on failure); with SQPOLL and nothing to wait for,
 * returns 0 without a system call. *syscalls counts the io_uring_enter calls made. */
int vnb_uring_enter(struct vnb_uring *u, uint32_t min_complete, int64_t timeout_ns, uint64_t *syscalls);
/* The next CQE or NULL; vnb_uring_cqe_seen releases it. */
struct io_uring_cqe *vnb_uring_peek(struct vnb_uring *u);
void vnb_uring_cqe_seen(struct vnb_uring *u);

static inline int vnb_uring_sqpoll(const struct vnb_uring *u) { return !!(u->setup_flags & IORING_SETUP_SQPOLL); }

static inline void vnb_uring_prep(struct io_uring_sqe *sqe, uint8_t op, int fd, const void *addr, uint32_t len,
                                  uint64_t user_data)
{
    sqe->opcode = op;
    sqe->fd = fd;
    sqe->addr = (uint64_t)(uintptr_t)addr;
    sqe->len = len;
    sqe->off = (uint64_t)-1;          /* a character device: no file position, as write() */
    sqe->user_data = user_data;
}

#endif
