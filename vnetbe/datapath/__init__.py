"""Datapaths: who services the virtqueues. ``user`` is vnetbe's own C thread; ``vhost`` is the kernel."""
from __future__ import annotations

from .base import Datapath

DATAPATHS = ("user", "vhost")


def make(name: str) -> Datapath:
    from ..errors import ConfigError

    if name == "user":
        from .user import UserDatapath

        return UserDatapath()
    if name == "vhost":
        from .vhost import VhostDatapath

        return VhostDatapath()
    raise ConfigError(f"unknown datapath {name!r}; choose one of {', '.join(DATAPATHS)}")


__all__ = ["Datapath", "DATAPATHS", "make"]
