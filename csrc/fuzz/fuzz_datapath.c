/* libFuzzer target: the userspace datapath's TX and RX logic (csrc/device/vnb_datapath.c) with its
 * system calls behind the seam of vnb_sys_impl.h, driven without a thread: vnb_dp_fuzz_round runs
 * one TX and one RX round as the thread would. The "tap" is a script from the input: what each write
 * returns, and the length of each frame a readv delivers. Oracles, beyond ASan/UBSan:
 *  - every iovec handed to the tap lies inside guest memory (the last one of a readv may be the
 *    device's bounce buffer);
 *  - the device (and the "kernel" writing into the iovecs it gave) writes only the two used rings
 *    and writable buffers of RX chains the reference walker accepts;
 *  - used->idx in memory equals the device's shadow; every used TX chain was sent or dropped with a
 *    reason; every frame read was placed, dropped with a reason, or is the one still being placed;
 *  - a round walks a bounded number of descriptors.
 *
 *
 * With bit 4 of the flags the datapath runs in its io_uring mode (csrc/device/vnb_dp_uring.c) over a
 * fake ring (below): a "kernel" that runs the SQEs at each enter, in order and honouring IOSQE_IO_LINK,
 * with results from the same script (NOWAIT reads that find no frame say EAGAIN; a script byte can
 * refuse NOWAIT with EOPNOTSUPP, after which RX reads through the plain readv stub). Then also:
 * reads go only to the device's own pool (never guest memory), every READ carries RWF_NOWAIT (none
 * can wait posted), and after the stop every frame read was placed or dropped with a reason.
 *
 * With bit 5 of the flags both queues are packed virtqueues (§2.8, any size up to 64): the descriptor
 * ring where the split ring's is, the driver's and the device's event suppression structures where
 * its avail and used rings are. The oracles then use the reference's packed walk: the device writes
 * only the descriptor ring (used descriptors), its event structure and popped RX buffers; the slots
 * it used are exactly the first k TX buffers' (counted frames sent or dropped as for split).
 *
 * With bit 6 of the flags the memory has a dirty log (csrc/device/vnb_log.c), allocated to its exact
 * size so ASan sees a write past it: every guest byte that changed has its page's bit set.
 *
 * Input: [0] RX queue size, [1] TX queue size (split: powers of two up to 64; packed: 1..64), [2] flags
 * (EVENT_IDX, INDIRECT, MRG_RXBUF, bit 3: legacy 10-byte header, bit 4: io_uring, bit 5: packed, bit 6:
 * dirty log),
 * [3..6] RX and TX ring positions (packed: index | wrap << 15, the index taken modulo the size), [7]
 * rounds (bits 0-1) and io_uring batch (bits 2-7), [8] script length S, then S script bytes, then
 * guest memory. */
#include "vnb_datapath.h"
#include "vnb_log.h"
#include "vnb_mem.h"
#include "vnb_net.h"
#include "vnb_sys_impl.h"
#include "vnb_uring_impl.h"
#include "vnb_virtq.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RSIZE 0x4000u
static const uint64_t GPA[3] = { 0x0, RSIZE, 0x10000 };   /* A, B adjacent; C after a hole */
static uint8_t *host[3];

#define CHECK(c, ...) do { if (!(c)) { fprintf(stderr, "fuzz_datapath: " __VA_ARGS__); fputc('\n', stderr); abort(); } } while (0)

#include "ref_ring.h"

enum { TAP_FD = 100, CALL_FD = 101, KICK_FD = 102, ERR_FD = 103, EP_FD = 104 };
/* RX ring parts, then TX's: both fit the first 8 KiB for queues of up to 64 entries. */
static const uint64_t DESC[2] = { 0x0000, 0x0400 }, AVAIL[2] = { 0x1000, 0x1100 }, USED[2] = { 0x1400, 0x1800 };

static const uint8_t *script;
static size_t script_len;
static uint64_t frames_read, frames_written;

static int script_byte(void)
{
    if (!script_len)
        return -1;
    script_len--;
    return *script++;
}

static int in_guest(const void *p, size_t n)
{
    for (int r = 0; r < 3; r++)
        if ((const uint8_t *)p >= host[r] && (const uint8_t *)p + n <= host[r] + RSIZE)
            return 1;
    return 0;
}

