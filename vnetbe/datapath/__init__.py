"""Datapaths: who services the virtqueues. ``user`` is vnetbe's own C thread; ``uring`` the same thread
with its tap I/O through io_uring (``uring-sqpoll`` with a kernel SQPOLL thread); ``vhost`` is the kernel."""
from __future__ import annotations

from ..errors import ConfigError
from .base import Datapath
from .pairs import PairedDatapath
from .user import UringDatapath, UringSqpollDatapath, UserDatapath
from .vhost import VhostDatapath

_BY_NAME = {c.name: c for c in (UserDatapath, UringDatapath, UringSqpollDatapath, VhostDatapath)}
DATAPATHS = tuple(_BY_NAME)


def make(name: str, pairs: int = 1) -> PairedDatapath:
    """A datapath of kind ``name`` for a device of ``pairs`` queue pairs (one single-pair datapath each)."""
    try:
        cls = _BY_NAME[name]
    except KeyError:
        raise ConfigError(f"unknown datapath {name!r}; choose one of {', '.join(DATAPATHS)}") from None
    return PairedDatapath(cls, pairs)


__all__ = ["Datapath", "DATAPATHS", "PairedDatapath", "make"]
