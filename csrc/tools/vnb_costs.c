/* Micro-benchmarks of exits and mode switches (see vnb_costs.h).
 *
 * Each function times a loop of one operation and leaves the statistics (medians over repeats,
 * percentiles of round trips) to vnetbe/costs.py.  Clocks: CLOCK_MONOTONIC for wall time and
 * CLOCK_THREAD_CPUTIME_ID for the CPU a thread used (the same sum_exec_runtime that
 * /proc/.../schedstat reports, so it compares with the benchmark's per-thread CPU). */
#include "vnb_costs.h"
#include "vnb_peer.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include "vnb_time.h"
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

static int64_t clock_ns(clockid_t c)
{
    struct timespec ts;
    clock_gettime(c, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int64_t thread_cpu_ns(void) { return clock_ns(CLOCK_THREAD_CPUTIME_ID); }

/* Start and end of a timed single-thread loop. */
static void run_begin(struct vnb_cost_run *st)
{
    st->ops = 0;
    st->cpu_ns = thread_cpu_ns();
    st->wall_ns = vnb_now_ns();
}

static void run_end(struct vnb_cost_run *st, uint64_t ops)
{
    st->wall_ns = vnb_now_ns() - st->wall_ns;
    st->cpu_ns = thread_cpu_ns() - st->cpu_ns;
    st->ops = ops;
}

/* ---- CPUID ---- */

#if defined(__x86_64__) || defined(__i386__)
#define HAVE_CPUID 1
static inline void cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4])
{
    /* volatile: every iteration must execute (and, in a guest, exit); nothing may be hoisted. */
    __asm__ __volatile__("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
}
#else
#define HAVE_CPUID 0
#endif

int vnb_cost_cpu_info(struct vnb_cost_cpu *out)
{
    memset(out, 0, sizeof(*out));
#if HAVE_CPUID
    uint32_t r[4];
    out->has_cpuid = 1;
    cpuid(0, 0, r);
    memcpy(out->cpu_vendor + 0, &r[1], 4);   /* EBX, EDX, ECX: "Auth" "enti" "cAMD" */
    memcpy(out->cpu_vendor + 4, &r[3], 4);
    memcpy(out->cpu_vendor + 8, &r[2], 4);
    if (r[0] >= 1) {
        cpuid(1, 0, r);
        out->hypervisor = (r[2] >> 31) & 1;
    }
    /* Leaf 0x40000000 is only meaningful when the hypervisor bit says someone answers it;
     * on bare metal it aliases the highest basic leaf and returns garbage. */
    if (out->hypervisor) {
        cpuid(0x40000000u, 0, r);
        out->hv_max_leaf = r[0];
        memcpy(out->hv_vendor + 0, &r[1], 4);   /* EBX, ECX, EDX: "KVMK" "VMKV" "M\0\0\0" */
        memcpy(out->hv_vendor + 4, &r[2], 4);
        memcpy(out->hv_vendor + 8, &r[3], 4);
    }
    return 0;
#else
    return 0;
#endif
}

int vnb_cost_cpuid(uint32_t leaf, uint64_t iters, struct vnb_cost_run *st)
{
#if HAVE_CPUID
    uint32_t r[4];
    run_begin(st);
    for (uint64_t i = 0; i < iters; i++)
        cpuid(leaf, 0, r);
    run_end(st, iters);
    return 0;
#else
    (void)leaf;
    (void)iters;
    memset(st, 0, sizeof(*st));
    return -ENOSYS;
#endif
}

/* ---- system call, eventfd signal ---- */

int vnb_cost_syscall(uint64_t iters, struct vnb_cost_run *st)
{
    run_begin(st);
    for (uint64_t i = 0; i < iters; i++)
        (void)syscall(SYS_getppid);   /* the raw syscall: glibc's getppid() is not cached either, but be explicit */
    run_end(st, iters);
    return 0;
}

int vnb_cost_eventfd_signal(uint64_t iters, struct vnb_cost_run *st)
{
    int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (fd < 0)
        return -errno;
    uint64_t one = 1, v;
    run_begin(st);
    for (uint64_t i = 0; i < iters; i++) {
        if (write(fd, &one, sizeof(one)) != sizeof(one)) {
            int e = errno;
            close(fd);
            return -e;
        }
        /* Drain now and then (a counter overflow is 2^64 away, but keep the loop honest). */
        if ((i & 0xFFFFF) == 0xFFFFF)
            (void)!read(fd, &v, sizeof(v));
    }
    run_end(st, iters);
    close(fd);
    return 0;
}

/* ---- eventfd wake-up ping-pong ---- */

struct pingpong {
    uint32_t mode;
    int efd_ab, efd_ba;          /* A -> B (the kick), B -> A (the answer) */
    int ep_b;                    /* B's epoll fd (VNB_COST_WAIT_EPOLL) */
    uint32_t warmup, total;
    int timeout_ms;
    int stop;                    /* A -> B: give up (atomic) */
    int err;                     /* B -> A: B failed with -errno (atomic) */
    int64_t cpu_ns_b;
};

/* Wait until fd is readable (as `mode` says) and consume its count. */
static int wait_eventfd(uint32_t mode, int fd, int epfd, int timeout_ms)
{
    for (;;) {
        int r;
        if (mode == VNB_COST_WAIT_EPOLL) {
            struct epoll_event ev;
            r = epoll_wait(epfd, &ev, 1, timeout_ms);
        } else {
            struct pollfd p = { .fd = fd, .events = POLLIN };
            r = poll(&p, 1, timeout_ms);
        }
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (r == 0)
            return -ETIMEDOUT;
        uint64_t v;
        if (read(fd, &v, sizeof(v)) == sizeof(v))
            return 0;
        if (errno != EAGAIN && errno != EINTR)
            return -errno;
        /* Readable but already drained: cannot happen with one reader; wait again. */
    }
}

static int signal_eventfd(int fd)
{
    uint64_t one = 1;
    return write(fd, &one, sizeof(one)) == sizeof(one) ? 0 : -errno;
}

static void *pingpong_b(void *arg)
{
    struct pingpong *pp = arg;
    int64_t cpu0 = thread_cpu_ns();
    for (uint32_t i = 0; i < pp->total; i++) {
        if (i == pp->warmup)
            cpu0 = thread_cpu_ns();
        int r = wait_eventfd(pp->mode, pp->efd_ab, pp->ep_b, pp->timeout_ms);
        if (__atomic_load_n(&pp->stop, __ATOMIC_ACQUIRE))
            return NULL;
        if (r == 0)
            r = signal_eventfd(pp->efd_ba);
        if (r < 0) {
            __atomic_store_n(&pp->err, r, __ATOMIC_RELEASE);
            (void)signal_eventfd(pp->efd_ba);   /* wake A so it sees the error instead of timing out */
            return NULL;
        }
    }
    pp->cpu_ns_b = thread_cpu_ns() - cpu0;
    return NULL;
}

static int epoll_for(int fd)
{
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        return -errno;
    struct epoll_event ev = { .events = EPOLLIN, .data.fd = fd };
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev)) {
        int e = errno;
        close(ep);
        return -e;
    }
    return ep;
}

