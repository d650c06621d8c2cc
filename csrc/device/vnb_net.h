/* The virtio-net header (VIRTIO 1.2 §5.1.6) as it travels in guest buffers and on the tap fd. */
#ifndef VNB_NET_H
#define VNB_NET_H
#include <stdint.h>

/* cffi:begin */
#define VIRTIO_NET_HDR_F_NEEDS_CSUM 1
#define VIRTIO_NET_HDR_F_DATA_VALID 2
#define VIRTIO_NET_HDR_GSO_NONE 0
#define VIRTIO_NET_HDR_GSO_TCPV4 1
#define VIRTIO_NET_HDR_GSO_UDP 3
#define VIRTIO_NET_HDR_GSO_TCPV6 4

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

#define VNB_NET_HDR_LEN 12
#define VNB_NET_HDR_LEN_LEGACY 10
#define VNB_NUM_BUFFERS_OFF 10
#define VNB_MAX_FRAME 65535u   /* largest frame (GSO super-frame) either side handles */

#endif
