"""VhostUserServer: a vhost-user back end on a unix socket, serving one front end at a time.

    with vnetbe.Tap.create("vnb-t0") as link, \\
         vnetbe.VhostUserServer("/tmp/vnb.sock", link, datapath="user") as srv:
        srv.start()          # a thread; or srv.run() in the caller's thread
        ...                  # QEMU: -chardev socket,id=c,path=/tmp/vnb.sock -netdev vhost-user,chardev=c,...

Server mode listens (QEMU, DPDK connect); client mode (``client=True``) connects to a front end that
listens, and connects again after it goes. Each connection gets a fresh Session (a fresh device); when
it ends, however it ends, the session's device, mappings and fds are released before the next one.
A message the session refuses is logged in one line naming it and its field, and counted; under
REPLY_ACK a refused request that asked for a reply is answered non-zero and the connection goes on,
otherwise the connection closes.
"""
from __future__ import annotations

import logging
import os
import select
import socket
import stat
import struct
import threading
import time

from ..datapath import DATAPATHS
from ..errors import ConfigError, ProtocolError, SetupError, VnetError
from . import channel
from .session import Session

log = logging.getLogger("vnetbe.vhost_user")

RECONNECT_INTERVAL = 0.5


def _peer_pid(sock: socket.socket) -> int:
    try:
        cred = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return struct.unpack("3i", cred)[0]
    except OSError:
        return 0