int vnb_cost_wakeup(uint32_t mode, uint32_t iters, uint32_t warmup, int timeout_ms, int64_t *rtt_ns,
                    struct vnb_cost_pingpong *st)
{
    if (mode > VNB_COST_WAIT_EPOLL || iters == 0 || (uint64_t)iters + warmup > UINT32_MAX)
        return -EINVAL;
    memset(st, 0, sizeof(*st));
    struct pingpong pp = { .mode = mode, .efd_ab = -1, .efd_ba = -1, .ep_b = -1, .warmup = warmup,
                           .total = warmup + iters, .timeout_ms = timeout_ms };
    int ep_a = -1, r = 0;
    pp.efd_ab = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    pp.efd_ba = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (pp.efd_ab < 0 || pp.efd_ba < 0) {
        r = -errno;
        goto out;
    }
    if (mode == VNB_COST_WAIT_EPOLL) {
        if ((pp.ep_b = epoll_for(pp.efd_ab)) < 0 || (ep_a = epoll_for(pp.efd_ba)) < 0) {
            r = pp.ep_b < 0 ? pp.ep_b : ep_a;
            goto out;
        }
    }
    pthread_t th;
    if ((r = -pthread_create(&th, NULL, pingpong_b, &pp)) < 0)
        goto out;

