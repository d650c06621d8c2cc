"""DPDK's testpmd as a vhost-user front end (its virtio-user PMD), a client nobody here wrote.

Runs without hugepages or PCI: memfd memory (``--no-huge``) that the back end maps. testpmd busy-polls,
so its forwarding lcore is pinned to one CPU. Its statistics are read from what it prints on SIGINT.
The tests and ``vnetbe bench --frontend testpmd`` use it.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import subprocess
import threading
import time

from ..errors import SetupError
from .needs import Need, missing, setup_command

PMD_DIRS = sorted(glob.glob("/usr/lib/x86_64-linux-gnu/dpdk/pmds-*"))
# The drivers vnetbe's DPDK runs load: virtio-user (the front end), DPDK's own vhost-user back end
# and tap (the peer in the testpmd bench), and the ring mempool every port allocates from.
PMDS = ("net_virtio", "net_vhost", "net_tap", "mempool_ring")
_STEP = "DPDK's testpmd with its virtio-user, vhost and tap drivers"


def _find_pmd(name: str) -> str | None:
    dirs = sorted(glob.glob("/usr/lib/x86_64-linux-gnu/dpdk/pmds-*"))
    found = sorted(glob.glob(os.path.join(dirs[-1], f"librte_{name}.so*")), key=len) if dirs else []
    return found[0] if found else None


NEEDS = (Need("testpmd", "DPDK's dpdk-testpmd not found", lambda: shutil.which("dpdk-testpmd"), "testpmd", _STEP,
              apt=("dpdk-dev",)),) + tuple(
    Need(f"librte_{name}", f"DPDK driver librte_{name} not found",
         lambda name=name: _find_pmd(name), "testpmd", _STEP, apt=(f"librte-{name.replace('_', '-')}23",))
    for name in PMDS)


def testpmd() -> str:
    absent = missing(NEEDS)
    if absent:
        raise SetupError(str(absent[0]))
    return shutil.which("dpdk-testpmd") or "dpdk-testpmd"


def pmd(name: str) -> str:
    found = _find_pmd(name)
    if found is None:
        raise SetupError(f"DPDK driver librte_{name} not found: install with `{setup_command('testpmd')}`")
    return found


def command(vdev: str, mode: str, *, pmds=("net_virtio",), prefix: str = "vnb", lcores: str = "0@0,1@1",
            extra: tuple[str, ...] = ()) -> list[str]:
    cmd = [testpmd(), "--no-huge", "-m", "512", "--no-pci", "--file-prefix", prefix, "--lcores", lcores,
           "-d", pmd("mempool_ring")]
    for p in pmds:
        cmd += ["-d", pmd(p)]
    cmd += [f"--vdev={vdev}", "--log-level=5", "--", "--total-num-mbufs=16384", f"--forward-mode={mode}",
            "--stats-period", "1", "-a", *extra]
    return cmd


_STAT = re.compile(r"Forward statistics for port 0.*?RX-packets:\s*(\d+).*?TX-packets:\s*(\d+)", re.S)


class Testpmd:
    def __init__(self, cmd: list[str]):
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self._lines)

    def wait_forwarding(self, timeout: float = 30.0) -> None:
        """Until testpmd says it forwards (frames before that may be counted as nobody's)."""
        deadline = time.monotonic() + timeout
        while "packet forwarding - ports=" not in self.output:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = " | ".join(self.output.strip().splitlines()[-3:])
                raise SetupError(f"testpmd did not start forwarding (exit {self.proc.poll()}): {tail}")
            time.sleep(0.05)
        if "packet forwarding - ports=0 " in self.output:
            raise SetupError("testpmd found no port to forward on: "
                             + " | ".join(ln for ln in self.output.splitlines() if "fail" in ln.lower())[:300])

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout: float = 20.0) -> tuple[int, int]:
        """SIGINT, then its final (RX-packets, TX-packets) of port 0."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._reader.join(5)
        found = _STAT.findall(self.output)
        if not found:
            tail = " | ".join(self.output.strip().splitlines()[-3:])
            raise SetupError(f"testpmd printed no port statistics (exit {self.proc.returncode}): {tail}")
        rx, tx = found[-1]
        return int(rx), int(tx)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._reader.join(5)
        self.proc.stdout.close()