class VhostUserServer:
    """Serve ``link`` to vhost-user front ends at ``path``, on ``datapath`` (user or vhost).

    ``on_event(kind, text)`` hears "listening", "connected", "disconnected", "refused" and "fault"
    (the CLI prints them). ``stats()`` gives the current device's counters and the server's own."""

    def __init__(self, path: str | None, link, datapath: str = "user", *, client: bool = False, busyloop_us: int = 0,
                 mac: str | None = None, on_event=None, fd: int | None = None, queues: int = 1):
        """``fd`` instead of ``path``: a socket a manager made (the spec's "Backend program conventions",
        ``--fd``): a listening one is served as the path's would be; a connected one (a socketpair end)
        is served once, and the server stops when it ends. The server owns it from here."""
        if datapath not in DATAPATHS:
            raise ConfigError(f"unknown datapath {datapath!r}; choose one of {', '.join(DATAPATHS)}")
        if (path is None) == (fd is None):
            raise ConfigError("give the vhost-user server a socket path or a socket fd, not both")
        if client and fd is not None:
            raise ConfigError("a socket fd is served as it is: client mode connects to a path")
        self.path, self.link, self.datapath, self.client = path, link, datapath, client
        self.busyloop_us, self.mac, self.queues = busyloop_us, mac, queues
        self.on_event = on_event or (lambda kind, text: log.info("%s: %s", kind, text))
        self.session: Session | None = None
        self._last_device: dict | None = None
        self.counters = {"connections": 0, "refused_messages": 0, "refused_connections": 0, "faults": 0,
                         "memory_gone": 0}
        self._lock = threading.RLock()
        # stop() sets the event and makes the pipe readable for good: every wait below wakes on it.
        self._stop = threading.Event()
        self._stop_r, self._stop_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._listener: socket.socket | None = None
        self._conn: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.closed = False
        self._given: socket.socket | None = None     # a connected socket handed over with fd
        self._unlink = path is not None and not client
        if fd is not None:
            sock = self._adopt(fd)
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                self._listener = sock
            else:
                self._given = sock
            self.path = f"fd {fd}"
        elif not client:
            self._listener = self._listen(path)

    @staticmethod
    def _adopt(fd: int) -> socket.socket:
        try:
            sock = socket.socket(fileno=fd)
        except OSError as e:
            raise SetupError(f"--fd {fd}: not an open socket ({e.strerror})") from None
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            sock.detach()
            raise SetupError(f"--fd {fd}: not a unix stream socket")
        os.set_inheritable(fd, False)
        return sock

    # --- sockets ---
    @staticmethod
    def _listen(path: str) -> socket.socket:
        if os.path.lexists(path):
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                raise ConfigError(f"{path} exists and is not a socket: choose another --socket path")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                probe.connect(path)
            except (ConnectionRefusedError, FileNotFoundError):
                os.unlink(path)     # a socket nobody listens on: left by a server that died
            else:
                raise SetupError(f"{path}: another back end is listening there; stop it or choose another path")
            finally:
                probe.close()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            s.bind(path)
            s.listen(4)
        except OSError as e:
            s.close()
            raise SetupError(f"cannot listen on {path}: {e.strerror}") from None
        return s

    def _connect(self) -> socket.socket | None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            s.connect(self.path)
            return s
        except OSError:
            s.close()
            return None

    # --- running ---
    def start(self) -> "VhostUserServer":
        """Serve in a thread of this process (a VMM in Python); close() stops it."""
        self._thread = threading.Thread(target=self.run, name="vnetbe-vhost-user", daemon=True)
        self._thread.start()
        return self

    def run(self) -> None:
        """Serve until stop() (or close()); one front end at a time."""
        self.on_event("listening", f"{'connecting to' if self.client else 'listening on'} {self.path} "
                                   f"({self.datapath} datapath, link {self.link.name}, mac {self.mac or self.link.mac})")
        while not self._stop.is_set():
            conn = self._next_connection()
            if conn is None:
                continue
            try:
                self._serve(conn)
            finally:
                self._end_connection()

    def _next_connection(self) -> socket.socket | None:
        if self._listener is None and not self.client:
            # The manager's connected socket: served once; when it is over, so is the server.
            conn, self._given = self._given, None
            if conn is None:
                self.stop()
            return conn
        if self.client:
            conn = self._connect()
            if conn is None:
                select.select([self._stop_r], [], [], RECONNECT_INTERVAL)
            return conn
        r, _, _ = select.select([self._listener, self._stop_r], [], [])
        if self._stop_r in r:
            return None
        conn, _ = self._listener.accept()
        return conn

    def _serve(self, conn: socket.socket) -> None:
        with self._lock:
            self._conn = conn
            self.counters["connections"] += 1
            self.session = Session(self.link, self.datapath, busyloop_us=self.busyloop_us, mac=self.mac,
                                   queues=self.queues)
        self.on_event("connected", f"front end pid {_peer_pid(conn)} on {self.path}")
        poller = select.poll()
        poller.register(conn, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        poller.register(self.session.dev.err_fd, select.POLLIN)
        if self._listener is not None:
            poller.register(self._listener, select.POLLIN)
        while True:
            ready = dict(poller.poll())
            if self._stop_r in ready:
                return
            if self.session.dev.err_fd in ready:
                with self._lock:
                    for line in self.session.signal_faults():
                        self.counters["faults"] += 1
                        self.on_event("fault", line)
                    poller.unregister(self.session.dev.err_fd)   # reported once; the ring stays stopped
                    if self.session.memory_gone:
                        # The front end shrank the memory it shared: only its own connection ends.
                        self.counters["memory_gone"] += 1
                        self.on_event("refused", "the front end took its guest memory away (a shrunk memory "
                                                 "file); closing the connection")
                        return
            if conn.fileno() in ready:
                if not self._one_message(conn):
                    return
            # Only once this connection has no input left: a front end that reconnects the moment its
            # old connection hangs up arrives while the hang-up is still unread, and must be served
            # next, not refused as a second front end.
            if self._listener is not None and self._listener.fileno() in ready and conn.fileno() not in ready:
                self._refuse_second()

    def _one_message(self, conn: socket.socket) -> bool:
        """Handle one request; False when the connection is over (hang-up or a refused message)."""
        try:
            got = channel.recv_message(conn)
            if got is None:
                return False
            msg, fds = got
            try:
                with self._lock:
                    out = self.session.handle(msg, fds)
            except ProtocolError as e:
                e.framed = (int(msg.request), msg.flags)
                raise
            if out is not None:
                channel.send_message(conn, out)
            return True
        except ProtocolError as e:
            self.counters["refused_messages"] += 1
            nack = self.session.nack(*e.framed) if e.framed is not None else None
            if nack is None:
                self.on_event("refused", f"{e}; closing the connection")
                return False
            # REPLY_ACK: the front end hears the failure and decides; the connection goes on.
            self.on_event("refused", f"{e}; answered with a non-zero REPLY_ACK")
            try:
                channel.send_message(conn, nack)
            except OSError as err:
                self.on_event("disconnected", f"socket error: {err.strerror or err}")
                return False
            return True
        except VnetError as e:
            self.on_event("refused", f"vhost-user: {e}; closing the connection")
            return False
        except OSError as e:
            self.on_event("disconnected", f"socket error: {e.strerror or e}")
            return False

    def _refuse_second(self) -> None:
        extra, _ = self._listener.accept()
        self.counters["refused_connections"] += 1
        self.on_event("refused", f"a second front end (pid {_peer_pid(extra)}) while one is connected")
        extra.close()

    def _end_connection(self) -> None:
        with self._lock:
            session, conn = self.session, self._conn
            self.session, self._conn = None, None
            if session is not None:
                stats = session.stats()
                self._last_device = stats
                session.close()
                self.on_event("disconnected", f"front end gone after {session.messages} messages; "
                                              f"tx {stats.get('tx_frames', 0)} rx {stats.get('rx_frames', 0)} frames")
            if conn is not None:
                conn.close()

    # --- control, from any thread ---
    def switch_datapath(self, name: str) -> None:
        """Move the connected front end's rings to another datapath, live (or set the next one's)."""
        if name not in DATAPATHS:
            raise ConfigError(f"unknown datapath {name!r}; choose one of {', '.join(DATAPATHS)}")
        with self._lock:
            if self.session is not None:
                self.session.dev.switch_datapath(name)
            self.datapath = name

    def stats(self) -> dict:
        with self._lock:
            out = dict(self.counters)
            out["connected"] = self.session is not None
            out["datapath"] = self.datapath
            if self.session is not None:
                out["device"] = self.session.stats()
            elif self._last_device is not None:
                out["last_device"] = self._last_device   # the counters the last front end left
            return out

    def wait_connected(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self.session is not None:
                    return True
            time.sleep(0.01)
        return False

    def join(self, timeout: float | None = None) -> bool:
        """Wait for start()'s thread to end (after stop()); True once it has."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            os.write(self._stop_w, b"x")

    def close(self) -> None:
        """Stop serving, end the connection (its device, mappings, fds), remove the socket file."""
        if self.closed:
            return
        self.stop()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._end_connection()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            if self._unlink:
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
        if self._given is not None:
            self._given.close()
            self._given = None
        os.close(self._stop_r)
        os.close(self._stop_w)
        self.closed = True

    def __enter__(self) -> "VhostUserServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
