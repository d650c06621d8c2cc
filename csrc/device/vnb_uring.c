/* io_uring set up and driven with the raw system calls (see vnb_uring_impl.h). The libFuzzer target
 * (csrc/fuzz/fuzz_datapath.c, built with VNB_FUZZ) supplies these functions instead: a "kernel" that
 * runs the SQEs at enter with results from the input. */
#ifndef VNB_FUZZ
#include "vnb_uring_impl.h"
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static int sys_setup(uint32_t entries, struct io_uring_params *p)
{
    return (int)syscall(__NR_io_uring_setup, entries, p);
}

static int sys_enter(int fd, uint32_t to_submit, uint32_t min_complete, uint32_t flags, const void *arg, size_t argsz)
{
    return (int)syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, arg, argsz);
}

int vnb_uring_init(struct vnb_uring *u, uint32_t entries, uint32_t sqpoll_idle_ms)
{
    memset(u, 0, sizeof(*u));
    u->fd = -1;
    /* Best first: task work run only when we wait (6.1+), then cooperative (5.19+), then plain. With
     * SQPOLL the kernel thread is the submitter, which DEFER_TASKRUN does not allow. */
    static const uint32_t tries[] = {
        IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN, IORING_SETUP_COOP_TASKRUN, 0 };
    int fd = -EINVAL;
    struct io_uring_params p;
    for (size_t i = 0; i < sizeof(tries) / sizeof(tries[0]); i++) {
        memset(&p, 0, sizeof(p));
        p.flags = sqpoll_idle_ms ? IORING_SETUP_SQPOLL | (tries[i] & IORING_SETUP_COOP_TASKRUN) : tries[i];
        p.sq_thread_idle = sqpoll_idle_ms;
        p.flags |= IORING_SETUP_CQSIZE;
        p.cq_entries = entries * 4;       /* room for every SQE's CQE plus the polls' */
        fd = sys_setup(entries, &p);
        if (fd >= 0)
            break;
        fd = -errno;
        if (fd != -EINVAL)
            return fd;                    /* ENOSYS, EPERM (io_uring_disabled), ENOMEM: no fallback helps */
    }
    if (fd < 0)
        return fd;
    if (!(p.features & IORING_FEAT_NODROP) || !(p.features & IORING_FEAT_EXT_ARG)) {
        close(fd);
        return -EOPNOTSUPP;               /* before 5.11: CQEs could be dropped, no wait timeout */
    }
    u->fd = fd;
    u->setup_flags = p.flags;
    u->sq_entries = p.sq_entries;
    u->cq_entries = p.cq_entries;
    u->sq_ring_sz = p.sq_off.array + p.sq_entries * sizeof(uint32_t);
    u->cq_ring_sz = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    if (p.features & IORING_FEAT_SINGLE_MMAP) {
        if (u->cq_ring_sz > u->sq_ring_sz)
            u->sq_ring_sz = u->cq_ring_sz;
        u->cq_ring_sz = u->sq_ring_sz;
    }
    u->sq_ring = mmap(NULL, u->sq_ring_sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQ_RING);
    if (u->sq_ring == MAP_FAILED)
        goto fail;
    if (p.features & IORING_FEAT_SINGLE_MMAP) {
        u->cq_ring = u->sq_ring;
    } else {
        u->cq_ring = mmap(NULL, u->cq_ring_sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_CQ_RING);
        if (u->cq_ring == MAP_FAILED)
            goto fail;
    }
    u->sqes_sz = p.sq_entries * sizeof(struct io_uring_sqe);
    u->sqes = mmap(NULL, u->sqes_sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQES);
    if (u->sqes == MAP_FAILED) {
        u->sqes = NULL;
        goto fail;
    }
    uint8_t *sq = u->sq_ring, *cq = u->cq_ring;
    u->sq_head = (uint32_t *)(sq + p.sq_off.head);
    u->sq_tail = (uint32_t *)(sq + p.sq_off.tail);
    u->sq_flags = (uint32_t *)(sq + p.sq_off.flags);
    u->sq_array = (uint32_t *)(sq + p.sq_off.array);
    u->sq_mask = *(uint32_t *)(sq + p.sq_off.ring_mask);
    u->cq_head = (uint32_t *)(cq + p.cq_off.head);
    u->cq_tail = (uint32_t *)(cq + p.cq_off.tail);
    u->cq_mask = *(uint32_t *)(cq + p.cq_off.ring_mask);
    u->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
    /* The SQ array maps ring slots to SQEs: identity, so slot i always holds sqes[i]. */
    for (uint32_t i = 0; i < p.sq_entries; i++)
        u->sq_array[i] = i;
    u->sqe_tail = *u->sq_tail;
    return 0;
fail:
    {
        int e = -errno;
        vnb_uring_exit(u);
        return e;
    }
}

