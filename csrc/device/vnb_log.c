#include "vnb_log.h"

uint64_t vnb_log_size_for(uint64_t gpa_end)
{
    uint64_t pages = gpa_end / VNB_LOG_PAGE + (gpa_end % VNB_LOG_PAGE != 0);
    return pages / 8 + (pages % 8 != 0);
}

void vnb_log_write(const struct vnb_mem *m, uint64_t gpa, uint64_t len)
{
    if (!m->log_size || !len || gpa + len < gpa)
        return;
    uint8_t *log = (uint8_t *)(uintptr_t)m->log_hva;
    uint64_t last = (gpa + len - 1) / VNB_LOG_PAGE;
    for (uint64_t page = gpa / VNB_LOG_PAGE; page <= last; page++) {
        if (page / 8 >= m->log_size)
            return;   /* the log stops short of the memory: its owner's error, never a write past it */
        /* Release: the guest bytes this bit stands for are visible before it is, so a harvest that
         * clears it cannot copy the page before they landed. */
        __atomic_fetch_or(&log[page / 8], (uint8_t)(1u << (page % 8)), __ATOMIC_RELEASE);
    }
}

int vnb_log_covers(const struct vnb_mem *m)
{
    if (!m->log_size)
        return 1;
    for (uint32_t i = 0; i < m->nregions; i++)
        if (vnb_log_size_for(m->r[i].gpa + m->r[i].size) > m->log_size)
            return 0;
    return 1;
}

void vnb_log_iov(const struct vnb_mem *m, const struct iovec *iov, int niov, size_t len)
{
    for (int i = 0; i < niov && len; i++) {
        uintptr_t a = (uintptr_t)iov[i].iov_base;
        size_t n = iov[i].iov_len < len ? iov[i].iov_len : len;
        len -= n;
        /* A handful of regions: found by host address, as vnb_mem_map found it by guest address. */
        for (uint32_t k = 0; k < m->nregions; k++) {
            const struct vnb_region *r = &m->r[k];
            if (a >= r->hva && a - r->hva < r->size) {
                vnb_log_write(m, r->gpa + (a - r->hva), n);
                break;
            }
        }
    }
}

uint64_t vnb_log_harvest(uint8_t *log, uint64_t size, uint64_t *pages, uint64_t max)
{
    uint64_t n = 0;
    for (uint64_t i = 0; i < size; i++) {
        if (!__atomic_load_n(&log[i], __ATOMIC_RELAXED))
            continue;   /* most bytes are clear: read before paying for an exchange */
        /* Acquire: pairs with the writer's release, so the page is copied with what the bit stands for. */
        uint8_t bits = __atomic_exchange_n(&log[i], 0, __ATOMIC_ACQUIRE);
        for (int b = 0; b < 8; b++) {
            if (bits & (1u << b)) {
                if (n < max)
                    pages[n] = i * 8 + (uint64_t)b;
                n++;
            }
        }
    }
    return n;
}