static ssize_t tap_result(size_t n)
{
    int b = script_byte();
    switch (b < 0 ? 0 : b % 8) {
    case 1: errno = EAGAIN; return -1;
    case 2: errno = EINVAL; return -1;
    case 3: errno = EIO; return -1;
    case 4: errno = ENOBUFS; return -1;
    case 5: errno = EBADFD; return -1;
    default: frames_written++; return (ssize_t)n;
    }
}

ssize_t vnb_sys_write(int fd, const void *buf, size_t n)
{
    if (fd != TAP_FD)
        return (ssize_t)n;   /* the call and err eventfds */
    CHECK(in_guest(buf, n), "write() of a buffer outside guest memory");
    return tap_result(n);
}

ssize_t vnb_sys_writev(int fd, const struct iovec *iov, int n)
{
    CHECK(fd == TAP_FD && n > 0 && n <= VNB_MAX_IOV, "writev(%d, n=%d)", fd, n);
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        CHECK(in_guest(iov[i].iov_base, iov[i].iov_len), "writev iovec %d outside guest memory", i);
        total += iov[i].iov_len;
    }
    return tap_result(total);
}

ssize_t vnb_sys_read(int fd, void *buf, size_t n)
{
    errno = EAGAIN;   /* eventfd drains: nothing pending */
    return -1;
}

ssize_t vnb_sys_readv(int fd, const struct iovec *iov, int n)
{
    CHECK(fd == TAP_FD && n > 0 && n <= VNB_MAX_IOV, "readv(%d, n=%d)", fd, n);
    for (int i = 0; i < n - 1; i++)
        CHECK(in_guest(iov[i].iov_base, iov[i].iov_len), "readv iovec %d outside guest memory", i);
    int hi = script_byte(), lo = script_byte();
    if (hi < 0 || lo < 0) {
        errno = EAGAIN;   /* the script is over: the tap is empty */
        return -1;
    }
    if (hi == 0xff) {
        errno = lo & 1 ? EBADFD : EIO;
        return -1;
    }
    size_t len = (size_t)hi << 8 | (size_t)lo, done = 0;
    /* The "kernel" fills the iovecs in order: a zero header, then a pattern. */
    for (int i = 0; i < n && done < len; i++) {
        size_t k = iov[i].iov_len < len - done ? iov[i].iov_len : len - done;
        for (size_t j = 0; j < k; j++)
            ((uint8_t *)iov[i].iov_base)[j] = done + j < VNB_NET_HDR_LEN ? 0 : (uint8_t)(done + j);
        done += k;
    }
    frames_read++;
    return (ssize_t)done;
}

/* ---- the fake io_uring ---- */

#define FQ 512
static struct io_uring_sqe fsq[FQ];     /* SQEs written, run at the next enter */
static uint32_t fsq_n;
static struct io_uring_sqe fpend[FQ];   /* polls posted (they never fire: the rounds are driven) */
static uint32_t fpend_n;
static struct io_uring_cqe fcq[4 * FQ];
static uint32_t fcq_head, fcq_tail;

static void fake_post(uint64_t ud, int32_t res)
{
    CHECK(fcq_tail - fcq_head < 4 * FQ, "CQ overflow");
    fcq[fcq_tail++ % (4 * FQ)] = (struct io_uring_cqe){ .user_data = ud, .res = res };
}

/* -errno or a length, from the script, as the plain path's write stubs give it. */
static int32_t fake_write(const struct io_uring_sqe *e)
{
    size_t total = 0;
    if (e->opcode == IORING_OP_WRITE) {
        CHECK(in_guest((void *)(uintptr_t)e->addr, e->len), "WRITE of a buffer outside guest memory");
        total = e->len;
    } else {
        const struct iovec *iov = (const struct iovec *)(uintptr_t)e->addr;
        CHECK(e->len > 0 && e->len <= VNB_MAX_IOV, "WRITEV of %u iovecs", e->len);
        for (uint32_t i = 0; i < e->len; i++) {
            CHECK(in_guest(iov[i].iov_base, iov[i].iov_len), "WRITEV iovec %u outside guest memory", i);
            total += iov[i].iov_len;
        }
    }
    int b = script_byte();
    switch (b < 0 ? 0 : b % 8) {
    case 1: return e->rw_flags & RWF_NOWAIT ? -EAGAIN : (frames_written++, (int32_t)total);
    case 2: return -EINVAL;
    case 3: return -EIO;
    case 4: return -ENOBUFS;
    case 5: return -EBADFD;
    case 6: if (e->rw_flags & RWF_NOWAIT) return -EOPNOTSUPP; /* fall through */
    default: frames_written++; return (int32_t)total;
    }
}

