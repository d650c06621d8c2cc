/* The datapath's per-frame system calls, behind one seam. A normal build calls the kernel; the
 * libFuzzer target (csrc/fuzz/fuzz_datapath.c, built with VNB_FUZZ) supplies these functions, so the
 * ring-to-iovec logic of TX and RX runs without a thread, an epoll set or a tap. Internal: not seen
 * by cffi (the builders skip *_impl.h). */
#ifndef VNB_SYS_IMPL_H
#define VNB_SYS_IMPL_H
#include <poll.h>
#include <sys/epoll.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#ifdef VNB_FUZZ
ssize_t vnb_sys_write(int fd, const void *buf, size_t n);
ssize_t vnb_sys_writev(int fd, const struct iovec *iov, int n);
ssize_t vnb_sys_read(int fd, void *buf, size_t n);
ssize_t vnb_sys_readv(int fd, const struct iovec *iov, int n);
int vnb_sys_epoll_ctl(int epfd, int op, int fd, struct epoll_event *ev);
int vnb_sys_poll(struct pollfd *fds, nfds_t n, int timeout);
#else
#define vnb_sys_write write
#define vnb_sys_writev writev
#define vnb_sys_read read
#define vnb_sys_readv readv
#define vnb_sys_epoll_ctl epoll_ctl
#define vnb_sys_poll poll
#endif

#endif
