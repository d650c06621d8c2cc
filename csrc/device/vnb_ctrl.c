/* The control virtqueue's commands: gathered from a chain, checked, answered (vnb_ctrl.h). */
#include "vnb_ctrl.h"
#include "vnb_log.h"
#include "vnb_guard.h"
#include <errno.h>
#include <linux/virtio_net.h>
#include <string.h>

#define MAC_LEN 6

/* Gather the chain's readable bytes into req (class, command, then at most VNB_CTRL_MAX_DATA of
 * data) and find the ack: the first writable byte (§5.1.6.5: the driver puts the ack after the
 * command). Copies at most 2 + VNB_CTRL_MAX_DATA bytes, whatever the chain's length (out_len says
 * it); reads only what vnb_vq_pop mapped, which lies inside guest memory. */
static __thread uint8_t flat[2 + VNB_CTRL_MAX_DATA];

static void gather(const struct vnb_chain *c, struct vnb_ctrl_req *req)
{
    uint64_t want = c->out_len < sizeof(flat) ? c->out_len : sizeof(flat);
    uint64_t got = 0;
    for (int i = 0; i < c->nout && got < want; i++) {
        uint64_t n = c->iov[i].iov_len < want - got ? c->iov[i].iov_len : want - got;
        memcpy(flat + got, c->iov[i].iov_base, n);
        got += n;
    }
    req->err = VNB_CTRL_E_NONE;
    req->len = 0;
    req->cls = got >= 1 ? flat[0] : 0;
    req->cmd = got >= 2 ? flat[1] : 0;
    if (c->out_len < 2) {
        req->err = VNB_CTRL_E_SHORT;
    } else if (c->out_len - 2 > VNB_CTRL_MAX_DATA) {
        req->err = VNB_CTRL_E_TOO_LONG;
    } else {
        req->len = (uint32_t)(c->out_len - 2);
        memcpy(req->data, flat + 2, req->len);
    }
    req->ack = NULL;
    for (int i = c->nout; i < c->nout + c->nin; i++)
        if (c->iov[i].iov_len) {
            req->ack = c->iov[i].iov_base;
            break;
        }
    if (!req->ack)
        req->err = VNB_CTRL_E_NO_ACK;
}

struct pop_args { struct vnb_vq *vq; struct vnb_ctrl_req *req; struct vnb_chain *c; };

static int do_pop(void *p)
{
    struct pop_args *a = p;
    int r = vnb_vq_pop(a->vq, a->c);
    if (r <= 0)
        return r;
    a->req->head = a->c->head;
    gather(a->c, a->req);
    return 1;
}

/* One chain's iovecs: large (16 KiB), so one per thread rather than on the stack of a Python thread. */
static __thread struct vnb_chain chain;

int vnb_ctrl_pop(struct vnb_vq *vq, struct vnb_ctrl_req *req)
{
    struct pop_args a = { vq, req, &chain };
    int r = vnb_run_guarded(vq->mem, do_pop, &a);
    return r;
}

static int check_mac_table(const uint8_t *data, uint32_t len)
{
    /* Two tables, unicast then multicast, each a le32 entry count and that many 6-byte MACs. */
    uint32_t at = 0;
    for (int t = 0; t < 2; t++) {
        uint32_t n;
        if (len - at < 4)
            return VNB_CTRL_E_MAC_TABLE;
        memcpy(&n, data + at, 4);
        n = le32toh(n);
        at += 4;
        if (n > (len - at) / MAC_LEN)
            return VNB_CTRL_E_MAC_TABLE;
        at += n * MAC_LEN;
    }
    return at == len ? VNB_CTRL_E_NONE : VNB_CTRL_E_MAC_TABLE;
}

