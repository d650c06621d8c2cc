"""VIRTIO 1.2 constants for the split and packed virtqueues (§2.7, §2.8) and the network device (§5.1).

Names are those of the spec and include/uapi/linux/virtio_*.h, and so are the values: they come
from the kernel's headers through the C extension (csrc/device/vnb_uapi.h), never retyped here.
"""
from __future__ import annotations

from ._native import ffi, lib
from .errors import ConfigError

# --- feature bits (§5.1.3, §6): values from the kernel's uapi headers (csrc/device/vnb_uapi.h) ---
VIRTIO_NET_F_CSUM = lib.VIRTIO_NET_F_CSUM
VIRTIO_NET_F_GUEST_CSUM = lib.VIRTIO_NET_F_GUEST_CSUM
VIRTIO_NET_F_MTU = lib.VIRTIO_NET_F_MTU
VIRTIO_NET_F_MAC = lib.VIRTIO_NET_F_MAC
VIRTIO_NET_F_GUEST_TSO4 = lib.VIRTIO_NET_F_GUEST_TSO4
VIRTIO_NET_F_GUEST_TSO6 = lib.VIRTIO_NET_F_GUEST_TSO6
VIRTIO_NET_F_GUEST_ECN = lib.VIRTIO_NET_F_GUEST_ECN
VIRTIO_NET_F_GUEST_UFO = lib.VIRTIO_NET_F_GUEST_UFO
VIRTIO_NET_F_HOST_TSO4 = lib.VIRTIO_NET_F_HOST_TSO4
VIRTIO_NET_F_HOST_TSO6 = lib.VIRTIO_NET_F_HOST_TSO6
VIRTIO_NET_F_HOST_ECN = lib.VIRTIO_NET_F_HOST_ECN
VIRTIO_NET_F_HOST_UFO = lib.VIRTIO_NET_F_HOST_UFO
VIRTIO_NET_F_MRG_RXBUF = lib.VIRTIO_NET_F_MRG_RXBUF
VIRTIO_NET_F_STATUS = lib.VIRTIO_NET_F_STATUS
VIRTIO_NET_F_MQ = lib.VIRTIO_NET_F_MQ
VIRTIO_NET_F_CTRL_VQ = lib.VIRTIO_NET_F_CTRL_VQ
VIRTIO_NET_F_CTRL_RX = lib.VIRTIO_NET_F_CTRL_RX
VIRTIO_NET_F_CTRL_RX_EXTRA = lib.VIRTIO_NET_F_CTRL_RX_EXTRA
VIRTIO_NET_F_CTRL_MAC_ADDR = lib.VIRTIO_NET_F_CTRL_MAC_ADDR
VIRTIO_NET_F_GUEST_ANNOUNCE = lib.VIRTIO_NET_F_GUEST_ANNOUNCE
VIRTIO_F_NOTIFY_ON_EMPTY = lib.VIRTIO_F_NOTIFY_ON_EMPTY
VIRTIO_F_ANY_LAYOUT = lib.VIRTIO_F_ANY_LAYOUT
VIRTIO_RING_F_INDIRECT_DESC = lib.VIRTIO_RING_F_INDIRECT_DESC
VIRTIO_RING_F_EVENT_IDX = lib.VIRTIO_RING_F_EVENT_IDX
VIRTIO_F_VERSION_1 = lib.VIRTIO_F_VERSION_1
VIRTIO_F_RING_PACKED = lib.VIRTIO_F_RING_PACKED

FEATURE_NAMES = {
    VIRTIO_NET_F_CSUM: "CSUM",
    VIRTIO_NET_F_GUEST_CSUM: "GUEST_CSUM",
    VIRTIO_NET_F_MTU: "MTU",
    VIRTIO_NET_F_MAC: "MAC",
    VIRTIO_NET_F_GUEST_TSO4: "GUEST_TSO4",
    VIRTIO_NET_F_GUEST_TSO6: "GUEST_TSO6",
    VIRTIO_NET_F_HOST_TSO4: "HOST_TSO4",
    VIRTIO_NET_F_HOST_TSO6: "HOST_TSO6",
    VIRTIO_NET_F_MRG_RXBUF: "MRG_RXBUF",
    VIRTIO_NET_F_STATUS: "STATUS",
    VIRTIO_NET_F_CTRL_VQ: "CTRL_VQ",
    VIRTIO_NET_F_CTRL_RX: "CTRL_RX",
    VIRTIO_NET_F_CTRL_MAC_ADDR: "CTRL_MAC_ADDR",
    VIRTIO_NET_F_MQ: "MQ",
    VIRTIO_NET_F_GUEST_ANNOUNCE: "GUEST_ANNOUNCE",
    VIRTIO_RING_F_INDIRECT_DESC: "INDIRECT_DESC",
    VIRTIO_RING_F_EVENT_IDX: "EVENT_IDX",
    VIRTIO_F_VERSION_1: "VERSION_1",
    VIRTIO_F_RING_PACKED: "RING_PACKED",
}


