"""libFuzzer target (atheris) for what a vhost-user front end sends: a byte stream cut into messages,
each parsed by vnetbe/vhost_user/protocol.py and, when accepted, applied to a Session over a
socketpair "tap" (the userspace datapath really starts on rings in memfd memory).

Oracles, not just "no crash":
- parsing a message either returns one whose payload re-encodes to the bytes it came from, or raises
  ProtocolError; any other exception is a bug;
- a session either answers (a reply whose header names the request, has the reply bit and the right
  size) or refuses with ProtocolError; after a refusal it is closed, as the server closes;
- closing the session releases every fd it was given or made (the process's fd count is back).

    python3 csrc/fuzz/fuzz_vhost_user.py -max_total_time=60 build/fuzz/vhost_user/corpus csrc/fuzz/corpus/vhost_user
    python3 csrc/fuzz/fuzz_vhost_user.py --write-seeds csrc/fuzz/corpus/vhost_user     # the seed corpus
"""
from __future__ import annotations

import os
import socket
import sys

import atheris

with atheris.instrument_imports(include=["vnetbe"]):
    from vnetbe.errors import GuestMemoryGone, ProtocolError
    from vnetbe.link import LinkStats
    from vnetbe.vhost_user import Session
    from vnetbe.vhost_user import protocol as P

MEM = 2 << 20
_FD_TAKERS = {P.Request.SET_MEM_TABLE, P.Request.ADD_MEM_REG, P.Request.REM_MEM_REG, P.Request.SET_VRING_KICK,
              P.Request.SET_VRING_CALL, P.Request.SET_VRING_ERR}


class _Link:
    """A SOCK_SEQPACKET socketpair in place of a tap (what tests/vnbtest/fakelink.py does)."""
    name, ifindex, mac, mtu, owned = "fuzz", 0, "02:00:00:00:00:01", 1500, True

    def __init__(self):
        self.a, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.a.setblocking(False)
        self.fd = self.a.fileno()

    @property
    def queue_fds(self):        # one queue: the session here serves one pair
        return [self.fd]

    def queue(self, p):
        return self

    def set_vnet_hdr_len(self, n):
        pass

    def set_offload(self, flags):
        pass

    def stats(self):
        return LinkStats()

    def close(self):
        self.a.close()
        self.peer.close()


def _fds_for(req: int, nfds: int, memfds: list[int]) -> list[int]:
    """The fds a message brings; each memfd's duplicate goes to ``memfds`` so the input can shrink it
    later, as a hostile front end does."""
    fds = []
    for _ in range(nfds):
        if req in (P.Request.SET_MEM_TABLE, P.Request.ADD_MEM_REG, P.Request.SET_LOG_BASE):
            fd = os.memfd_create("vnb-fuzz", os.MFD_CLOEXEC)
            os.ftruncate(fd, MEM)
            memfds.append(os.dup(fd))
        else:
            fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        fds.append(fd)
    return fds


def _check_roundtrip(msg: P.Message, payload: bytes) -> None:
    """An accepted message's decoded fields say exactly what its bytes said."""
    v = msg.payload
    if isinstance(v, P.VringAddr):
        again = P.VRING_ADDR.pack(v.index, v.flags, v.desc, v.used, v.avail, v.log)
    elif isinstance(v, tuple) and v and isinstance(v[0], P.MemRegion):
        again = payload[:P.MEM_HDR.size] + P.mem_table_payload(v)[P.MEM_HDR.size:]
    elif isinstance(v, P.MemRegion):
        again = payload[:P.MEM_SINGLE.size] + P.mem_single_payload(v)[P.MEM_SINGLE.size:]
    elif isinstance(v, tuple) and len(v) == 4:      # GET/SET_CONFIG: offset, size, flags, bytes
        again = P.config_payload(*v)
    elif isinstance(v, tuple):
        again = P.VRING_STATE.pack(*v)
    elif isinstance(v, int):
        again = P.U64.pack(v)
    else:
        again = b""
    assert again == payload, (msg.name, payload.hex(), again.hex())


def messages(data: bytes):
    """The input as a front end's stream: per message one byte (fds to send, mod 4; bit 7: shrink the
    memory files sent so far to a page before this message), then the 12-byte header and as many
    payload bytes as its size field says (a shorter tail ends the stream)."""
    i = 0
    while i + 1 + P.HEADER_SIZE <= len(data):
        nfds = data[i] % 4 | (data[i] & 0x80)
        head = data[i + 1:i + 1 + P.HEADER_SIZE]
        request, _, size = P.HEADER.unpack(head)
        i += 1 + P.HEADER_SIZE
        if size > P.max_payload(request):
            yield nfds, head, b""          # refused unread, as the channel does
            return
        payload = data[i:i + size]
        if len(payload) < size:
            return
        i += size
        yield nfds, head, payload