    int64_t cpu0 = thread_cpu_ns(), t_first = 0, t_last = 0;
    for (uint32_t i = 0; i < pp.total; i++) {
        if (i == warmup) {
            cpu0 = thread_cpu_ns();
        }
        int64_t t0 = vnb_now_ns();
        if (i == warmup)
            t_first = t0;
        r = signal_eventfd(pp.efd_ab);
        if (r == 0)
            r = wait_eventfd(mode, pp.efd_ba, ep_a, timeout_ms);
        if (r == 0)
            r = __atomic_load_n(&pp.err, __ATOMIC_ACQUIRE);
        if (r < 0)
            break;
        int64_t t1 = vnb_now_ns();
        if (i >= warmup) {
            rtt_ns[i - warmup] = t1 - t0;
            t_last = t1;
            st->round_trips++;
        }
    }
    if (r == 0) {
        st->cpu_ns_a = thread_cpu_ns() - cpu0;
        st->wall_ns = t_last - t_first;
    } else {
        __atomic_store_n(&pp.stop, 1, __ATOMIC_RELEASE);
        (void)signal_eventfd(pp.efd_ab);
    }
    pthread_join(th, NULL);
    st->cpu_ns_b = pp.cpu_ns_b;
out:
    if (pp.efd_ab >= 0)
        close(pp.efd_ab);
    if (pp.efd_ba >= 0)
        close(pp.efd_ba);
    if (pp.ep_b >= 0)
        close(pp.ep_b);
    if (ep_a >= 0)
        close(ep_a);
    return r;
}

/* ---- context switch on one CPU ---- */

struct ctxsw {
    int cpu;
    int ab[2], ba[2];            /* pipes A -> B and B -> A */
    uint32_t warmup, total;
    int err;
    int64_t wall_ns, cpu_ns_a, cpu_ns_b;
};

