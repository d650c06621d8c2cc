/* A guest's virtio-net front end, in C for speed and driven from Python: owns one RX and one TX
 * driver queue, its buffers in guest memory, and talks to the device only through the kick and
 * call eventfds (no KVM here: the call eventfd is the interrupt). */
#ifndef VNB_GUEST_H
#define VNB_GUEST_H
#include <stdint.h>
#include "vnb_driver.h"
#include "vnb_net.h"

/* cffi:begin */
#define VNB_TX_SINGLE 0      /* header + frame in one descriptor */
#define VNB_TX_SPLIT_HDR 1   /* header in its own descriptor, then the frame */
#define VNB_TX_SCATTER 2     /* header, then the frame in up to 4 pieces with gaps between them */
#define VNB_TX_INDIRECT 3    /* the scatter layout inside an indirect table */
#define VNB_GUEST_MAX_SEGS 8


struct vnb_guest_stats {
    uint64_t tx_frames, tx_bytes, tx_kicks, tx_interrupts, tx_full_waits;
    uint64_t rx_frames, rx_bytes, rx_kicks, rx_interrupts, rx_waits, rx_buffers;
    uint64_t bad_used;           /* used entries that make no sense (device bug) */
    uint64_t tx_syscalls, rx_syscalls;   /* apart: TX and RX may run on two threads */
};

struct vnb_guest {
    struct vnb_drv_vq rxq;
    struct vnb_drv_vq txq;
    int kick_fd[2];              /* index 0 = RX queue, 1 = TX queue */
    int call_fd[2];
    uint32_t hdr_len;            /* 12 with VERSION_1 or MRG_RXBUF, else 10 */
    uint32_t flags;              /* VNB_F_* (vnb_ring.h) */
    uint8_t *tx_buf;             /* host view of the TX buffer area: one slot per descriptor */
    uint64_t tx_buf_gpa;
    uint32_t tx_buf_size;
    uint32_t rx_buf_size;
    uint8_t *tx_ind;             /* indirect tables, one per TX slot */
    uint64_t tx_ind_gpa;
    uint8_t *rx_buf;
    uint64_t rx_buf_gpa;
    uint32_t rx_segs;            /* descriptors per RX buffer */
    uint32_t tx_pending;         /* chains given to the device and not yet reclaimed */
    struct vnb_guest_stats st;
};

int vnb_guest_init(struct vnb_guest *g, const struct vnb_mem *mem, uint32_t flags, uint32_t hdr_len,
                   uint32_t num_rx, uint64_t rx_desc, uint64_t rx_avail, uint64_t rx_used,
                   uint32_t num_tx, uint64_t tx_desc, uint64_t tx_avail, uint64_t tx_used,
                   uint64_t tx_buf_gpa, uint32_t tx_buf_size, uint64_t tx_ind_gpa,
                   uint64_t rx_buf_gpa, uint32_t rx_buf_size, uint32_t rx_segs,
                   int rx_kick, int rx_call, int tx_kick, int tx_call);
int vnb_guest_tx(struct vnb_guest *g, const uint8_t *frame, uint32_t len, const struct virtio_net_hdr_v1 *hdr,
                 uint32_t layout, int timeout_ms);
int64_t vnb_guest_tx_flood(struct vnb_guest *g, const uint8_t *frame, uint32_t len,
                           const struct virtio_net_hdr_v1 *hdr, uint64_t count, uint32_t layout,
                           uint32_t batch, uint32_t seq_offset, uint32_t tagged, uint32_t first_seq,
                           int timeout_ms);
int vnb_guest_tx_reclaim(struct vnb_guest *g);
int vnb_guest_tx_drain(struct vnb_guest *g, int timeout_ms);
int vnb_guest_rx_fill(struct vnb_guest *g);
int64_t vnb_guest_rx(struct vnb_guest *g, uint8_t *out, uint32_t cap, struct virtio_net_hdr_v1 *hdr,
                     int timeout_ms);
int64_t vnb_guest_rx_count(struct vnb_guest *g, uint64_t count, int timeout_ms, uint32_t seq_offset,
                           uint32_t verify, uint64_t *out_of_order, uint64_t *bad);
/* rr responder: receive frames and answer each rr request (ethertype VNB_TAG_ETHERTYPE, i.e. 0x88B5)
 * with `reply` (len bytes, no header) carrying the request's 4-byte tag from tag_off. Runs until
 * `count` answers, or *stop is nonzero (checked at least every 50 ms), or nothing came for
 * timeout_ms. Returns answers, or -errno. */
int64_t vnb_guest_echo(struct vnb_guest *g, const uint8_t *reply, uint32_t len, uint32_t tag_off,
                       uint64_t count, int timeout_ms, const int *stop);
/* cffi:end */

#endif