def TestOneInput(data: bytes) -> None:
    before = len(os.listdir("/proc/self/fd"))
    link = _Link()
    session = Session(link, "user")
    memfds: list[int] = []
    try:
        for nfds, head, payload in messages(data):
            if nfds & 0x80:                 # the front end takes its memory away (SIGBUS recovered)
                for fd in memfds:
                    os.ftruncate(fd, 4096)
                nfds &= 3
            try:
                request, flags, _size = P.parse_header(head)
                msg = P.parse(request, flags, payload, nfds)
            except ProtocolError:
                break                       # the server closes the connection here
            _check_roundtrip(msg, payload)
            fds = _fds_for(msg.request, nfds, memfds)
            try:
                out = session.handle(msg, fds)
            except (ProtocolError, GuestMemoryGone):
                break                       # GuestMemoryGone: a VnetError, which the server also closes on
            if out is not None:
                code, rflags, rsize = P.HEADER.unpack_from(out)
                assert code == msg.request and rflags & P.FLAG_REPLY and rsize == len(out) - P.HEADER_SIZE
    finally:
        session.close()
        link.close()
        for fd in memfds:
            os.close(fd)
    after = len(os.listdir("/proc/self/fd"))
    assert after == before, f"fds {before} -> {after}"


def seed(msgs) -> bytes:
    """A seed input from (request, payload, nfds) triples."""
    return b"".join(bytes([n]) + P.request(r, p) + b"" for r, p, n in msgs)


def write_seeds(path: str) -> None:
    """The seed corpus: a front end's whole setup (as QEMU sends it), and pieces of it."""
    R, M = P.Request, P.MemRegion
    base = 1 << 40
    setup = [(R.GET_FEATURES, b"", 0), (R.GET_PROTOCOL_FEATURES, b"", 0),
             (R.SET_PROTOCOL_FEATURES, P.U64.pack(P.PROTOCOL_FEATURES), 0), (R.GET_QUEUE_NUM, b"", 0),
             (R.GET_MAX_MEM_SLOTS, b"", 0), (R.SET_OWNER, b"", 0),
             (R.SET_FEATURES, P.U64.pack(1 << 32 | 1 << 30 | 1 << 29 | 1 << 15), 0),
             (R.SET_MEM_TABLE, P.mem_table_payload([M(0, MEM, base, 0)]), 1)]
    for q in (0, 1):
        setup += [(R.SET_VRING_NUM, P.VRING_STATE.pack(q, 64), 0), (R.SET_VRING_BASE, P.VRING_STATE.pack(q, 0), 0),
                  (R.SET_VRING_ADDR, P.VRING_ADDR.pack(q, 0, base + q * 65536, base + q * 65536 + 8192,
                                                       base + q * 65536 + 4096, 0), 0),
                  (R.SET_VRING_CALL, P.U64.pack(q), 1), (R.SET_VRING_ERR, P.U64.pack(q), 1),
                  (R.SET_VRING_KICK, P.U64.pack(q), 1), (R.SET_VRING_ENABLE, P.VRING_STATE.pack(q, 1), 0)]
    stop = [(R.GET_VRING_BASE, P.VRING_STATE.pack(1, 0), 0), (R.ADD_MEM_REG, P.mem_single_payload(
        M(4 << 20, MEM, base + (8 << 20), 0)), 1), (R.REM_MEM_REG, P.mem_single_payload(
        M(4 << 20, MEM, base + (8 << 20), 0)), 0), (R.NET_SET_MTU, P.U64.pack(1500), 0), (R.RESET_OWNER, b"", 0)]
    config = [(R.GET_CONFIG, P.config_payload(0, 12), 0), (R.SET_CONFIG, P.config_payload(10, 2), 0),
              (R.SET_STATUS, P.U64.pack(15), 0), (R.GET_STATUS, b"", 0),
              (R.SET_VRING_ENABLE, P.VRING_STATE.pack(1, 0), 0), (R.SET_VRING_KICK, P.U64.pack(1 | P.VRING_NOFD_MASK), 0)]
    os.makedirs(path, exist_ok=True)
    for name, msgs in (("setup", setup), ("setup_stop", setup + stop), ("owner", setup[:6]),
                       ("setup_config", setup + config)):
        with open(os.path.join(path, name), "wb") as f:
            f.write(seed(msgs))
    shrunk = bytearray(seed(setup + [(R.SET_VRING_KICK, P.U64.pack(1), 1), (R.GET_VRING_BASE, P.VRING_STATE.pack(1, 0), 0)]))
    shrunk[len(seed(setup))] |= 0x80                # shrink the memory before the second kick
    with open(os.path.join(path, "setup_shrunk"), "wb") as f:
        f.write(bytes(shrunk))


def main() -> None:
    if sys.argv[1:2] == ["--write-seeds"]:
        write_seeds(sys.argv[2])
        return
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