/* A NOWAIT read: a frame from the script, EAGAIN once it is over, or an error. The device never
 * posts a read that could wait (RX without NOWAIT is the plain path's readv): checked here. */
static int32_t fake_read(const struct io_uring_sqe *e)
{
    uint8_t *buf = (uint8_t *)(uintptr_t)e->addr;
    CHECK(!in_guest(buf, 1), "READ into guest memory: the io_uring mode reads into its pool");
    CHECK(e->rw_flags & RWF_NOWAIT, "a READ without RWF_NOWAIT: it would wait posted in the kernel");
    int hi = script_byte(), lo = script_byte();
    if (hi < 0 || lo < 0)
        return -EAGAIN;
    if (hi == 0xff)
        return lo & 1 ? -EBADFD : -EIO;
    if (hi == 0xfe)
        return -EOPNOTSUPP;
    size_t len = (size_t)hi << 8 | (size_t)lo;
    if (len > e->len)
        len = e->len;
    for (size_t j = 0; j < len; j++)
        buf[j] = j < VNB_NET_HDR_LEN ? 0 : (uint8_t)j;
    frames_read++;
    return (int32_t)len;
}

static uint32_t fake_cancel_fd(int fd)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < fpend_n; i++)
        if (fpend[i].fd == fd) {
            fake_post(fpend[i].user_data, -ECANCELED);
            n++;
        }
    fpend_n = 0;   /* only the tap's polls are ever posted */
    return n;
}

static void fake_run(void)
{
    int failed = 0, linked = 0;   /* the previous SQE's link failed / had IOSQE_IO_LINK */
    for (uint32_t k = 0; k < fsq_n; k++) {
        struct io_uring_sqe *e = &fsq[k];
        int32_t res = 0;
        int link = !!(e->flags & IOSQE_IO_LINK);
        if (linked && failed) {
            fake_post(e->user_data, -ECANCELED);
        } else {
            failed = 0;
            switch (e->opcode) {
            case IORING_OP_WRITE:
                if (e->fd == CALL_FD) {   /* an interrupt */
                    CHECK(e->len == 8 && *(uint64_t *)(uintptr_t)e->addr == 1, "interrupt write");
                    fake_post(e->user_data, 8);
                    break;
                }
                /* fall through */
            case IORING_OP_WRITEV:
                CHECK(e->fd == TAP_FD, "write to fd %d", e->fd);
                res = fake_write(e);
                fake_post(e->user_data, res);
                failed = res < 0;
                break;
            case IORING_OP_READ:
                CHECK(e->fd == TAP_FD && e->len > 0, "read of fd %d", e->fd);
                res = fake_read(e);
                fake_post(e->user_data, res);
                failed = res < 0;
                break;
            case IORING_OP_POLL_ADD:
                fpend[fpend_n++] = *e;   /* never fires here: the rounds are driven, not waited for */
                break;
            case IORING_OP_ASYNC_CANCEL:
                fake_post(e->user_data, (int32_t)fake_cancel_fd(e->fd));
                break;
            default:
                CHECK(0, "unexpected opcode %u", e->opcode);
            }
        }
        linked = link;
        if (!link)
            failed = 0;
        CHECK(fpend_n < FQ, "too much posted");
    }
    fsq_n = 0;
}

int vnb_uring_init(struct vnb_uring *u, uint32_t entries, uint32_t sqpoll_idle_ms)
{
    memset(u, 0, sizeof(*u));
    CHECK(entries <= FQ, "ring of %u entries", entries);
    u->fd = 99;
    u->sqes = fsq;
    u->sq_entries = entries;
    fsq_n = fpend_n = fcq_head = fcq_tail = 0;
    return 0;
}

