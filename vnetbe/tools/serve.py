"""``vnetbe serve``: run vnetbe as the vhost-user back end of a VMM or of DPDK, in the foreground.

    vnetbe serve --socket /tmp/vnb.sock --parent vnb-p0 --mode bridge          # a macvtap it creates
    vnetbe serve --socket /tmp/vnb.sock --tap vnb-t0 --bridge vnb-br0          # a tap on a bridge
    vnetbe serve --socket /tmp/vnb.sock --macvtap macvtap0 --datapath vhost    # an existing macvtap
    vnetbe serve --socket /tmp/vnb.sock --libvirt iface.xml                    # one libvirt <interface>
    vnetbe serve --socket /tmp/qemu.sock --client ...                          # the front end listens
    vnetbe serve --fd 3 --parent vnb-p0                                        # a socket a manager made
    vnetbe serve --print-capabilities                                          # {"type": "net"}

One line on stdout for each event (listening, connected, disconnected, refused, fault); the counters
as one JSON line on SIGUSR1 and every --stats-interval seconds. SIGINT/SIGTERM end it, removing the
socket and the interfaces it created.
"""
from __future__ import annotations

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
    link.add_argument("--libvirt", metavar="FILE", help="one libvirt <interface> element")
    p.add_argument("--mode", choices=MODES, default="bridge", help="macvtap mode with --parent (default bridge)")
    p.add_argument("--mac", help="the guest's MAC: a macvtap created gets it (give the guest the same one); a tap "
                   "gets it with the first octet fe, as libvirt does")
    p.add_argument("--name", help="name of the macvtap --parent creates (default vnb-srv<pid>)")
    p.add_argument("--bridge", metavar="BR", help="with --tap: enslave the tap to this bridge")
    p.add_argument("--mtu", type=int, help="MTU of the link created")
    p.add_argument("--busyloop-us", type=int, default=0, help="busy-poll this long before sleeping")
    p.add_argument("--stats-interval", type=float, default=0, metavar="S", help="print counters every S s")
    p.set_defaults(func=main)
    return p


def add_parser(subparsers):
    return subcommand(subparsers, "serve", "vhost-user back end for QEMU, Cloud Hypervisor, DPDK", __doc__,
                      add_arguments)


def _say(kind: str, text: str) -> None:
    print(f"vnetbe serve: {kind}: {text}", flush=True)


def _make_link(args):
    """The link the options describe, and notes to print; created links are deleted by close()."""
    if os.geteuid() != 0:
        raise SetupError(NOT_ROOT_MSG)
    notes = []
    if args.libvirt:
        try:
            with open(args.libvirt, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise ConfigError(f"cannot read {args.libvirt}: {e.strerror}") from None
        spec = parse_interface(text, args.libvirt)
        notes = spec.notes
        args.datapath = args.datapath or spec.datapath
        if spec.kind == "macvtap":
            args.parent, args.mode, args.name = spec.parent, spec.mode, spec.name
        else:
            args.tap, args.bridge = spec.name or f"vnb-srv{os.getpid() % 100000}", spec.bridge
        args.mac = args.mac or spec.mac
    if args.macvtap:
        return Macvtap.attach(args.macvtap), notes
    if args.parent:
        name = args.name or f"vnb-srv{os.getpid() % 100000}"
        return Macvtap.create(name, args.parent, mode=args.mode, mac=args.mac, mtu=args.mtu), notes
    if args.bridge and not args.tap:
        raise ConfigError("--bridge goes with --tap NAME")
    # The tap's own MAC must not be the guest's: a bridge keeps its ports' MACs as local entries and
    # would deliver the guest's frames to itself. libvirt's rule: the guest's MAC with the first octet fe.
    tap_mac = "fe" + args.mac[2:] if args.mac else random_mac()
    try:
        tap = Tap.create(args.tap, mac=tap_mac, mtu=args.mtu)
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
    if args.socket is None and args.fd is None:
        raise ConfigError("vnetbe serve needs --socket PATH (or --socket-path PATH, or --fd FD)")
    if not (args.macvtap or args.parent or args.tap or args.libvirt):
        raise ConfigError("vnetbe serve needs a link: --parent DEV, --macvtap NAME, --tap NAME or --libvirt FILE")
    link, notes = _make_link(args)
    datapath = args.datapath or "user"
    try:
        if datapath == "vhost" and not os.path.exists(DEV_PATH):
            raise SetupError(f"{DEV_PATH} does not exist on this kernel, so --datapath vhost cannot run here: "
                             "use --datapath user, or run inside the kernel lab (vnetbe lab -- vnetbe serve ...)")
        for note in notes:
            _say("note", note)
        server = VhostUserServer(args.socket, link, datapath, client=args.client, busyloop_us=args.busyloop_us,
                                 mac=args.mac, on_event=_say, fd=args.fd)
        try:
            _run(server, args.stats_interval)
        finally:
            server.close()
    finally:
        link.close()
    return 0


def _run(server: VhostUserServer, interval: float) -> None:
    def stop(signum, _frame):
        _say("stopping", signal.Signals(signum).name)
        server.stop()

    def dump(*_):
        print(json.dumps({"stats": server.stats(), "time": time.time()}, default=str), flush=True)

    old = {s: signal.signal(s, h) for s, h in ((signal.SIGINT, stop), (signal.SIGTERM, stop), (signal.SIGUSR1, dump))}
    ticker = None
    if interval > 0:
        ticking = threading.Event()

        def tick():
            while not ticking.wait(interval):
                dump()
        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
    try:
        server.start()
        while not server.join(0.2):    # signals reach the main thread: it waits here, awake
            pass
    finally:
        if ticker is not None:
            ticking.set()
            ticker.join()
        for s, h in old.items():
            signal.signal(s, h)


if __name__ == "__main__":
    sys.exit(standalone(add_arguments, "serve", __doc__))
