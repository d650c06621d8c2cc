/* The virtio-net control virtqueue (VIRTIO 1.2 §5.1.6.5), device side: a command's chain popped and
 * gathered (class, command, data; the ack byte located), checked against the negotiated features and
 * the command's layout, and answered. What a valid command does (run more queue pairs, change the
 * link's filters) is the control plane's (vnetbe/ctrl.py); what the guest wrote is judged here.
 * Every guest-memory access goes through the SIGBUS guard: the control plane's thread calls these. */
#ifndef VNB_CTRL_H
#define VNB_CTRL_H
#include <stdint.h>
#include "vnb_virtq.h"

/* cffi:begin */
/* The largest command data taken: a MAC_TABLE_SET with 2 x 255 entries fits; a longer command is
 * answered VIRTIO_NET_ERR (too_long), never read past this. */
#define VNB_CTRL_MAX_DATA 4096

/* Why a command is refused (answered VIRTIO_NET_ERR), counted by name in Python (vnetbe/ctrl.py). */
enum vnb_ctrl_err {
    VNB_CTRL_E_NONE = 0,          /* a valid command: the control plane applies it */
    VNB_CTRL_E_NO_ACK = 1,        /* no device-writable byte for the ack: used with length 0 */
    VNB_CTRL_E_SHORT = 2,         /* fewer than the 2 header bytes (class, command) */
    VNB_CTRL_E_TOO_LONG = 3,      /* more than VNB_CTRL_MAX_DATA bytes of data */
    VNB_CTRL_E_CLASS = 4,         /* a class this device does not know */
    VNB_CTRL_E_COMMAND = 5,       /* a command its class does not have */
    VNB_CTRL_E_NOT_NEGOTIATED = 6,/* its feature (CTRL_RX, MQ, ...) was not negotiated */
    VNB_CTRL_E_SIZE = 7,          /* data of the wrong size for the command */
    VNB_CTRL_E_PAIRS = 8,         /* VQ_PAIRS_SET outside 1..max_virtqueue_pairs */
    VNB_CTRL_E_MAC_TABLE = 9,     /* a MAC table whose entry counts do not match its size */
    VNB_CTRL_E_UNSUPPORTED = 10,  /* known and well formed, but not done by this device */
    VNB_CTRL_E_MAX = 11
};

/* Feature bits the checks need, as VNB_CTRL_F_* (from the negotiated virtio features). */
#define VNB_CTRL_F_RX 1           /* VIRTIO_NET_F_CTRL_RX */
#define VNB_CTRL_F_RX_EXTRA 2     /* VIRTIO_NET_F_CTRL_RX_EXTRA */
#define VNB_CTRL_F_MAC_ADDR 4     /* VIRTIO_NET_F_CTRL_MAC_ADDR */
#define VNB_CTRL_F_ANNOUNCE 8     /* VIRTIO_NET_F_GUEST_ANNOUNCE */
#define VNB_CTRL_F_MQ 16          /* VIRTIO_NET_F_MQ */

struct vnb_ctrl_req {
    uint16_t head;                /* the chain, to be used by vnb_ctrl_complete */
    uint8_t cls, cmd;
    uint32_t len;                 /* bytes of data[] */
    int32_t err;                  /* enum vnb_ctrl_err of the gathering (NO_ACK, SHORT, TOO_LONG) */
    uint8_t *ack;                 /* where the ack byte goes (host address), NULL without one */
    uint8_t data[4096];           /* VNB_CTRL_MAX_DATA */
};

/* Pop one command: 1 (req filled), 0 (none available), -EFAULT (guest memory gone), or another
 * negative value (a ring fault stopped the queue: vq->fault names it). */
int vnb_ctrl_pop(struct vnb_vq *vq, struct vnb_ctrl_req *req);
/* Check a gathered command: VNB_CTRL_E_NONE or why it is refused. Pure. max_pairs: max_virtqueue_pairs. */
int vnb_ctrl_check(uint8_t cls, uint8_t cmd, const uint8_t *data, uint32_t len, uint32_t features,
                   uint16_t max_pairs);
/* Write the ack (VIRTIO_NET_OK or VIRTIO_NET_ERR), use the chain and flush: whether to interrupt the
 * driver (1, 0), or -EFAULT when guest memory is gone. */
int vnb_ctrl_complete(struct vnb_vq *vq, struct vnb_ctrl_req *req, uint8_t ack);
/* Before sleeping on the kick: ask the driver to kick (its event index, or flags) for the next
 * command. 1 if one came meanwhile (serve it first), 0, or -EFAULT when guest memory is gone. */
int vnb_ctrl_enable_notify(struct vnb_vq *vq);
/* cffi:end */

_Static_assert(sizeof(((struct vnb_ctrl_req *)0)->data) == VNB_CTRL_MAX_DATA, "data[]");

#endif