def bit(n: int) -> int:
    return 1 << n


def features_to_names(features: int) -> list[str]:
    return [name for b, name in sorted(FEATURE_NAMES.items()) if features & bit(b)]


# Multiqueue (§5.1.6.5). MQ needs CTRL_VQ; the control queue is the device's (vnetbe/ctrl.py) or the
# caller's (a vhost-user front end's, a VMM's), which then says how many pairs run (set_queue_pairs).
MQ_FEATURES = bit(VIRTIO_NET_F_MQ) | bit(VIRTIO_NET_F_CTRL_VQ)
# What the control queue's commands need: the device model's, not a datapath's.
CTRL_FEATURES = bit(VIRTIO_NET_F_CTRL_VQ) | bit(VIRTIO_NET_F_CTRL_RX) | bit(VIRTIO_NET_F_CTRL_MAC_ADDR)
# After a live migration the guest announces itself (gratuitous ARPs) when the device sets the config
# status ANNOUNCE bit, and acks on the control queue (§5.1.6.5.4); behind vhost-user QEMU does both.
ANNOUNCE_FEATURES = bit(VIRTIO_NET_F_GUEST_ANNOUNCE) | bit(VIRTIO_NET_F_CTRL_VQ)
MODEL_FEATURES = MQ_FEATURES | CTRL_FEATURES | ANNOUNCE_FEATURES

# Everything the userspace datapath implements; the vhost path offers the intersection with the kernel's.
DEVICE_FEATURES = sum(bit(b) for b in FEATURE_NAMES) & ~MODEL_FEATURES

# Queue pairs a device may have: a thread (or a /dev/vhost-net) per pair, and one tap queue each.
MAX_QUEUE_PAIRS = 16

# --- device status (§2.1) ---
ACKNOWLEDGE = lib.VIRTIO_CONFIG_S_ACKNOWLEDGE
DRIVER = lib.VIRTIO_CONFIG_S_DRIVER
DRIVER_OK = lib.VIRTIO_CONFIG_S_DRIVER_OK
FEATURES_OK = lib.VIRTIO_CONFIG_S_FEATURES_OK
DEVICE_NEEDS_RESET = lib.VIRTIO_CONFIG_S_NEEDS_RESET
FAILED = lib.VIRTIO_CONFIG_S_FAILED

# --- config space status field (§5.1.4) ---
VIRTIO_NET_S_LINK_UP = lib.VIRTIO_NET_S_LINK_UP
VIRTIO_NET_S_ANNOUNCE = lib.VIRTIO_NET_S_ANNOUNCE

# --- control virtqueue (§5.1.6.5): acks, classes and the commands the device acts on ---
VIRTIO_NET_OK = lib.VIRTIO_NET_OK
VIRTIO_NET_ERR = lib.VIRTIO_NET_ERR
VIRTIO_NET_CTRL_RX = lib.VIRTIO_NET_CTRL_RX
VIRTIO_NET_CTRL_RX_PROMISC = lib.VIRTIO_NET_CTRL_RX_PROMISC
VIRTIO_NET_CTRL_RX_ALLMULTI = lib.VIRTIO_NET_CTRL_RX_ALLMULTI
VIRTIO_NET_CTRL_MAC = lib.VIRTIO_NET_CTRL_MAC
VIRTIO_NET_CTRL_MAC_TABLE_SET = lib.VIRTIO_NET_CTRL_MAC_TABLE_SET
VIRTIO_NET_CTRL_MAC_ADDR_SET = lib.VIRTIO_NET_CTRL_MAC_ADDR_SET
VIRTIO_NET_CTRL_ANNOUNCE = lib.VIRTIO_NET_CTRL_ANNOUNCE
VIRTIO_NET_CTRL_ANNOUNCE_ACK = lib.VIRTIO_NET_CTRL_ANNOUNCE_ACK
VIRTIO_NET_CTRL_MQ = lib.VIRTIO_NET_CTRL_MQ
VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET = lib.VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET

