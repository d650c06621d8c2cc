"""``vnetbe serve``: run vnetbe as the vhost-user back end of a VMM or of DPDK, in the foreground.

    vnetbe serve --socket /tmp/vnb.sock --parent vnb-p0 --mode bridge          # a macvtap it creates
    vnetbe serve --socket /tmp/vnb.sock --tap vnb-t0 --bridge vnb-br0          # a tap on a bridge
    vnetbe serve --socket /tmp/vnb.sock --macvtap macvtap0 --datapath vhost    # an existing macvtap
    vnetbe serve --socket /tmp/vnb.sock --libvirt iface.xml                    # one libvirt <interface>
    vnetbe serve --libvirt vhostuser.xml --parent vnb-p0                       # its socket from the XML
    vnetbe serve --device socket=/tmp/a.sock,parent=vnb-p0 \
                 --device socket=/tmp/b.sock,tap=vnb-t1,bridge=vnb-br0          # one process, two devices
    vnetbe serve --socket /tmp/qemu.sock --client ...                          # the front end listens
    vnetbe serve --fd 3 --parent vnb-p0                                        # a socket a manager made
    vnetbe serve --print-capabilities                                          # {"type": "net"}

One line on stdout for each event (listening, connected, disconnected, refused, fault), naming the
device's socket when there are several; the counters as one JSON line on SIGUSR1 and every
--stats-interval seconds (one per device). SIGINT/SIGTERM end it, removing the
socket and the interfaces it created.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time

from ..datapath import DATAPATHS
from ..datapath.vhost_ioctl import DEV_PATH
from ..errors import ConfigError, SetupError
from ..link import Macvtap, Tap
from ..link.base import NOT_ROOT_MSG, random_mac
from ..spec import MAX_QUEUE_PAIRS
from ..vhost_user import VhostUserServer
from .cliutil import standalone, subcommand
from .libvirt_xml import parse_interface

MODES = ("bridge", "vepa", "private", "passthru")


# What --print-capabilities says (the vhost-user spec's "Backend program conventions": a net back end
# has no optional features to list).
CAPABILITIES = {"type": "net"}


def add_arguments(p):
    where = p.add_mutually_exclusive_group()
    where.add_argument("--socket", "--socket-path", dest="socket", metavar="PATH", help="the vhost-user unix socket")
    where.add_argument("--fd", type=int, metavar="FD", help="a unix socket this process inherited as FD: a listening "
                       "one is served like --socket's; a connected one (a socketpair end) once")
    where.add_argument("--print-capabilities", action="store_true", help="print the back end's capabilities "
                       "as JSON (the vhost-user spec's backend program conventions) and exit")
    p.add_argument("--client", action="store_true", help="connect to a front end listening on PATH "
                   "(and again after it goes) instead of listening")
    p.add_argument("--datapath", choices=DATAPATHS, default=None, help="who moves the frames (default user; "
                   "--libvirt's <driver name='vhost'> says vhost)")
    link = p.add_mutually_exclusive_group()
    link.add_argument("--macvtap", metavar="NAME", help="attach an existing macvtap")
    link.add_argument("--parent", metavar="DEV", help="create a macvtap on DEV (deleted on exit)")
    link.add_argument("--tap", metavar="NAME", help="create a tap NAME, or attach it if it exists")
    p.add_argument("--libvirt", metavar="FILE", help="one libvirt <interface> element: type='direct' or 'bridge' "
                   "names the link; type='vhostuser' the socket (and which side listens), with the link given here")
    p.add_argument("--device", action="append", metavar="KEY=VALUE,...", help="one more device served by this "
                   "process, with the options above as keys (socket, parent, macvtap, tap, bridge, mode, mac, name, "
                   "mtu, datapath, libvirt, client=1); repeat it, one device each")
    p.add_argument("--mode", choices=MODES, default="bridge", help="macvtap mode with --parent (default bridge)")
    p.add_argument("--mac", help="the guest's MAC: a macvtap created gets it (give the guest the same one); a tap "
                   "gets it with the first octet fe, as libvirt does")
    p.add_argument("--name", help="name of the macvtap --parent creates (default vnb-srv<pid>)")
    p.add_argument("--bridge", metavar="BR", help="with --tap: enslave the tap to this bridge")
    p.add_argument("--mtu", type=int, help="MTU of the link created")
    p.add_argument("--queues", type=int, default=None, metavar="N", help="queue pairs of the device (default 1; "
                   f"1..{MAX_QUEUE_PAIRS}): front ends ask for up to N (QEMU queues=N, testpmd queues=N, Cloud "
                   "Hypervisor num_queues=2N); the link gets a queue per pair")
    p.add_argument("--busyloop-us", type=int, default=0, help="busy-poll this long before sleeping")
    p.add_argument("--stats-interval", type=float, default=0, metavar="S", help="print counters every S s")
    p.set_defaults(func=main)
    return p


def add_parser(subparsers):
    return subcommand(subparsers, "serve", "vhost-user back end for QEMU, Cloud Hypervisor, DPDK", __doc__,
                      add_arguments)


# One line at a time: each device's server thread and the stats thread report on their own. Signal
# handlers never write (see _run): a handler inside a write would re-enter stdout's buffer.
_OUT = threading.Lock()


def _line(text: str) -> None:
    with _OUT:
        sys.stdout.write(text + "\n")   # one write: print() writes the text and its newline apart
        sys.stdout.flush()


def _say(kind: str, text: str) -> None:
    _line(f"vnetbe serve: {kind}: {text}")


_DEVICE_KEYS = {"socket": str, "parent": str, "macvtap": str, "tap": str, "bridge": str, "mode": str, "mac": str,
                "name": str, "mtu": int, "datapath": str, "libvirt": str, "client": bool, "queues": int}


def parse_device(text: str, defaults) -> argparse.Namespace:
    """One --device KEY=VALUE,... as the namespace serve's own options would make."""
    dev = argparse.Namespace(**{k: None for k in _DEVICE_KEYS})
    dev.mode, dev.client, dev.fd = "bridge", False, None
    dev.busyloop_us, dev.stats_interval = defaults.busyloop_us, defaults.stats_interval
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in _DEVICE_KEYS:
            raise ConfigError(f"--device {text}: {item!r} is not one of {', '.join(f'{k}=...' for k in _DEVICE_KEYS)}")
        try:
            setattr(dev, key, value not in ("", "0", "no") if _DEVICE_KEYS[key] is bool else _DEVICE_KEYS[key](value))
        except ValueError:
            raise ConfigError(f"--device {text}: {key}={value!r} is not a number") from None
    if dev.mode not in MODES:
        raise ConfigError(f"--device {text}: mode={dev.mode}: one of {', '.join(MODES)}")
    if dev.datapath is not None and dev.datapath not in DATAPATHS:
        raise ConfigError(f"--device {text}: datapath={dev.datapath}: one of {', '.join(DATAPATHS)}")
    if sum(1 for k in ("parent", "macvtap", "tap") if getattr(dev, k)) > 1:
        raise ConfigError(f"--device {text}: one of parent=, macvtap= and tap=")
    return dev


