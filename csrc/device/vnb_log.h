/* The dirty log of a live migration (vhost-user spec, "Migration"; the kernel's vhost_log_write):
 * one bit per 4 KiB page of guest-physical address, log[page / 8] bit page % 8, set atomically after
 * the write it stands for. The front end (QEMU) harvests it with atomic exchanges while the guest
 * runs, and copies again every page whose bit it found set: a guest byte the device writes without
 * setting its bit may reach the destination stale. Every device-side write to guest memory goes
 * through here while the memory table has a log (vnb_mem.log_size != 0); without one it costs a
 * predictable branch. */
#ifndef VNB_LOG_H
#define VNB_LOG_H
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>
#include "vnb_mem.h"

/* cffi:begin */
#define VNB_LOG_PAGE 4096
/* Log bytes that cover guest-physical addresses below gpa_end. */
uint64_t vnb_log_size_for(uint64_t gpa_end);
/* Mark the pages of [gpa, gpa + len) dirty in m's log; nothing when m has no log. A page beyond the
 * log is not written (the log's owner sized it for the memory table: vnb_log_covers). */
void vnb_log_write(const struct vnb_mem *m, uint64_t gpa, uint64_t len);
/* 1 if m's log has a bit for every page of m's regions (or m has no log). */
int vnb_log_covers(const struct vnb_mem *m);
/* A pre-copy round's harvest, as QEMU's: take and clear the log size bytes at log (atomic exchanges,
 * so a bit the device sets meanwhile is in this harvest or the next, never lost) and put the dirty
 * page numbers in pages[], at most max of them. Returns how many were dirty (it may exceed max: the
 * rest are cleared all the same, so give max >= size * 8 when every page matters). */
uint64_t vnb_log_harvest(uint8_t *log, uint64_t size, uint64_t *pages, uint64_t max);
/* cffi:end */

/* The first len bytes of iovecs that vnb_mem_map made from m (each inside one region), by their
 * guest-physical addresses. */
void vnb_log_iov(const struct vnb_mem *m, const struct iovec *iov, int niov, size_t len);

static inline int vnb_logging(const struct vnb_mem *m) { return __builtin_expect(m->log_size != 0, 0); }

#endif
