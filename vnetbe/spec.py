"""VIRTIO 1.2 constants for the split virtqueue (§2.7) and the network device (§5.1).

Names follow the spec and include/uapi/linux/virtio_*.h so they can be grepped side by side.
"""
from __future__ import annotations

from .errors import ConfigError

# --- feature bits (§5.1.3, §6) ---
VIRTIO_NET_F_CSUM = 0
VIRTIO_NET_F_GUEST_CSUM = 1
VIRTIO_NET_F_MTU = 3
VIRTIO_NET_F_MAC = 5
VIRTIO_NET_F_GUEST_TSO4 = 7
VIRTIO_NET_F_GUEST_TSO6 = 8
VIRTIO_NET_F_GUEST_ECN = 9
VIRTIO_NET_F_GUEST_UFO = 10
VIRTIO_NET_F_HOST_TSO4 = 11
VIRTIO_NET_F_HOST_TSO6 = 12
VIRTIO_NET_F_HOST_ECN = 13
VIRTIO_NET_F_HOST_UFO = 14
VIRTIO_NET_F_MRG_RXBUF = 15
VIRTIO_NET_F_STATUS = 16
VIRTIO_F_NOTIFY_ON_EMPTY = 24
VIRTIO_F_ANY_LAYOUT = 27
VIRTIO_RING_F_INDIRECT_DESC = 28
VIRTIO_RING_F_EVENT_IDX = 29
VIRTIO_F_VERSION_1 = 32

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
    VIRTIO_RING_F_INDIRECT_DESC: "INDIRECT_DESC",
    VIRTIO_RING_F_EVENT_IDX: "EVENT_IDX",
    VIRTIO_F_VERSION_1: "VERSION_1",
}


def bit(n: int) -> int:
    return 1 << n


def features_to_names(features: int) -> list[str]:
    return [name for b, name in sorted(FEATURE_NAMES.items()) if features & bit(b)]


def names_to_features(names) -> int:
    rev = {v: k for k, v in FEATURE_NAMES.items()}
    out = 0
    for n in names:
        key = n.upper().removeprefix("VIRTIO_NET_F_").removeprefix("VIRTIO_RING_F_").removeprefix("VIRTIO_F_")
        if key not in rev:
            raise ValueError(f"unknown feature {n!r}; known: {', '.join(sorted(rev))}")
        out |= bit(rev[key])
    return out


# Everything the userspace datapath implements; the vhost path offers the intersection with the kernel's.
DEVICE_FEATURES = sum(bit(b) for b in FEATURE_NAMES)

# --- device status (§2.1) ---
ACKNOWLEDGE = 1
DRIVER = 2
DRIVER_OK = 4
FEATURES_OK = 8
DEVICE_NEEDS_RESET = 64
FAILED = 128

# --- config space status field (§5.1.4) ---
VIRTIO_NET_S_LINK_UP = 1

# --- split ring (§2.7) ---
VRING_DESC_F_NEXT = 1
VRING_DESC_F_WRITE = 2
VRING_DESC_F_INDIRECT = 4
VRING_AVAIL_F_NO_INTERRUPT = 1
VRING_USED_F_NO_NOTIFY = 1
MAX_QUEUE_SIZE = 32768
DESC_SIZE = 16

# --- net header (§5.1.6) ---
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_F_DATA_VALID = 2
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_UDP = 3
VIRTIO_NET_HDR_GSO_TCPV6 = 4
VIRTIO_NET_HDR_GSO_ECN = 0x80
NET_HDR_LEN = 12  # with VERSION_1 or MRG_RXBUF the header always carries num_buffers

GSO_TYPES = {"tcpv4": VIRTIO_NET_HDR_GSO_TCPV4, "tcpv6": VIRTIO_NET_HDR_GSO_TCPV6, "udp": VIRTIO_NET_HDR_GSO_UDP}

RX_QUEUE = 0
TX_QUEUE = 1


def desc_table_size(num: int) -> int:
    return DESC_SIZE * num


def avail_ring_size(num: int) -> int:
    # flags, idx, ring[num], used_event
    return 2 + 2 + 2 * num + 2


def used_ring_size(num: int) -> int:
    # flags, idx, ring[num] of {id, len}, avail_event
    return 2 + 2 + 8 * num + 2


def check_queue_size(num: int) -> None:
    if num < 1 or num > MAX_QUEUE_SIZE or num & (num - 1):
        raise ConfigError(f"queue size {num} is not a power of two between 1 and {MAX_QUEUE_SIZE}")
