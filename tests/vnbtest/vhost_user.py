"""A vhost-user rig without root: vnetbe's server over a socketpair "tap", its own front end, and a
raw client that sends whatever bytes and fds a test wants."""
from __future__ import annotations

import os
import socket
import tempfile

from vnbtest.fakelink import PairLink
from vnetbe.memory import GuestMemory
from vnetbe.tools.guest import GuestDriver
from vnetbe.tools.vhost_user_frontend import VhostUserFrontend
from vnetbe.vhost_user import VhostUserServer


class ServerRig:
    """vnetbe's server on a PairLink, listening on a fresh socket path; events are recorded."""

    def __init__(self, datapath: str = "user", queues: int = 1):
        self.dir = tempfile.mkdtemp(prefix="vnb-vu-")
        self.path = os.path.join(self.dir, "sock")
        self.link = PairLink()
        self.events: list[tuple[str, str]] = []
        self.server = VhostUserServer(self.path, self.link, datapath, queues=queues,
                                      on_event=lambda k, t: self.events.append((k, t))).start()

    def refusals(self) -> list[str]:
        return [t for k, t in self.events if k == "refused"]

    def close(self) -> None:
        self.server.close()
        self.link.close()
        os.rmdir(self.dir)


class FrontendRig:
    """vnetbe's front end and guest driver, connected to ``path``."""

    def __init__(self, path: str, mem_size: int = 8 << 20, *, regions=None, slots: bool = False,
                 poll_rings: bool = False, status: bool = False, **guest_kw):
        self.mem = GuestMemory(regions=regions) if regions else GuestMemory(mem_size)
        self.fe = None
        try:
            self.fe = VhostUserFrontend(path, self.mem, slots=slots, poll_rings=poll_rings, status=status)
            guest_kw.setdefault("queue_size", 64)
            guest_kw.setdefault("rx_buf_size", 2048)
            self.guest = GuestDriver(self.fe, **guest_kw)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.fe is not None:
            self.fe.close()
        self.mem.close()


def raw_client(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.settimeout(3.0)
    return s


def closed_by_peer(s: socket.socket, timeout: float = 3.0) -> bool:
    """True once the server closed the connection (reads drain any reply first)."""
    s.settimeout(timeout)
    try:
        while True:
            data = s.recv(4096)
            if not data:
                return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
