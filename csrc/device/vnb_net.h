/* The virtio-net header (VIRTIO 1.2 §5.1.6) as it travels in guest buffers and on the tap fd: the
 * kernel's struct virtio_net_hdr_v1 and its flag and GSO values, from <linux/virtio_net.h>. */
#ifndef VNB_NET_H
#define VNB_NET_H
#include <stdint.h>
#include <linux/virtio_net.h>

#if 0   /* what cffi is told (the named fields of the kernel's struct); cffi checks they agree */
/* cffi:begin */
struct virtio_net_hdr_v1 {
    uint8_t flags;
    uint8_t gso_type;
    uint16_t hdr_len;
    uint16_t gso_size;
    uint16_t csum_start;
    uint16_t csum_offset;
    uint16_t num_buffers;   /* present when VERSION_1 or MRG_RXBUF is negotiated */
};
/* cffi:end */
#endif

/* cffi:begin */
#define VNB_NET_HDR_LEN 12          /* the header with num_buffers (VERSION_1 or MRG_RXBUF) */
#define VNB_NET_HDR_LEN_LEGACY 10
#define VNB_MAX_FRAME 65535         /* largest frame (GSO super-frame) either side handles */
/* cffi:end */
#define VNB_NUM_BUFFERS_OFF 10

_Static_assert(sizeof(struct virtio_net_hdr_v1) == VNB_NET_HDR_LEN, "virtio_net_hdr_v1");
_Static_assert(__builtin_offsetof(struct virtio_net_hdr_v1, num_buffers) == VNB_NUM_BUFFERS_OFF, "num_buffers");

#endif