def _read_libvirt(args) -> list[str]:
    """Fill args from --libvirt's <interface>; its notes."""
    try:
        with open(args.libvirt, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read {args.libvirt}: {e.strerror}") from None
    spec = parse_interface(text, args.libvirt)
    args.datapath = args.datapath or spec.datapath
    args.mac = args.mac or spec.mac
    if args.queues is not None and spec.queues != 1 and args.queues != spec.queues:
        raise ConfigError(f"{args.libvirt} says <driver queues='{spec.queues}'/>, the command line --queues {args.queues}")
    args.queues = args.queues or spec.queues
    given = args.parent or args.macvtap or args.tap
    if spec.kind == "vhostuser":
        if args.socket is not None and args.socket != spec.socket:
            raise ConfigError(f"{args.libvirt} says the socket is {spec.socket}, the command line {args.socket}")
        args.socket, args.client = spec.socket, spec.client
        if not given:
            raise ConfigError(f"{args.libvirt} is a type='vhostuser' interface: name the link vnetbe moves its "
                              "frames through too (--parent DEV, --macvtap NAME or --tap NAME)")
    elif given:
        raise ConfigError(f"{args.libvirt} names the link itself (type='{'direct' if spec.kind == 'macvtap' else 'bridge'}'): "
                          "leave out --parent, --macvtap and --tap")
    elif spec.kind == "macvtap":
        args.parent, args.mode, args.name = spec.parent, spec.mode, spec.name
    else:
        args.tap, args.bridge = spec.name or f"vnb-srv{os.getpid() % 100000}", spec.bridge
    return spec.notes


def _make_link(args):
    """The link the options describe, and notes to print; created links are deleted by close()."""
    if os.geteuid() != 0:
        raise SetupError(NOT_ROOT_MSG)
    notes = _read_libvirt(args) if args.libvirt else []
    queues = args.queues or 1
    if not 1 <= queues <= MAX_QUEUE_PAIRS:
        raise ConfigError(f"--queues {queues}: 1 .. {MAX_QUEUE_PAIRS} queue pairs")
    if args.macvtap:
        return Macvtap.attach(args.macvtap), notes
    if args.parent:
        name = args.name or f"vnb-srv{os.getpid() % 100000}{getattr(args, 'suffix', '')}"
        return Macvtap.create(name, args.parent, mode=args.mode, mac=args.mac, mtu=args.mtu), notes
    if args.bridge and not args.tap:
        raise ConfigError("--bridge goes with --tap NAME")
    # The tap's own MAC must not be the guest's: a bridge keeps its ports' MACs as local entries and
    # would deliver the guest's frames to itself. libvirt's rule: the guest's MAC with the first octet fe.
    tap_mac = "fe" + args.mac[2:] if args.mac else random_mac()
    try:
        tap = Tap.create(args.tap, mac=tap_mac, mtu=args.mtu, queues=queues)
    except SetupError as e:
        if "already in use" not in str(e):
            raise
        tap = Tap.attach(args.tap)
        notes.append(f"attached the existing tap {args.tap}")
    if args.bridge:
        try:
            tap.set_master(args.bridge)
        except BaseException:
            tap.close()
            raise
    return tap, notes


def main(args) -> int:
    if args.print_capabilities:
        print(json.dumps(CAPABILITIES), flush=True)
        return 0
    if args.device:
        if args.socket or args.fd is not None or args.macvtap or args.parent or args.tap or args.libvirt:
            raise ConfigError("with --device, give every device's options inside its --device (socket=..., "
                              "parent=..., ...), none outside")
        devices = [parse_device(d, args) for d in args.device]
        for i, dev in enumerate(devices):
            dev.suffix = f"d{i}"
    else:
        devices = [args]
    for dev in devices:
        if not (dev.macvtap or dev.parent or dev.tap or dev.libvirt):
            raise ConfigError("vnetbe serve needs a link: --parent DEV, --macvtap NAME, --tap NAME or --libvirt FILE")
    sockets = [d.socket for d in devices if d.socket]
    if len(set(sockets)) != len(sockets):
        raise ConfigError("two devices on one socket: give each --device its own socket=")
    links, servers = [], []
    try:
        for dev in devices:
            link, notes = _make_link(dev)
            links.append(link)
            if dev.socket is None and dev.fd is None:
                raise ConfigError("vnetbe serve needs --socket PATH (or --socket-path PATH, or --fd FD)")
            datapath = dev.datapath or "user"
            if datapath == "vhost" and not os.path.exists(DEV_PATH):
                raise SetupError(f"{DEV_PATH} does not exist on this kernel, so --datapath vhost cannot run here: "
                                 "use --datapath user, or run inside the kernel lab (vnetbe lab -- vnetbe serve ...)")
            say = _say if len(devices) == 1 else _sayer(os.path.basename(dev.socket or f"fd{dev.fd}"))
            for note in notes:
                say("note", note)
            servers.append(VhostUserServer(dev.socket, link, datapath, client=dev.client, busyloop_us=dev.busyloop_us,
                                           mac=dev.mac, on_event=say, fd=dev.fd, queues=dev.queues or 1))
        _run(servers, args.stats_interval)
    finally:
        for server in servers:
            server.close()
        for link in links:
            link.close()
    return 0


def _sayer(tag: str):
    return lambda kind, text: _say(kind, f"[{tag}] {text}")


def _run(servers: list[VhostUserServer], interval: float) -> None:
    def stop(signum, _frame):
        for server in servers:
            server.stop()
        wake(signum)   # "stopping" is said by the stats thread: no write from a handler (below)

    def dump() -> None:
        for server in servers:
            line = {"stats": server.stats(), "time": time.time()}
            if len(servers) > 1:
                line["socket"] = server.path
            _line(json.dumps(line, default=str))

    # Handlers never write: one that did could run inside another line's write (a write blocked on a
    # full pipe returns EINTR to a signal) and stdout's buffer refuses a reentrant write: serve died
    # of RuntimeError under a burst of SIGUSR1. They write a byte to a self-pipe (0: counters, else
    # the signal that stops serve) and the stats thread says it.
    wake_r, wake_w = os.pipe2(os.O_CLOEXEC)
    os.set_blocking(wake_w, False)

    def wake(what: int) -> None:
        try:
            os.write(wake_w, bytes([what]))
        except BlockingIOError:   # 64 KiB of requests already waiting: this one joins them
            pass

    def on_usr1(*_):
        wake(0)

    def dumper() -> None:
        while True:
            data = os.read(wake_r, 4096)
            if not data:   # the write end closed: serve is ending
                return
            for what in data:
                if what:
                    _say("stopping", signal.Signals(what).name)
                else:
                    dump()

    dumping = threading.Thread(target=dumper, name="vnetbe-serve-stats", daemon=True)
    dumping.start()
    old = {s: signal.signal(s, h) for s, h in ((signal.SIGINT, stop), (signal.SIGTERM, stop), (signal.SIGUSR1, on_usr1))}
    ticker = None
    if interval > 0:
        ticking = threading.Event()

        def tick():
            while not ticking.wait(interval):
                dump()
        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
    try:
        for server in servers:
            server.start()
        # Signals reach the main thread: it waits here, awake, until every device's server has ended.
        while not all(server.join(0.2 / len(servers)) for server in servers):
            pass
    finally:
        if ticker is not None:
            ticking.set()
            ticker.join()
        for s, h in old.items():
            signal.signal(s, h)
        os.close(wake_w)
        dumping.join(10)
        os.close(wake_r)


if __name__ == "__main__":
    sys.exit(standalone(add_arguments, "serve", __doc__))
