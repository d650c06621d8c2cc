"""The guest's initramfs: a newc archive the kernel can unpack, busybox in it, and virtio_net's
modules loaded by /init after everything they depend on."""
from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from vnetbe.tools import initramfs, lab


def _unpack(data: bytes) -> dict[str, bytes]:
    files, i = {}, 0
    while True:
        assert data[i:i + 6] == b"070701", f"bad newc magic at {i}"
        f = [int(data[i + 6 + 8 * k:i + 14 + 8 * k], 16) for k in range(13)]
        size, namesize = f[6], f[11]
        name = data[i + 110:i + 110 + namesize - 1].decode()
        i += 110 + namesize
        i += -i % 4
        if name == "TRAILER!!!":
            return files
        files[name] = data[i:i + size]
        i += size
        i += -i % 4


def test_init_loads_each_module_after_its_dependencies_and_runs_the_script(tmp_path):
    try:
        kernel = lab.find_kernel()
    except Exception as e:      # the test command installs the lab's kernel: its absence is a defect
        pytest.fail(f"no stock kernel: {e}")
    busybox = lab.find_busybox()
    assert busybox, "no static busybox: vnetbe setup tests installs busybox-static"
    initramfs.build(tmp_path / "i.gz", "echo hello-from-init", kernel=kernel, busybox=busybox)
    files = _unpack(gzip.decompress((tmp_path / "i.gz").read_bytes()))
    assert files["bin/busybox"] == Path(busybox).read_bytes()
    init = files["init"].decode()
    loads = [line.split("/")[-1] for line in init.splitlines() if line.startswith("insmod ")]
    names = [n.split("-", 1)[1].split(".ko")[0] for n in loads]
    assert names.index("virtio_ring") < names.index("virtio_net") and names.index("virtio") < names.index("virtio_pci")
    assert names.index("failover") < names.index("net_failover") < names.index("virtio_net")
    assert init.index("insmod") < init.index("echo hello-from-init") < init.index("poweroff -f")
    for n in loads:                          # every module loaded is in the archive
        assert any(f.endswith(n) for f in files)
