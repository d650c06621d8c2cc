#include "vnb_guard.h"
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>

static struct sigaction prev_action;   /* whoever handled SIGBUS before us: faults not ours go there */
static pthread_once_t once = PTHREAD_ONCE_INIT;
static int install_err;
static uint64_t recovered;
/* Touched by the arming thread before any fault can happen, so the handler never allocates it. */
static __thread struct vnb_guard *current;

static int inside(const struct vnb_mem *m, uintptr_t a)
{
    for (uint32_t i = 0; i < m->nregions; i++)
        if (a >= m->r[i].hva && a - m->r[i].hva < m->r[i].size)
            return 1;
    /* The dirty log is the front end's memory as well: a log file it truncates faults the same way. */
    return m->log_size && a >= m->log_hva && a - m->log_hva < m->log_size;
}

static void on_sigbus(int sig, siginfo_t *si, void *uc)
{
    struct vnb_guard *g = current;
    if (g && inside(g->mem, (uintptr_t)si->si_addr)) {
        __atomic_add_fetch(&recovered, 1, __ATOMIC_RELAXED);
        /* SA_NODEFER left SIGBUS unblocked, so jumping out without restoring a mask is safe. */
        siglongjmp(g->jb, 1);
    }
    if (prev_action.sa_flags & SA_SIGINFO) {
        prev_action.sa_sigaction(sig, si, uc);
    } else if (prev_action.sa_handler == SIG_DFL || prev_action.sa_handler == SIG_IGN) {
        /* Not ours: put the default back and return; the access faults again and the process dies
         * as it would have without us (a synchronous SIGBUS cannot be ignored). */
        sigaction(SIGBUS, &prev_action, NULL);
    } else {
        prev_action.sa_handler(sig);
    }
}

static void install(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = on_sigbus;
    /* NODEFER: the handler leaves by siglongjmp without restoring the mask; SIGBUS must stay open. */
    sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    install_err = sigaction(SIGBUS, &sa, &prev_action) ? -errno : 0;
}

int vnb_guard_install(void)
{
    pthread_once(&once, install);
    return install_err;
}

void vnb_guard_arm(struct vnb_guard *g, const struct vnb_mem *mem)
{
    g->mem = mem;
    g->prev = current;
    /* The handler runs on this thread, after this store in program order: a compiler barrier is
     * enough for it to see the guard. */
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    current = g;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
}

void vnb_guard_disarm(struct vnb_guard *g)
{
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    current = g->prev;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
}

uint64_t vnb_guard_recovered(void)
{
    return __atomic_load_n(&recovered, __ATOMIC_RELAXED);
}

/* volatile: r must survive the siglongjmp back into this frame. */
int vnb_run_guarded(const struct vnb_mem *m, int (*fn)(void *), void *arg)
{
    if (vnb_guard_install())
        return -EFAULT;
    struct vnb_guard g;
    volatile int r = -EFAULT;
    if (sigsetjmp(g.jb, 0) == 0) {
        vnb_guard_arm(&g, m);
        r = fn(arg);
    }
    vnb_guard_disarm(&g);
    return r;
}

struct copy_args { void *dst; const void *src; uint64_t len; };
struct pop_args { struct vnb_vq *vq; struct vnb_chain *c; };
struct tally_args { const struct vnb_vq *vq; uint32_t hdr_len; struct vnb_used_tally *t; };

static int do_copy(void *p)
{
    struct copy_args *a = p;
    memcpy(a->dst, a->src, a->len);
    return 0;
}

static int do_pop(void *p)
{
    struct pop_args *a = p;
    return vnb_vq_pop(a->vq, a->c);
}

static int do_tally(void *p)
{
    struct tally_args *a = p;
    vnb_vq_tally_used(a->vq, a->hdr_len, a->t);
    return 0;
}

int vnb_vq_pop_guarded(struct vnb_vq *vq, struct vnb_chain *c)
{
    struct pop_args a = { vq, c };
    return vnb_run_guarded(vq->mem, do_pop, &a);
}

int vnb_vq_tally_used_guarded(const struct vnb_vq *vq, uint32_t hdr_len, struct vnb_used_tally *t)
{
    struct tally_args a = { vq, hdr_len, t };
    return vnb_run_guarded(vq->mem, do_tally, &a);
}

int vnb_mem_read(const struct vnb_mem *m, uint64_t gpa, void *dst, uint64_t len)
{
    void *p = vnb_mem_ptr(m, gpa, len);
    if (!p)
        return -ERANGE;
    struct copy_args a = { dst, p, len };
    return vnb_run_guarded(m, do_copy, &a);
}

int vnb_mem_write(const struct vnb_mem *m, uint64_t gpa, const void *src, uint64_t len)
{
    void *p = vnb_mem_ptr(m, gpa, len);
    if (!p)
        return -ERANGE;
    struct copy_args a = { p, src, len };
    return vnb_run_guarded(m, do_copy, &a);
}
