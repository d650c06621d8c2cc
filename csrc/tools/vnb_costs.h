/* Micro-benchmarks of the costs a virtio-net backend pays: a system call, an eventfd wake-up (through
 * poll as the guest waits for an interrupt, through epoll as the datapath thread waits for a kick),
 * a context switch, a VM exit (CPUID), a copy, and a writev of one frame.
 *
 * Not on any datapath: `vnetbe costs` (vnetbe/costs.py) runs these, repeats them and turns them into
 * a per-packet model.  Nothing is pinned except the two threads of vnb_cost_ctxsw (which must share a
 * CPU to measure a switch).  Times are CLOCK_MONOTONIC (wall) and CLOCK_THREAD_CPUTIME_ID (CPU);
 * no TSC.
 *
 * Return convention: 0 on success and the outputs filled, -errno on failure (nothing valid then). */
#ifndef VNB_COSTS_H
#define VNB_COSTS_H
#include <stdint.h>

/* cffi:begin */
#define VNB_COST_WAIT_POLL 0     /* waiter: poll() then read() the eventfd (vnb_guest.c's wait_call) */
#define VNB_COST_WAIT_EPOLL 1    /* waiter: epoll_wait() then read() (vnb_datapath.c's thread loop) */

struct vnb_cost_cpu {
    uint32_t has_cpuid;          /* 0 on a non-x86 build: the rest is zero */
    uint32_t hypervisor;         /* CPUID.1:ECX bit 31, set by hypervisors for their guests */
    uint32_t hv_max_leaf;        /* EAX of leaf 0x40000000 (0 when no hypervisor) */
    char hv_vendor[16];          /* EBX,ECX,EDX of leaf 0x40000000, NUL-terminated ("KVMKVMKVM", ...) */
    char cpu_vendor[16];         /* EBX,EDX,ECX of leaf 0 ("AuthenticAMD", "GenuineIntel") */
};

struct vnb_cost_run {
    uint64_t ops;                /* operations timed */
    int64_t wall_ns;             /* CLOCK_MONOTONIC over the loop: includes time other tasks held the CPU */
    int64_t cpu_ns;              /* CLOCK_THREAD_CPUTIME_ID over the loop: this thread's CPU only */
};

struct vnb_cost_pingpong {
    uint64_t round_trips;        /* timed round trips completed (after the warm-up) */
    int64_t wall_ns;             /* CLOCK_MONOTONIC, first timed send to last answer */
    int64_t cpu_ns_a;            /* CPU time of the sending thread over the timed loop */
    int64_t cpu_ns_b;            /* CPU time of the answering thread over the timed loop */
};

/* CPU vendor and hypervisor identification (CPUID leaves 0, 1 and 0x40000000). */
int vnb_cost_cpu_info(struct vnb_cost_cpu *out);

/* `iters` times syscall(SYS_getppid) (glibc does not cache it). */
int vnb_cost_syscall(uint64_t iters, struct vnb_cost_run *st);

/* `iters` write()s of 1 to an eventfd nobody waits on (its counter is drained every 2^20 writes):
 * the cost of signalling when no one has to be woken. */
int vnb_cost_eventfd_signal(uint64_t iters, struct vnb_cost_run *st);

/* Ping-pong between this thread (A) and a new thread (B) over two eventfds: A writes efd1, B (waiting
 * in `mode`) wakes, reads it and writes efd2, A (waiting the same way) wakes and reads it.  After
 * `warmup` untimed round trips, rtt_ns[i] gets the i-th of `iters` round trips.  A wait longer than
 * timeout_ms ends the run with -ETIMEDOUT. */
int vnb_cost_wakeup(uint32_t mode, uint32_t iters, uint32_t warmup, int timeout_ms, int64_t *rtt_ns,
                    struct vnb_cost_pingpong *st);

/* Two new threads, both pinned to `cpu` (-1: the first CPU this process may use), ping-pong one byte
 * through two pipes `iters` times after a warm-up: each round trip is two context switches.  The
 * caller's own affinity is not touched. */
int vnb_cost_ctxsw(int cpu, uint32_t iters, struct vnb_cost_pingpong *st);

/* `iters` CPUID instructions with EAX = leaf (ECX = 0).  In a guest each one exits to the hypervisor;
 * on bare metal it does not.  -ENOSYS on a non-x86 build. */
int vnb_cost_cpuid(uint32_t leaf, uint64_t iters, struct vnb_cost_run *st);

/* `iters` memcpy()s of `size` bytes between two buffers that stay in cache (after one warm-up copy). */
int vnb_cost_memcpy(uint32_t size, uint64_t iters, struct vnb_cost_run *st);
/* `iters` sequence-tagged frames of `size` bytes built (check 0: vnb_peer_fill_tagged, what the bench's
 * senders do per frame) or verified (check 1: vnb_peer_check_tagged, what its receivers do). */
int vnb_cost_tag(uint32_t size, uint64_t iters, int check, struct vnb_cost_run *st);

/* `iters` writev()s of [hdr_len zero bytes][a frame_len-byte Ethernet frame, ethertype 0x88B5,
 * locally administered MACs] to fd: a macvtap/tap fd (hdr_len = its vnet header size) or any file.
 * EAGAIN waits in poll() and retries (counted in *eagain, may be NULL; the waits are in the times).
 * frame_len in 14..65535, hdr_len at most 64. */
int vnb_cost_writev(int fd, uint32_t hdr_len, uint32_t frame_len, uint64_t iters, struct vnb_cost_run *st,
                    uint64_t *eagain);
/* cffi:end */

#endif