static int pin(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return -pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

static void *ctxsw_b(void *arg)
{
    struct ctxsw *c = arg;
    int r = pin(c->cpu);
    char b = 0;
    int64_t cpu0 = thread_cpu_ns();
    for (uint32_t i = 0; r == 0 && i < c->total; i++) {
        if (i == c->warmup)
            cpu0 = thread_cpu_ns();
        if (read(c->ab[0], &b, 1) != 1)
            r = -EIO;
        else if (b == 'q')
            return NULL;        /* A gave up */
        else if (write(c->ba[1], &b, 1) != 1)
            r = -EIO;
    }
    if (r < 0) {
        __atomic_store_n(&c->err, r, __ATOMIC_RELEASE);
        b = 'e';
        (void)!write(c->ba[1], &b, 1);
    }
    c->cpu_ns_b = thread_cpu_ns() - cpu0;
    return NULL;
}

static void *ctxsw_a(void *arg)
{
    struct ctxsw *c = arg;
    int r = pin(c->cpu);
    char b = 'p';
    int64_t t0 = vnb_now_ns(), cpu0 = thread_cpu_ns();
    for (uint32_t i = 0; r == 0 && i < c->total; i++) {
        if (i == c->warmup) {
            t0 = vnb_now_ns();
            cpu0 = thread_cpu_ns();
        }
        if (write(c->ab[1], &b, 1) != 1 || read(c->ba[0], &b, 1) != 1 || b != 'p') {
            r = __atomic_load_n(&c->err, __ATOMIC_ACQUIRE);
            if (r == 0)
                r = -EIO;
        }
    }
    c->wall_ns = vnb_now_ns() - t0;
    c->cpu_ns_a = thread_cpu_ns() - cpu0;
    if (r < 0) {
        __atomic_store_n(&c->err, r, __ATOMIC_RELEASE);
        b = 'q';
        (void)!write(c->ab[1], &b, 1);
    }
    return NULL;
}

int vnb_cost_ctxsw(int cpu, uint32_t iters, struct vnb_cost_pingpong *st)
{
    memset(st, 0, sizeof(*st));
    if (iters == 0 || iters > UINT32_MAX / 2)
        return -EINVAL;
    if (cpu < 0) {
        cpu_set_t set;
        if (sched_getaffinity(0, sizeof(set), &set))
            return -errno;
        for (cpu = 0; cpu < CPU_SETSIZE && !CPU_ISSET(cpu, &set); cpu++)
            ;
        if (cpu == CPU_SETSIZE)
            return -EINVAL;
    }
    /* Both threads are new: the caller's own affinity is never touched. */
    struct ctxsw c = { .cpu = cpu, .ab = { -1, -1 }, .ba = { -1, -1 }, .warmup = iters / 10 + 1 };
    c.total = c.warmup + iters;
    int r = 0;
    if (pipe2(c.ab, O_CLOEXEC) || pipe2(c.ba, O_CLOEXEC)) {
        r = -errno;
        goto out;
    }
    pthread_t ta, tb;
    if ((r = -pthread_create(&tb, NULL, ctxsw_b, &c)) < 0)
        goto out;
    if ((r = -pthread_create(&ta, NULL, ctxsw_a, &c)) < 0) {
        char q = 'q';
        (void)!write(c.ab[1], &q, 1);
        pthread_join(tb, NULL);
        goto out;
    }
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    r = __atomic_load_n(&c.err, __ATOMIC_ACQUIRE);
    if (r == 0) {
        st->round_trips = iters;
        st->wall_ns = c.wall_ns;
        st->cpu_ns_a = c.cpu_ns_a;
        st->cpu_ns_b = c.cpu_ns_b;
    }
out:
    for (int i = 0; i < 2; i++) {
        if (c.ab[i] >= 0)
            close(c.ab[i]);
        if (c.ba[i] >= 0)
            close(c.ba[i]);
    }
    return r;
}

/* ---- memcpy ---- */

/* Called through a volatile pointer so the compiler neither inlines a fixed-size copy nor drops it. */
static void *(*volatile memcpy_fn)(void *, const void *, size_t) = memcpy;

int vnb_cost_memcpy(uint32_t size, uint64_t iters, struct vnb_cost_run *st)
{
    if (size == 0 || size > (64u << 20))
        return -EINVAL;
    size_t cap = ((size_t)size + 63) & ~(size_t)63;
    uint8_t *src = aligned_alloc(64, cap), *dst = aligned_alloc(64, cap);
    if (!src || !dst) {
        free(src);
        free(dst);
        return -ENOMEM;
    }
    memset(src, 0x5a, cap);
    memset(dst, 0, cap);
    memcpy_fn(dst, src, size);   /* warm both buffers into the cache */
    run_begin(st);
    for (uint64_t i = 0; i < iters; i++) {
        memcpy_fn(dst, src, size);
        __asm__ __volatile__("" ::: "memory");
    }
    run_end(st, iters);
    free(src);
    free(dst);
    return 0;
}

int vnb_cost_tag(uint32_t size, uint64_t iters, int check, struct vnb_cost_run *st)
{
    static const uint8_t dst[6] = { 2, 0, 0, 0, 0, 2 }, src[6] = { 2, 0, 0, 0, 0, 1 };
    if (size < VNB_TAG_HDR_LEN || size > VNB_TAG_MAX_SIZE)
        return -EINVAL;
    uint8_t *f = malloc(size);
    if (!f)
        return -ENOMEM;
    vnb_peer_fill_tagged(f, dst, src, 0, 0, size);
    uint32_t seq = 0, flow = 0;
    int bad = 0;
    run_begin(st);
    for (uint64_t i = 0; i < iters; i++) {
        if (check)
            bad |= vnb_peer_check_tagged(f, size, &seq, &flow) != 1;
        else
            vnb_peer_fill_tagged(f, dst, src, 0, (uint32_t)i, size);
        __asm__ __volatile__("" ::: "memory");
    }
    run_end(st, iters);
    free(f);
    return bad ? -EILSEQ : 0;
}

/* ---- writev of one frame ---- */

int vnb_cost_writev(int fd, uint32_t hdr_len, uint32_t frame_len, uint64_t iters, struct vnb_cost_run *st,
                    uint64_t *eagain)
{
    if (hdr_len > 64 || frame_len < 14 || frame_len > 65535)
        return -EINVAL;
    uint8_t hdr[64] = { 0 };
    uint8_t *frame = calloc(1, frame_len);
    if (!frame)
        return -ENOMEM;
    static const uint8_t dst[6] = { 0x02, 0, 0, 0, 0, 0x02 }, src[6] = { 0x02, 0, 0, 0, 0, 0x01 };
    memcpy(frame, dst, 6);
    memcpy(frame + 6, src, 6);
    frame[12] = 0x88;            /* local experimental ethertype, as the tagged test frames */
    frame[13] = 0xB5;
    struct iovec iov[2] = { { hdr, hdr_len }, { frame, frame_len } };
    struct iovec *v = hdr_len ? iov : iov + 1;
    int nv = hdr_len ? 2 : 1;
    uint64_t again = 0;
    int r = 0;
    run_begin(st);
    for (uint64_t i = 0; i < iters; i++) {
        ssize_t n = writev(fd, v, nv);
        if (n >= 0)
            continue;
        if (errno == EINTR) {
            i--;
            continue;
        }
        if (errno != EAGAIN) {
            r = -errno;
            break;
        }
        again++;
        struct pollfd p = { .fd = fd, .events = POLLOUT };
        int pr = poll(&p, 1, 1000);
        if (pr == 0) {
            r = -ETIMEDOUT;
            break;
        }
        i--;
    }
    run_end(st, iters);
    free(frame);
    if (eagain)
        *eagain = again;
    return r;
}
