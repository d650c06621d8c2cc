/* Guest fault codes and drop reasons: the vocabulary the C side reports to Python.
 * Python takes its names from these enums (vnetbe/faults.py): a member is named once, here. */
#ifndef VNB_FAULT_H
#define VNB_FAULT_H

/* cffi:begin */
enum vnb_fault {
    VNB_FAULT_NONE = 0,
    VNB_FAULT_DESC_ADDR = 1,          /* buffer outside guest memory or across a hole */
    VNB_FAULT_LOOP = 2,               /* chain loops or is longer than the queue */
    VNB_FAULT_NESTED_INDIRECT = 3,
    VNB_FAULT_INDIRECT_LEN = 4,       /* zero, not a multiple of 16, or over VNB_MAX_INDIRECT entries */
    VNB_FAULT_TX_WRITABLE = 5,        /* device-writable descriptor in a TX chain */
    VNB_FAULT_AVAIL_IDX = 6,          /* avail->idx moved by more than num */
    VNB_FAULT_HEAD_RANGE = 7,
    VNB_FAULT_NEXT_RANGE = 8,
    VNB_FAULT_ORDER = 9,              /* readable descriptor after a writable one */
    VNB_FAULT_CHAIN_TOO_LONG = 10,    /* more than VNB_MAX_IOV buffers */
    VNB_FAULT_INDIRECT_NOT_NEGOTIATED = 11,
    VNB_FAULT_RX_READABLE = 12,       /* device-readable descriptor in an RX chain */
    VNB_FAULT_RING_ADDR = 13,         /* ring itself outside guest memory */
    VNB_FAULT_INDIRECT_NEXT = 14,     /* INDIRECT and NEXT on one descriptor (§2.7.5.3.1) */
    VNB_FAULT_MEM_GONE = 15,          /* guest memory vanished under its mapping (SIGBUS, EFAULT): shrunk */
    VNB_FAULT_BUFFER_ID = 16,         /* packed: a buffer id out of range, or reused while still in flight */
    VNB_FAULT_CHAIN_FLAGS = 17,       /* packed: a chain runs into a descriptor not made available */
    VNB_FAULT_MAX = 18
};

enum vnb_drop {
    VNB_DROP_TX_SHORT = 0,        /* chain shorter than the virtio-net header */
    VNB_DROP_TX_OVERSIZE = 1,     /* frame larger than 64 KiB + header */
    VNB_DROP_TX_TAP_REFUSED = 2,  /* the tap refused the frame (EINVAL: bad header / gso) */
    VNB_DROP_TX_TAP_ERROR = 3,    /* other write errors (EIO: link down, ...) */
    VNB_DROP_RX_NO_BUFFER = 4,    /* frame too large for the buffers the guest could ever give */
    VNB_DROP_RX_TRUNCATED = 5,    /* tap delivered more than the bounce buffer holds */
    VNB_DROP_RX_STOPPED = 6,      /* frame half-placed in guest buffers when the datapath was stopped */
    VNB_DROP_RX_TAP_ERROR = 7,    /* read from the tap failed with something other than EAGAIN */
    VNB_DROP_TX_DISABLED = 8,     /* TX ring started but disabled: processed and discarded (vhost-user) */
    VNB_DROP_MAX = 9
};
/* cffi:end */

#endif