int vnb_ctrl_check(uint8_t cls, uint8_t cmd, const uint8_t *data, uint32_t len, uint32_t features,
                   uint16_t max_pairs)
{
    switch (cls) {
    case VIRTIO_NET_CTRL_RX:
        if (cmd > VIRTIO_NET_CTRL_RX_NOBCAST)
            return VNB_CTRL_E_COMMAND;
        if (!(features & VNB_CTRL_F_RX) || (cmd > VIRTIO_NET_CTRL_RX_ALLMULTI && !(features & VNB_CTRL_F_RX_EXTRA)))
            return VNB_CTRL_E_NOT_NEGOTIATED;
        return len == 1 ? VNB_CTRL_E_NONE : VNB_CTRL_E_SIZE;
    case VIRTIO_NET_CTRL_MAC:
        if (cmd == VIRTIO_NET_CTRL_MAC_TABLE_SET) {
            if (!(features & VNB_CTRL_F_RX))
                return VNB_CTRL_E_NOT_NEGOTIATED;
            return check_mac_table(data, len);
        }
        if (cmd == VIRTIO_NET_CTRL_MAC_ADDR_SET) {
            if (!(features & VNB_CTRL_F_MAC_ADDR))
                return VNB_CTRL_E_NOT_NEGOTIATED;
            return len == MAC_LEN ? VNB_CTRL_E_NONE : VNB_CTRL_E_SIZE;
        }
        return VNB_CTRL_E_COMMAND;
    case VIRTIO_NET_CTRL_VLAN:
        if (cmd > VIRTIO_NET_CTRL_VLAN_DEL)
            return VNB_CTRL_E_COMMAND;
        return VNB_CTRL_E_NOT_NEGOTIATED;   /* CTRL_VLAN is not offered */
    case VIRTIO_NET_CTRL_ANNOUNCE:
        if (cmd != VIRTIO_NET_CTRL_ANNOUNCE_ACK)
            return VNB_CTRL_E_COMMAND;
        if (!(features & VNB_CTRL_F_ANNOUNCE))
            return VNB_CTRL_E_NOT_NEGOTIATED;
        return len == 0 ? VNB_CTRL_E_NONE : VNB_CTRL_E_SIZE;
    case VIRTIO_NET_CTRL_MQ:
        if (cmd == VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET) {
            uint16_t n;
            if (!(features & VNB_CTRL_F_MQ))
                return VNB_CTRL_E_NOT_NEGOTIATED;
            if (len != 2)
                return VNB_CTRL_E_SIZE;
            memcpy(&n, data, 2);
            n = le16toh(n);
            return n >= VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN && n <= max_pairs ? VNB_CTRL_E_NONE : VNB_CTRL_E_PAIRS;
        }
        if (cmd == VIRTIO_NET_CTRL_MQ_RSS_CONFIG || cmd == VIRTIO_NET_CTRL_MQ_HASH_CONFIG)
            return VNB_CTRL_E_NOT_NEGOTIATED;   /* RSS and HASH_REPORT are not offered */
        return VNB_CTRL_E_COMMAND;
    case VIRTIO_NET_CTRL_GUEST_OFFLOADS:
        if (cmd != VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET)
            return VNB_CTRL_E_COMMAND;
        return VNB_CTRL_E_NOT_NEGOTIATED;   /* CTRL_GUEST_OFFLOADS is not offered */
    default:
        return VNB_CTRL_E_CLASS;
    }
}

struct complete_args { struct vnb_vq *vq; struct vnb_ctrl_req *req; uint8_t ack; };

static int do_complete(void *p)
{
    struct complete_args *a = p;
    uint32_t len = 0;
    if (a->req->ack) {
        *a->req->ack = a->ack;   /* inside a buffer vnb_vq_pop mapped: guest memory */
        if (vnb_logging(a->vq->mem)) {
            struct iovec one = { a->req->ack, 1 };
            vnb_log_iov(a->vq->mem, &one, 1, 1);
        }
        len = 1;
    }
    vnb_vq_add_used(a->vq, a->req->head, len);
    vnb_vq_flush_used(a->vq);   /* publishes after the ack is written (its release barrier) */
    return vnb_vq_should_notify(a->vq);
}

int vnb_ctrl_complete(struct vnb_vq *vq, struct vnb_ctrl_req *req, uint8_t ack)
{
    struct complete_args a = { vq, req, ack };
    return vnb_run_guarded(vq->mem, do_complete, &a);
}

static int do_enable_notify(void *p)
{
    return vnb_vq_enable_notify(p) ? 1 : 0;
}

int vnb_ctrl_enable_notify(struct vnb_vq *vq)
{
    return vnb_run_guarded(vq->mem, do_enable_notify, vq);
}
