"""libvirt managing a guest whose NIC is ``vnetbe serve``, as libvirt's users configure it: a real
libvirtd (started by the test in a mount namespace of its own, tests/vnbtest/libvirtd.py) defines and
starts a QEMU (software emulation) domain with ``<interface type='vhostuser'>``; the same
``<interface>`` element, given to ``vnetbe serve --libvirt``, tells vnetbe its socket and MAC. The
guest (a self-contained initramfs: busybox, virtio_net) pings the peer and moves data each way over
TCP, sha256-checked at both ends; ``virsh destroy`` and a second ``virsh start`` are served by the same
running server."""
from __future__ import annotations

import hashlib
import json
import random
import re
import subprocess
import sys
import time

import pytest

from test_vhost_user_clients import Serve
from vnbtest.libvirtd import Libvirtd, available
from vnetbe.tools import initramfs, lab
from vnetbe.tools.topology import Topology

pytestmark = [pytest.mark.root, pytest.mark.lab]

GUEST_IP, PEER_IP, PORT = "10.79.0.2", "10.79.0.1", 5301
MAC = "52:54:00:79:00:02"
KIB = 4096                          # each way, per boot

GUEST_INIT = f"""
IF=""
for d in /sys/class/net/*; do
  [ "$(basename "$(readlink "$d/device/driver" 2>/dev/null)")" = virtio_net ] && IF=$(basename "$d")
done
echo "GUEST ifname $IF"
ip link set lo up
ip link set "$IF" up
ip addr add {GUEST_IP}/24 dev "$IF"
if ping -c 3 -W 5 {PEER_IP} >/dev/null; then echo "GUEST ping ok"; else echo "GUEST ping failed"; fi
dd if=/dev/urandom of=/tmp/out bs=1024 count={KIB} 2>/dev/null
echo "GUEST sent_sha $(sha256sum /tmp/out | cut -d' ' -f1)"
nc {PEER_IP} {PORT} < /tmp/out
nc {PEER_IP} {PORT + 1} < /dev/null > /tmp/in
echo "GUEST recv_sha $(sha256sum /tmp/in | cut -d' ' -f1) $(wc -c < /tmp/in)"
echo "GUEST done"
"""

# The peer: takes exactly what the guest sends on PORT, then sends its own data on PORT + 1.
PEER = r'''
import hashlib, json, random, socket, sys
ip, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
a = socket.create_server((ip, port)); b = socket.create_server((ip, port + 1))
print("listening", flush=True)
c, _ = a.accept(); got = bytearray()
while len(got) < n:
    chunk = c.recv(1 << 16)
    if not chunk:
        break
    got += chunk
c.close()
data = random.Random(2).randbytes(n)
c, _ = b.accept(); c.sendall(data); c.close()
print("PEER " + json.dumps({"recv_sha": hashlib.sha256(got).hexdigest(), "recv_bytes": len(got),
                            "sent_sha": hashlib.sha256(data).hexdigest()}), flush=True)
'''

INTERFACE = """<interface type='vhostuser'>
  <mac address='{mac}'/>
  <source type='unix' path='{sock}' mode='client'/>
  <model type='virtio'/>
</interface>"""

# QEMU 7.2 under TCG needs vectors=0 for a vhost-user NIC (docs/vhost-user.md); the memory must be a
# shared fd vnetbe can map.
DOMAIN = """<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>vnblvguest</name>
  <memory unit='MiB'>256</memory>
  <memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 panic=-1 quiet</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    {interface}
    <serial type='file'><source path='{console}'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-global'/>
    <qemu:arg value='virtio-net-pci.vectors=0'/>
  </qemu:commandline>
</domain>"""


def _boot(lv: Libvirtd, topo: Topology, console, timeout: float = 240) -> dict:
    """Start the defined domain with a fresh peer; the guest's GUEST lines and the peer's result."""
    peer = subprocess.Popen(["ip", "netns", "exec", topo.netns, sys.executable, "-c", PEER, PEER_IP, str(PORT),
                             str(KIB * 1024)], stdout=subprocess.PIPE, text=True)
    try:
        assert peer.stdout.readline().strip() == "listening"
        console.write_text("")
        lv.virsh("start", "vnblvguest")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and "GUEST done" not in console.read_text(errors="replace"):
            if "shut off" in lv.virsh("domstate", "vnblvguest", check=False).stdout:
                break
            time.sleep(0.5)
        text = console.read_text(errors="replace")
        assert "GUEST done" in text, text[-3000:]
        peer_out = json.loads(peer.communicate(timeout=60)[0].split("PEER ", 1)[1])
    finally:
        if peer.poll() is None:
            peer.kill()
            peer.communicate()
    guest = dict(re.findall(r"^GUEST (\S+) ?(.*?)\r?$", text, re.M))
    return {"guest": guest, "peer": peer_out}


def test_libvirt_starts_a_guest_whose_vhostuser_interface_vnetbe_serves_twice(tmp_path):
    missing = available()
    if missing:
        pytest.fail(missing)    # the test command installs libvirt: its absence is a defect, not a skip
    topo = Topology("lv", mtu=1500)
    sock = str(tmp_path / "vu.sock")
    iface = INTERFACE.format(mac=MAC, sock=sock)
    (tmp_path / "iface.xml").write_text(iface)
    busybox = lab.find_busybox()
    assert busybox, "no static busybox: vnetbe setup tests installs busybox-static"
    kernel = initramfs.build(tmp_path / "initrd.gz", GUEST_INIT, kernel=lab.find_kernel(), busybox=busybox)
    console = tmp_path / "console.log"
    (tmp_path / "domain.xml").write_text(DOMAIN.format(kernel=kernel, initrd=tmp_path / "initrd.gz",
                                                      interface=iface, console=console))
    serve = lv = None
    try:
        for cmd in (["addr", "add", f"{PEER_IP}/24", "dev", topo.peer], ["link", "set", topo.peer, "up"]):
            subprocess.run(["ip", "-n", topo.netns, *cmd], check=True)
        serve = Serve("--libvirt", str(tmp_path / "iface.xml"), "--parent", topo.parent, "--name", "vnblvm0")
        serve.wait_line("listening on")
        lv = Libvirtd()
        lv.virsh("define", str(tmp_path / "domain.xml"))
        runs = [_boot(lv, topo, console)]
        lv.virsh("destroy", "vnblvguest", check=False)        # already off after poweroff: harmless
        runs.append(_boot(lv, topo, console))
    finally:
        if lv is not None:
            lv.close()
        if serve is not None:
            serve.stop()
        topo.close()
    expect_from_peer = hashlib.sha256(random.Random(2).randbytes(KIB * 1024)).hexdigest()
    for run in runs:
        g, p = run["guest"], run["peer"]
        assert g.get("ping") == "ok", g
        assert g["sent_sha"] == p["recv_sha"] and p["recv_bytes"] == KIB * 1024, run
        assert g["recv_sha"].split() == [expect_from_peer, str(KIB * 1024)], run
    assert sum(line.startswith("vnetbe serve: connected:") for line in serve.lines) == 2, "".join(serve.lines)
    assert not any(line.startswith("vnetbe serve: refused") for line in serve.lines), serve.lines