void vnb_uring_exit(struct vnb_uring *u)
{
    memset(u, 0, sizeof(*u));
    u->fd = -1;
}

struct io_uring_sqe *vnb_uring_get_sqe(struct vnb_uring *u)
{
    if (fsq_n >= u->sq_entries)
        return NULL;
    u->unsubmitted++;
    struct io_uring_sqe *e = &fsq[fsq_n++];
    memset(e, 0, sizeof(*e));
    return e;
}

int vnb_uring_enter(struct vnb_uring *u, uint32_t min_complete, int64_t timeout_ns, uint64_t *syscalls)
{
    (*syscalls)++;
    u->unsubmitted = 0;
    fake_run();
    /* What the device waits for with no deadline must be able to come: a batch of writes, or NOWAIT reads. */
    CHECK(timeout_ns >= 0 || fcq_tail - fcq_head >= min_complete,
          "waits for %u completions, %u can come", min_complete, fcq_tail - fcq_head);
    return 0;
}

struct io_uring_cqe *vnb_uring_peek(struct vnb_uring *u)
{
    return fcq_head == fcq_tail ? NULL : &fcq[fcq_head % (4 * FQ)];
}

void vnb_uring_cqe_seen(struct vnb_uring *u)
{
    fcq_head++;
}

int vnb_sys_epoll_ctl(int epfd, int op, int fd, struct epoll_event *ev)
{
    CHECK(epfd == EP_FD && fd == TAP_FD, "epoll_ctl(%d, %d, %d)", epfd, op, fd);
    return 0;
}

int vnb_sys_poll(struct pollfd *fds, nfds_t n, int timeout)
{
    CHECK(n == 1 && fds[0].fd == TAP_FD && timeout == 0, "poll(%d, n=%d, %d)", fds[0].fd, (int)n, timeout);
    int b = script_byte();   /* after a read of 0 bytes: has the "tap" hung up? */
    fds[0].revents = b > 0 && (b & 1) ? POLLHUP : 0;
    if (fds[0].revents)
        frames_read--;   /* that read was end of file, not an (empty) frame to place or drop */
    return !!fds[0].revents;
}

/* vnb_datapath.c, built with VNB_FUZZ */
int vnb_dp_fuzz_setup(struct vnb_dp *dp, int epfd);
uint64_t vnb_dp_fuzz_round(struct vnb_dp *dp);
void vnb_dp_fuzz_stop(struct vnb_dp *dp);

/* Bytes the device may change: both used rings, and the writable buffers of the RX chains from the
 * device's start position up to avail->idx, as the reference walks them (up to the first bad one). */
static uint8_t allowed[3][RSIZE];
static uint8_t *rx_buffer[3];   /* the RX buffers alone: a guest may post one over a ring of its own */

static void mark(uint8_t map[3][RSIZE], uint64_t gpa, uint64_t len)
{
    for (uint64_t k = 0; k < len; k++) {
        int r = region_of(gpa + k);
        if (r >= 0)
            map[r][gpa + k - GPA[r]] = 1;
    }
}