# --- split ring (§2.7) ---
VRING_DESC_F_NEXT = lib.VRING_DESC_F_NEXT
VRING_DESC_F_WRITE = lib.VRING_DESC_F_WRITE
VRING_DESC_F_INDIRECT = lib.VRING_DESC_F_INDIRECT
VRING_AVAIL_F_NO_INTERRUPT = lib.VRING_AVAIL_F_NO_INTERRUPT
VRING_USED_F_NO_NOTIFY = lib.VRING_USED_F_NO_NOTIFY
MAX_QUEUE_SIZE = lib.VNB_MAX_QUEUE_SIZE
DESC_SIZE = ffi.sizeof("struct vring_desc")

# --- net header (§5.1.6) ---
VIRTIO_NET_HDR_F_NEEDS_CSUM = lib.VIRTIO_NET_HDR_F_NEEDS_CSUM
VIRTIO_NET_HDR_F_DATA_VALID = lib.VIRTIO_NET_HDR_F_DATA_VALID
VIRTIO_NET_HDR_GSO_NONE = lib.VIRTIO_NET_HDR_GSO_NONE
VIRTIO_NET_HDR_GSO_TCPV4 = lib.VIRTIO_NET_HDR_GSO_TCPV4
VIRTIO_NET_HDR_GSO_UDP = lib.VIRTIO_NET_HDR_GSO_UDP
VIRTIO_NET_HDR_GSO_TCPV6 = lib.VIRTIO_NET_HDR_GSO_TCPV6
VIRTIO_NET_HDR_GSO_ECN = lib.VIRTIO_NET_HDR_GSO_ECN
NET_HDR_LEN = lib.VNB_NET_HDR_LEN              # with VERSION_1 or MRG_RXBUF: carries num_buffers
NET_HDR_LEN_LEGACY = lib.VNB_NET_HDR_LEN_LEGACY
MAX_FRAME = lib.VNB_MAX_FRAME                  # largest frame (a GSO super-frame) either side handles

GSO_TYPES = {"tcpv4": VIRTIO_NET_HDR_GSO_TCPV4, "tcpv6": VIRTIO_NET_HDR_GSO_TCPV6, "udp": VIRTIO_NET_HDR_GSO_UDP}

RX_QUEUE = 0
TX_QUEUE = 1


def is_tx_queue(q: int) -> bool:
    """Virtqueue q of the device is a TX queue: rx0, tx0, rx1, tx1, ... (§5.1.2)."""
    return q % 2 == 1


def desc_table_size(num: int) -> int:
    return DESC_SIZE * num


def avail_ring_size(num: int) -> int:
    # flags, idx, ring[num], used_event
    return 2 + 2 + 2 * num + 2


def used_ring_size(num: int) -> int:
    # flags, idx, ring[num] of {id, len}, avail_event
    return 2 + 2 + 8 * num + 2


def ring_flags(features: int) -> int:
    """The VNB_F_* flags (csrc/device/vnb_ring.h) the C sides act on, from negotiated feature bits."""
    return ((lib.VNB_F_EVENT_IDX if features & bit(VIRTIO_RING_F_EVENT_IDX) else 0)
            | (lib.VNB_F_INDIRECT if features & bit(VIRTIO_RING_F_INDIRECT_DESC) else 0)
            | (lib.VNB_F_MRG_RXBUF if features & bit(VIRTIO_NET_F_MRG_RXBUF) else 0)
            | (lib.VNB_F_PACKED if features & bit(VIRTIO_F_RING_PACKED) else 0))


# --- packed ring (§2.8): the descriptor ring, and two 4-byte event suppression structures ---
PACKED_EVENT_SIZE = 4
PACKED_WRAP = 1 << 15       # a packed ring position's wrap counter, in the vhost(-user) ring base encoding
PACKED_START = PACKED_WRAP  # position 0, wrap counter 1: where a fresh packed ring starts (§2.8.1)


def check_queue_size(num: int, packed: bool = False) -> None:
    if packed:
        if not 1 <= num <= MAX_QUEUE_SIZE:
            raise ConfigError(f"packed queue size {num} is not between 1 and {MAX_QUEUE_SIZE}")
        return
    if num < 1 or num > MAX_QUEUE_SIZE or num & (num - 1):
        raise ConfigError(f"queue size {num} is not a power of two between 1 and {MAX_QUEUE_SIZE}")
