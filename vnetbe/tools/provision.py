"""``vnetbe setup [TARGET ...]``: install what a vnetbe command needs beyond ``pip install .``.

Targets (each installs what the command it names needs, and skips what is already here):

    bench     the kernel lab when this host has no /dev/vhost-net (nothing otherwise)
    lab       QEMU, a stock kernel with vhost_net as a module, a static busybox, virtme-ng
    qemu      the lab, plus ping and ethtool for the Linux guest (bench --frontend qemu)
    testpmd   DPDK's testpmd and its virtio-user, vhost, tap and ring-mempool drivers
    fuzz      clang 14 with its libFuzzer and sanitizer runtimes (csrc/fuzz/run.sh)
    tests     all of the above, sudo (the README's commands run verbatim in the tests), and libvirt's
              daemon and virsh (the libvirt test starts its own libvirtd; no service is enabled)

System packages come from Debian's registry through apt-get (root needed), pip requirements go into
this interpreter. One progress line per step on stderr; a failure is one line saying what to do.
``--check`` only reports. The test command (tests/run.sh) calls ``vnetbe setup tests``.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import time
from typing import Callable, Iterable

from .. import VHOST_NET_PATH
from ..errors import ConfigError, SetupError
from . import dpdk, lab, linux_guest, migration
from .cliutil import standalone, subcommand
from .needs import Need, missing, setup_command

_FUZZ_STEP = "clang 14 with its libFuzzer and sanitizer runtimes for the fuzz targets"
_FUZZ = (
    Need("clang", "clang-14 not found", lambda: shutil.which("clang-14"), "fuzz", _FUZZ_STEP, apt=("clang-14",)),
    Need("libfuzzer", "clang 14's libFuzzer runtime not found",
         lambda: next(iter(sorted(glob.glob("/usr/lib/llvm-14/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a"))),
                      None),
         "fuzz", _FUZZ_STEP, apt=("libclang-rt-14-dev",)),
)
_SUDO = (Need("sudo", "sudo not found", lambda: shutil.which("sudo"), "tests",
              "sudo, which the README's commands start with", apt=("sudo",)),)
# libvirt's daemon for tests/e2e/test_libvirt.py, which starts it itself (no service is enabled here).
_LIBVIRT_STEP = "libvirt's daemon with its QEMU driver, and virsh, for the libvirt test"
_LIBVIRT = (
    Need("libvirtd", "libvirtd not found", lambda: shutil.which("libvirtd"), "tests", _LIBVIRT_STEP,
         apt=("libvirt-daemon", "libvirt-daemon-driver-qemu"), recommends=False),
    Need("virsh", "virsh not found", lambda: shutil.which("virsh"), "tests", _LIBVIRT_STEP,
         apt=("libvirt-clients",), recommends=False),
)


def _bench() -> tuple[Need, ...]:
    # The bench runs vhost in the lab only where the host cannot: a host with vhost-net needs nothing.
    return () if os.path.exists(VHOST_NET_PATH) else lab.NEEDS


TARGETS: dict[str, Callable[[], tuple[Need, ...]]] = {
    "bench": _bench,
    "lab": lambda: lab.NEEDS,
    "qemu": lambda: lab.NEEDS + linux_guest.NEEDS,
    "testpmd": lambda: dpdk.NEEDS,
    "migration": lambda: lab.NEEDS + dpdk.NEEDS + migration.NEEDS,
    "fuzz": lambda: _FUZZ,
    "tests": lambda: lab.NEEDS + linux_guest.NEEDS + dpdk.NEEDS + migration.NEEDS + _FUZZ + _SUDO + _LIBVIRT,
}
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}


def needs_of(targets: Iterable[str]) -> list[Need]:
    """Every need of these targets, once each, in install order."""
    out: dict[str, Need] = {}
    for t in targets:
        if t not in TARGETS:
            raise ConfigError(f"unknown setup target {t!r}: choose from {', '.join(TARGETS)}")
        for n in TARGETS[t]():
            out.setdefault(n.component, n)
    return list(out.values())


def require(target: str, doing: str, otherwise: str = "") -> None:
    """Raise a one-line SetupError naming the first missing need of ``target`` and how to install it."""
    absent = missing(needs_of([target]))
    if absent:
        raise SetupError(f"{doing}: {absent[0].missing}; run `{setup_command(target)}`"
                         + (f" ({otherwise})" if otherwise else ""))


def _last_line(r: subprocess.CompletedProcess) -> str:
    lines = [ln.strip() for ln in ((r.stderr or "") + "\n" + (r.stdout or "")).splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("E:")]
    return (errors or lines or [f"exit {r.returncode}"])[-1]


class Installer:
    """Installs missing needs step by step; ``run`` is subprocess.run (a test passes a fake)."""

    def __init__(self, run=subprocess.run, out=None, as_root: bool | None = None):
        self.run = run
        self.out = out if out is not None else sys.stderr
        self.as_root = os.geteuid() == 0 if as_root is None else as_root

    def _say(self, text: str) -> None:
        print(f"vnetbe setup: {text}", file=self.out, flush=True)

    def _step(self, what: str, argv: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
        self._say(f"{what} ...")
        t0 = time.monotonic()
        r = self.run(argv, capture_output=True, text=True, env=None if env is None else {**os.environ, **env})
        if r.returncode == 0:
            self._say(f"{what}: done in {time.monotonic() - t0:.0f} s")
        return r

    def install(self, targets: list[str]) -> int:
        needs = needs_of(targets)
        absent = missing(needs)
        names = " ".join(targets)
        if not absent:
            self._say(f"everything {names} needs is here")
            return 0
        apt_needs = [n for n in absent if n.apt]
        if apt_needs:
            self._apt(apt_needs, targets)
        pip_needs = [n for n in absent if n.pip]
        for step in dict.fromkeys(n.step for n in pip_needs):
            reqs = [r for n in pip_needs if n.step == step for r in n.pip]
            r = self._step(f"installing {step} (pip: {' '.join(reqs)})",
                           [sys.executable, "-m", "pip", "install", "-q", "--root-user-action=ignore", *reqs])
            if r.returncode != 0:
                raise SetupError(f"pip could not install {' '.join(reqs)} ({_last_line(r)}); PyPI must be "
                                 "reachable (a proxy goes in PIP_INDEX_URL or pip.conf)")
        still = missing(needs)
        if still:
            n = still[0]
            raise SetupError(f"{n.missing} even after installing {' '.join(n.apt or n.pip)}; "
                             f"`vnetbe setup --check {names}` shows what is here")
        self._say(f"everything {names} needs is installed")
        return 0

    def _apt(self, apt_needs: list[Need], targets: list[str]) -> None:
        pkgs = " ".join(dict.fromkeys(p for n in apt_needs for p in n.apt))
        if shutil.which("apt-get") is None:
            raise SetupError(f"{apt_needs[0].missing} and this machine has no apt-get (vnetbe setup knows "
                             f"Debian's packages): install by hand what provides {pkgs}")
        if not self.as_root:
            raise SetupError(f"{apt_needs[0].missing}; installing it with apt-get needs root: run "
                             f"`sudo vnetbe setup {' '.join(targets)}`")
        r = self._step("updating Debian's package lists (apt-get update)", ["apt-get", "update", "-qq"], APT_ENV)
        # apt-get update exits 0 when a source is unreachable, warning only: "W: Failed to fetch".
        if r.returncode != 0 or "Failed to fetch" in (r.stderr or "") + (r.stdout or ""):
            raise SetupError(f"cannot reach Debian's package registry ({_last_line(r)}): check the network "
                             f"or apt's proxy, then run `{setup_command(' '.join(targets))}` again")
        for step in dict.fromkeys(n.step for n in apt_needs):
            step_pkgs = list(dict.fromkeys(p for n in apt_needs if n.step == step for p in n.apt))
            lean = [] if all(n.recommends for n in apt_needs if n.step == step) else ["--no-install-recommends"]
            r = self._step(f"installing {step} (apt: {' '.join(step_pkgs)})",
                           ["apt-get", "install", "-y", "-qq", *lean, *step_pkgs], APT_ENV)
            if r.returncode != 0:
                raise SetupError(f"apt-get install {' '.join(step_pkgs)} failed: {_last_line(r)}")


def report(targets: list[str], out=None) -> int:
    """--check: one line per need, ok or MISSING; 1 if anything is missing."""
    out = out if out is not None else sys.stdout
    absent = []
    for n in needs_of(targets):
        found = n.probe()
        absent += [] if found else [n]
        print(f"{'ok' if found else 'MISSING':8} {n.component:20} {found or n.missing}", file=out)
    if absent:
        print(f"install: {setup_command(' '.join(targets))}", file=out)
    return 1 if absent else 0


def _add_arguments(p):
    p.add_argument("targets", nargs="*", metavar="TARGET", default=["bench"],
                   help=f"what to set up: {', '.join(TARGETS)} (default bench)")
    p.add_argument("--check", action="store_true", help="only say what is here and what is missing")
    p.set_defaults(func=main)
    return p


def add_parser(subparsers):
    """Register the `setup` subcommand on the main CLI's subparsers."""
    return subcommand(subparsers, "setup", "install what a command needs (QEMU, a kernel, DPDK, ...)",
                      __doc__, _add_arguments)


def main(args) -> int:
    if args.check:
        return report(args.targets)
    return Installer().install(args.targets)


if __name__ == "__main__":
    sys.exit(standalone(_add_arguments, "provision", __doc__))