static void allow_piece(const struct piece *p)
{
    for (int r = 0; r < 3; r++)
        if ((uint8_t *)(uintptr_t)p->hva >= host[r] && (uint8_t *)(uintptr_t)p->hva < host[r] + RSIZE) {
            memset(allowed[r] + ((uint8_t *)(uintptr_t)p->hva - host[r]), 1, p->len);
            memset(rx_buffer[r] + ((uint8_t *)(uintptr_t)p->hva - host[r]), 1, p->len);
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 9)
        return 0;
    static int init;
    if (!init) {
        for (int r = 0; r < 3; r++) {
            host[r] = malloc(RSIZE);
            rx_buffer[r] = malloc(RSIZE);
        }
        init = 1;
    }
    int packed = !!(data[2] & 32);
    uint8_t data_flags = data[2];
    uint32_t num[2] = { 1u << (data[0] % 7), 1u << (data[1] % 7) };
    uint32_t flags = data[2] & (VNB_F_EVENT_IDX | VNB_F_INDIRECT | VNB_F_MRG_RXBUF);
    uint32_t hdr_len = (data[2] & 8) && !(flags & VNB_F_MRG_RXBUF) ? VNB_NET_HDR_LEN_LEGACY : VNB_NET_HDR_LEN;
    uint16_t base[2] = { (uint16_t)(data[3] | data[4] << 8), (uint16_t)(data[5] | data[6] << 8) };
    if (packed) {
        flags |= VNB_F_PACKED;
        for (int q = 0; q < 2; q++) {
            num[q] = 1 + data[q] % 64;
            base[q] = (uint16_t)((base[q] & 0x7fff) % num[q] | (base[q] & 0x8000));
        }
    }
    int rounds = 1 + data[7] % 4;
    int uring = !!(data[2] & 16);
    uint32_t batch = 1 + (data[7] >> 2) % 32;
    script_len = data[8];
    data += 9;
    size -= 9;
    if (script_len > size)
        script_len = size;
    script = data;
    data += script_len;
    size -= script_len;
    fill_regions(data, size);
    for (int r = 0; r < 3; r++) {
        memset(allowed[r], 0, RSIZE);
        memset(rx_buffer[r], 0, RSIZE);
    }
    frames_read = frames_written = 0;

    struct vnb_mem mem = { 0 };
    for (int r = 0; r < 3; r++)
        CHECK(vnb_mem_add_region(&mem, GPA[r], RSIZE, (uint64_t)(uintptr_t)host[r]) == 0, "region");
    static uint8_t *dirty_log;
    uint64_t log_size = vnb_log_size_for(GPA[2] + RSIZE);
    if (!dirty_log)
        dirty_log = malloc(log_size);
    memset(dirty_log, 0, log_size);
    if (data_flags & 64) {
        mem.log_hva = (uint64_t)(uintptr_t)dirty_log;
        mem.log_size = log_size;
    }
    for (int q = 0; q < 2 && !packed; q++)
        memcpy(host[0] + USED[q] + 2, &base[q], 2);   /* used->idx where the device starts */

    struct vnb_dp *dp = vnb_dp_new();
    CHECK(dp, "vnb_dp_new");
    CHECK(vnb_dp_set_mem(dp, &mem) == 0, "set_mem");
    CHECK(vnb_dp_set_features(dp, flags, hdr_len) == 0, "set_features");
    for (int q = 0; q < 2; q++)
        CHECK(vnb_dp_set_queue(dp, q, num[q], DESC[q], AVAIL[q], USED[q], KICK_FD, CALL_FD, base[q], base[q]) == 0,
              "set_queue %d", q);
    CHECK(vnb_dp_set_tap(dp, TAP_FD) == 0 && vnb_dp_set_err_fd(dp, ERR_FD) == 0, "set_tap");
    CHECK(vnb_dp_set_uring(dp, uring ? batch : 0, 0, 0) == 0, "set_uring");
    CHECK(vnb_dp_fuzz_setup(dp, EP_FD) == 0, "fuzz_setup");

    /* What may change, computed before the device runs (the guest does not touch memory meanwhile):
     * the ring parts the device writes (ringw), then the RX buffers on offer. */
    static uint8_t ringw[3][RSIZE], tables[3][RSIZE];
    memset(ringw, 0, sizeof(ringw));
    memset(tables, 0, sizeof(tables));
    for (int q = 0; q < 2; q++) {
        if (packed) {   /* used descriptors over the ring, and the device's event structure */
            mark(ringw, DESC[q], 16ull * num[q]);
            mark(ringw, USED[q], 4);
        } else {
            mark(ringw, USED[q], 6 + 8ull * num[q]);
        }
    }
    for (int r = 0; r < 3; r++)
        memcpy(allowed[r], ringw[r], RSIZE);
    /* The rings and the indirect tables of the chains on offer: a guest that posts an RX buffer over
     * one of them rewrites its own rings as frames land, and the reference, walked once here, would
     * not follow; nor would it where the device's own ring writes (used entries, event structure)
     * land in an indirect table. Such inputs are skipped (the hostile-ring property tests cover
     * self-overwriting). */
    static uint8_t meta[3][RSIZE];
    memset(meta, 0, sizeof(meta));
    static struct ref_chain c;
    static struct ref_packed rp;
    /* packed TX: slots held by the first k buffers on offer, for k = 0.. (the used count's oracle) */
    static uint32_t tx_cum[VNB_MAX_QUEUE_SIZE + 1];
    uint32_t tx_bufs = 0;
    for (int q = 0; q < 2 && packed; q++) {
        mark(meta, DESC[q], 16ull * num[q]);
        mark(meta, AVAIL[q], 4);
        mark(meta, USED[q], 4);
        memset(&rp, 0, sizeof(rp));
        rp.idx = base[q] & 0x7fff;
        rp.wrap = base[q] >> 15;
        uint32_t slots, total = 0;
        tx_cum[0] = 0;
        while (ref_pop_packed(DESC[q], num[q], &rp, !!(flags & VNB_F_INDIRECT), &c, &slots) == 1) {
            if (c.ind_len) {
                mark(meta, c.ind_gpa, c.ind_len);
                mark(tables, c.ind_gpa, c.ind_len);
            }
            for (int i = 0; q == 0 && i < c.nin; i++)
                allow_piece(&c.in[i]);
            total += slots;
            if (q == 1)
                tx_cum[++tx_bufs] = total;
        }
    }
    for (int q = 0; q < 2 && !packed; q++) {
        mark(meta, DESC[q], 16ull * num[q]);
        mark(meta, AVAIL[q], 6 + 2ull * num[q]);
        mark(meta, USED[q], 6 + 8ull * num[q]);
        uint16_t avail_idx;
        memcpy(&avail_idx, host[0] + AVAIL[q] + 2, 2);
        for (uint16_t pos = base[q]; (uint16_t)(pos - base[q]) < num[q] && pos != avail_idx; pos++) {
            if (ref_pop(DESC[q], AVAIL[q], num[q], pos, !!(flags & VNB_F_INDIRECT), &c) != 1)
                break;
            if (c.ind_len) {
                mark(meta, c.ind_gpa, c.ind_len);
                mark(tables, c.ind_gpa, c.ind_len);
            }
            for (int i = 0; q == 0 && i < c.nin; i++)
                allow_piece(&c.in[i]);
        }
    }
    for (int r = 0; r < 3; r++)
        for (uint32_t i = 0; i < RSIZE; i++)
            if ((meta[r][i] && rx_buffer[r][i]) || (tables[r][i] && ringw[r][i]))
                goto skip;
    static uint8_t before[3][RSIZE];
    for (int r = 0; r < 3; r++)
        memcpy(before[r], host[r], RSIZE);

    for (int k = 0; k < rounds; k++) {
        uint64_t walked = vnb_dp_fuzz_round(dp);
        /* uring RX walks the next chain once more per pass (it validates before reading): 5, not 4. */
        CHECK(walked <= 5ull * VNB_MAX_CHAIN_DESC, "a round walked %llu descriptors", (unsigned long long)walked);
    }
    if (uring)
        vnb_dp_fuzz_stop(dp);   /* cancels the posted reads and places what they took */

    for (int r = 0; r < 3; r++)
        for (uint32_t i = 0; i < RSIZE; i++)
            CHECK(host[r][i] == before[r][i] || allowed[r][i],
                  "the device wrote guest byte %#llx, neither a used ring nor a popped RX buffer",
                  (unsigned long long)(GPA[r] + i));
    for (int r = 0; r < 3 && (data_flags & 64); r++)
        for (uint32_t i = 0; i < RSIZE; i++) {
            uint64_t page = (GPA[r] + i) / VNB_LOG_PAGE;
            CHECK(host[r][i] == before[r][i] || (dirty_log[page / 8] >> (page % 8) & 1),
                  "the device wrote guest byte %#llx and did not log its page", (unsigned long long)(GPA[r] + i));
        }

    struct vnb_dp_qstate st[2];
    struct vnb_dp_stats s;
    vnb_dp_get_stats(dp, &s);
    for (int q = 0; q < 2; q++) {
        CHECK(vnb_dp_get_qstate(dp, q, &st[q]) == 0, "qstate");
        /* packed: a used descriptor is written over the slot where its buffer began, from where the
         * device started up to its used position, and only its len, id and flags (bytes 8..15). */
        for (uint32_t k = 0; packed && k < 16 * num[q]; k++) {
            uint32_t slot = k / 16, from_base = (slot + num[q] - (base[q] & 0x7fffu)) % num[q];
            uint32_t used = ref_packed_dist(base[q], st[q].used_idx, num[q]);
            int may = k % 16 >= 8 && (from_base < used || used == num[q]);
            CHECK(host[0][DESC[q] + k] == before[0][DESC[q] + k] || may || rx_buffer[0][DESC[q] + k],
                  "queue %d: the device wrote byte %u of ring slot %u, not a used descriptor's", q, k % 16, slot);
        }
        if (packed) {
            CHECK(ref_packed_dist(st[q].used_idx, st[q].last_avail_idx, num[q]) <= num[q],
                  "queue %d holds more than the ring", q);
            continue;
        }
        uint16_t uidx;
        memcpy(&uidx, host[0] + USED[q] + 2, 2);
        /* Unless the guest posted an RX buffer over this used->idx, where a frame may land. */
        if (!rx_buffer[0][USED[q] + 2] && !rx_buffer[0][USED[q] + 3])
            CHECK(uidx == st[q].used_idx, "queue %d: used->idx %u, shadow %u", q, uidx, st[q].used_idx);
        CHECK((uint16_t)(st[q].last_avail_idx - st[q].used_idx) <= num[q], "queue %d holds more than the ring", q);
    }
    uint64_t tx_used = (uint16_t)(st[1].used_idx - base[1]);
    uint16_t held = (uint16_t)(st[1].last_avail_idx - st[1].used_idx);
    if (packed) {
        /* Used in order here (one TX thread): the slots used are those of the first tx_used buffers. */
        uint32_t used_slots = ref_packed_dist(base[1], st[1].used_idx, num[1]);
        tx_used = 0;
        while (tx_used < tx_bufs && tx_cum[tx_used] < used_slots)
            tx_used++;
        CHECK(tx_cum[tx_used] == used_slots, "TX: %u slots used, not the slots of whole buffers", used_slots);
        held = (uint16_t)ref_packed_dist(st[1].used_idx, st[1].last_avail_idx, num[1]);
    }
    uint64_t tx_dropped = s.drops[VNB_DROP_TX_SHORT] + s.drops[VNB_DROP_TX_OVERSIZE] +
                          s.drops[VNB_DROP_TX_TAP_REFUSED] + s.drops[VNB_DROP_TX_TAP_ERROR];
    /* Every TX chain popped is used, but the one a fault stopped the queue on (a writable
     * descriptor is only seen once the chain is popped): it stays with the device, which needs a reset. */
    /* packed: the buffer held is the next one on offer, with its slots */
    uint32_t one = packed ? (tx_used < tx_bufs ? tx_cum[tx_used + 1] - tx_cum[tx_used] : 0) : 1;
    CHECK(held == 0 || (held == one && st[1].broken && st[1].fault == VNB_FAULT_TX_WRITABLE),
          "a TX chain popped and not used (%u held, fault %d)", held, st[1].fault);
    CHECK(tx_used == s.tx_frames + tx_dropped, "TX: %llu used, %llu sent + %llu dropped",
          (unsigned long long)tx_used, (unsigned long long)s.tx_frames, (unsigned long long)tx_dropped);
    CHECK(s.tx_frames == frames_written, "TX: %llu counted, %llu written",
          (unsigned long long)s.tx_frames, (unsigned long long)frames_written);
    uint64_t rx_done = s.rx_frames + s.drops[VNB_DROP_RX_TRUNCATED] + s.drops[VNB_DROP_RX_NO_BUFFER] +
                       s.drops[VNB_DROP_RX_STOPPED];
    /* The plain path may hold one frame half placed; after a stop nothing is left over. */
    CHECK(frames_read == rx_done || (!uring && frames_read == rx_done + 1), "RX: %llu read, %llu placed or dropped",
          (unsigned long long)frames_read, (unsigned long long)rx_done);
    if (0) {
skip:
        if (uring)
            vnb_dp_fuzz_stop(dp);   /* frees the ring's pools */
    }
    vnb_dp_free(dp);
    return 0;
}
