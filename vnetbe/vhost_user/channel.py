"""Framing of vhost-user messages on a unix stream socket: a 12-byte header, then its payload, with
up to 8 fds (SCM_RIGHTS) riding on the message. Every fd received is returned or closed, never lost."""
from __future__ import annotations

import array
import os
import socket
import time

from ..errors import ProtocolError
from . import protocol as P

_CMSG_FDS = socket.CMSG_SPACE(P.MAX_FDS * array.array("i").itemsize)
PAYLOAD_TIMEOUT = 5.0    # a front end that sent a header has this long to send the rest


def _close_all(fds) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _take_fds(ancdata, flags: int, fds: list[int]) -> None:
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[:len(data) - len(data) % arr.itemsize])
            fds.extend(arr)
    if flags & socket.MSG_CTRUNC:
        raise ProtocolError("message", "fds", f"more than {P.MAX_FDS} fds")


def _recv_exact(sock: socket.socket, n: int, fds: list[int], deadline: float | None) -> bytes | None:
    buf = b""
    while len(buf) < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ProtocolError("message", "size", f"{n - len(buf)} announced bytes did not come within "
                                                       f"{PAYLOAD_TIMEOUT:.0f} s")
            sock.settimeout(left)
        try:
            data, anc, flags, _ = sock.recvmsg(n - len(buf), _CMSG_FDS)
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            data, anc, flags = b"", [], 0
        _take_fds(anc, flags, fds)
        if not data:
            if buf or deadline is not None:
                raise ProtocolError("message", "size", "the front end hung up in the middle of a message")
            return None
        buf += data
    return buf


def recv_message(sock: socket.socket) -> tuple[P.Message, list[int]] | None:
    """The next request and its fds; None when the front end hung up between messages. A malformed
    message raises ProtocolError with every fd it carried already closed."""
    fds: list[int] = []
    try:
        sock.settimeout(None)
        head = _recv_exact(sock, P.HEADER_SIZE, fds, None)
        if head is None:
            return None
        request, flags, size = P.parse_header(head)
        payload = _recv_exact(sock, size, fds, time.monotonic() + PAYLOAD_TIMEOUT) if size else b""
        if len(fds) > P.MAX_FDS:
            raise ProtocolError(P._name(request), "fds", f"{len(fds)} fds, at most {P.MAX_FDS}")
        try:
            msg = P.parse(request, flags, payload, len(fds))
        except ProtocolError as e:
            e.framed = (request, flags)     # read whole: the next message starts where this one ended
            raise
        return msg, fds
    except BaseException:
        _close_all(fds)
        raise


def send_message(sock: socket.socket, data: bytes, fds: list[int] | None = None) -> None:
    """A whole message in one sendmsg (the fds ride on its first byte)."""
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
    sent = sock.sendmsg([data], anc)
    if sent < len(data):
        sock.sendall(data[sent:])