void vnb_uring_exit(struct vnb_uring *u)
{
    if (u->sqes)
        munmap(u->sqes, u->sqes_sz);
    if (u->cq_ring && u->cq_ring != MAP_FAILED && u->cq_ring != u->sq_ring)
        munmap(u->cq_ring, u->cq_ring_sz);
    if (u->sq_ring && u->sq_ring != MAP_FAILED)
        munmap(u->sq_ring, u->sq_ring_sz);
    if (u->fd >= 0)
        close(u->fd);   /* cancels what is in flight and ends the SQPOLL thread */
    memset(u, 0, sizeof(*u));
    u->fd = -1;
}

struct io_uring_sqe *vnb_uring_get_sqe(struct vnb_uring *u)
{
    /* Acquire: the kernel (or its SQPOLL thread) has read the SQEs up to head before it moved it. */
    uint32_t head = __atomic_load_n(u->sq_head, __ATOMIC_ACQUIRE);
    if (u->sqe_tail - head >= u->sq_entries)
        return NULL;
    struct io_uring_sqe *sqe = &u->sqes[u->sqe_tail & u->sq_mask];
    memset(sqe, 0, sizeof(*sqe));
    u->sqe_tail++;
    u->unsubmitted++;
    return sqe;
}

int vnb_uring_enter(struct vnb_uring *u, uint32_t min_complete, int64_t timeout_ns, uint64_t *syscalls)
{
    /* Release: the SQE contents are visible before the tail that hands them over. */
    __atomic_store_n(u->sq_tail, u->sqe_tail, __ATOMIC_RELEASE);
    uint32_t flags = 0, to_submit = u->unsubmitted;
    if (vnb_uring_sqpoll(u)) {
        /* Full barrier: the tail store must be seen before we read NEED_WAKEUP, or the thread could
         * go idle having missed our SQEs while we read the flag as clear (liburing does the same). */
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        if (__atomic_load_n(u->sq_flags, __ATOMIC_RELAXED) & IORING_SQ_NEED_WAKEUP)
            flags |= IORING_ENTER_SQ_WAKEUP;
        to_submit = 0;
        u->unsubmitted = 0;
        if (!flags && !min_complete)
            return 0;
    }
    struct io_uring_getevents_arg arg = { 0 };
    struct __kernel_timespec ts;
    const void *argp = NULL;
    size_t argsz = 0;
    if (min_complete) {
        flags |= IORING_ENTER_GETEVENTS;
        if (timeout_ns >= 0) {
            ts.tv_sec = timeout_ns / 1000000000LL;
            ts.tv_nsec = timeout_ns % 1000000000LL;
            arg.ts = (uint64_t)(uintptr_t)&ts;
            flags |= IORING_ENTER_EXT_ARG;
            argp = &arg;
            argsz = sizeof(arg);
        }
    } else if (u->setup_flags & IORING_SETUP_DEFER_TASKRUN) {
        flags |= IORING_ENTER_GETEVENTS;   /* deferred task work (completions) runs only then */
    }
    int r = sys_enter(u->fd, to_submit, min_complete, flags, argp, argsz);
    (*syscalls)++;
    if (r < 0)
        return -errno;   /* ETIME: the timeout passed; EINTR; EBUSY: CQ overflow backlog (reap first) */
    u->unsubmitted -= (uint32_t)r < u->unsubmitted ? (uint32_t)r : u->unsubmitted;
    return r;
}

struct io_uring_cqe *vnb_uring_peek(struct vnb_uring *u)
{
    uint32_t head = *u->cq_head;   /* only we move the head */
    /* Acquire: the CQE is fully written before the kernel moved the tail past it. */
    if (head == __atomic_load_n(u->cq_tail, __ATOMIC_ACQUIRE))
        return NULL;
    return &u->cqes[head & u->cq_mask];
}

void vnb_uring_cqe_seen(struct vnb_uring *u)
{
    /* Release: we are done reading the CQE before the kernel may reuse its slot. */
    __atomic_store_n(u->cq_head, *u->cq_head + 1, __ATOMIC_RELEASE);
}
#endif
