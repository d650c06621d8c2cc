"""A real libvirtd for one test, started and stopped by the test, touching nothing of the host's.

These machines have no systemd, and libvirtd's system instance reads its configuration from fixed
places (/etc/libvirt) and keeps its state under /run, /var/lib, /var/log and /var/cache. So the daemon
runs in a private mount namespace of its own (unshare -m) where those are tmpfs or the test's own
files: a qemu.conf that runs QEMU as root without a security driver, cgroups or namespaces (none of
which these machines provide) and writes QEMU's output itself (no virtlogd daemon), and a passwd/group that has the ``libvirt-qemu`` user Debian's build
resolves before it reads qemu.conf. virsh runs in the same namespace (nsenter). Everything goes with
the daemon: closing destroys every domain, stops libvirtd and the namespace disappears.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

QEMU_CONF = """user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
"""
START = """set -e
D="$1"
mount --bind "$D/passwd" /etc/passwd
mount --bind "$D/group" /etc/group
mount --bind "$D/etc" /etc/libvirt
for d in /run /var/lib /var/log /var/cache; do mount -t tmpfs -o mode=755 tmpfs "$d"; done
mkdir -p /run/libvirt /var/lib/libvirt /var/log/libvirt /var/cache/libvirt
exec libvirtd -f "$D/etc/libvirtd.conf"
"""


def available() -> str | None:
    """None if libvirtd and virsh are installed, else what is missing."""
    for tool in ("libvirtd", "virsh", "unshare", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} not found: run `vnetbe setup tests` (libvirt-daemon-driver-qemu, libvirt-clients)"
    return None


class Libvirtd:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="vnb-libvirt-"))
        (self.dir / "etc").mkdir()
        (self.dir / "etc" / "qemu.conf").write_text(QEMU_CONF)
        (self.dir / "etc" / "libvirtd.conf").write_text('log_outputs = "3:stderr"\n')
        passwd = Path("/etc/passwd").read_text()
        group = Path("/etc/group").read_text()
        if "\nlibvirt-qemu:" not in "\n" + passwd:
            passwd += "libvirt-qemu:x:64055:64055:libvirt qemu:/nonexistent:/usr/sbin/nologin\n"
        if "\nlibvirt-qemu:" not in "\n" + group:
            group += "libvirt-qemu:x:64055:\n"
        (self.dir / "passwd").write_text(passwd)
        (self.dir / "group").write_text(group)
        (self.dir / "start.sh").write_text(START)
        self.log = open(self.dir / "libvirtd.log", "w")
        self.proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", str(self.dir / "start.sh"),
                                      str(self.dir)], stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        try:
            self._wait_ready(30.0)
        except BaseException:
            self.close()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"libvirtd exited {self.proc.returncode}: {self.log_text()[-2000:]}")
            if self.virsh("version", check=False).returncode == 0:
                return
            time.sleep(0.3)
        raise RuntimeError(f"libvirtd did not answer within {timeout:.0f} s: {self.log_text()[-2000:]}")

    def log_text(self) -> str:
        return (self.dir / "libvirtd.log").read_text(errors="replace")

    def virsh(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        # libvirtd's pid is the shell's (exec): its mount namespace is the one it made.
        r = subprocess.run(["nsenter", f"--mount=/proc/{self.proc.pid}/ns/mnt", "virsh", "-q", "-c", "qemu:///system",
                            *args], capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"virsh {' '.join(args)} failed: {r.stderr.strip() or r.stdout.strip()}")
        return r

    def close(self) -> None:
        if self.proc.poll() is None:
            for name in self.virsh("list", "--all", "--name", check=False).stdout.split():
                self.virsh("destroy", name, check=False)
                self.virsh("undefine", name, check=False)
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
