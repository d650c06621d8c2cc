"""A self-contained initramfs for a Linux guest that needs no file system from the host: the static
busybox, the kernel modules a virtio-net NIC needs (with their dependencies, in load order), and an
``/init`` shell script. Guests booted this way carry no 9p or virtiofs device (a virtme-ng guest has
its root over 9p), so a management layer such as libvirt can start them from a plain domain XML, and
QEMU can migrate them.

The archive is written here in the kernel's ``newc`` cpio format (gzip-compressed), so nothing beyond
Python, busybox-static and the kernel's modules is needed.
"""
from __future__ import annotations

import gzip
import io
import os
import stat
from pathlib import Path

from ..errors import SetupError

# What virtio_net needs on Debian's 6.1 kernel (all modules there), named by module.
NET_MODULES = ("virtio_pci", "virtio_net")


def _modules_dir(kernel: Path) -> Path:
    release = kernel.name.removeprefix("vmlinuz-")
    d = Path("/lib/modules") / release
    if not (d / "modules.dep").exists():
        raise SetupError(f"no modules.dep for {release} under /lib/modules: reinstall the kernel package")
    return d


def module_load_order(moddir: Path, wanted: tuple[str, ...]) -> list[str]:
    """Paths (relative to moddir) of the wanted modules and their dependencies, dependencies first."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        mod, _, rest = line.partition(":")
        deps[mod] = rest.split()
        by_name[Path(mod).name.split(".ko")[0].replace("-", "_")] = mod
    order: list[str] = []

    def visit(mod: str) -> None:
        if mod in order:
            return
        for dep in deps.get(mod, []):
            visit(dep)
        order.append(mod)
    for name in wanted:
        if name not in by_name:
            raise SetupError(f"kernel module {name} not found in {moddir}/modules.dep")
        visit(by_name[name])
    return order


class _Cpio:
    """newc cpio writer (what the kernel unpacks as an initramfs)."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"") -> None:
        nb = name.encode() + b"\0"
        hdr = "070701" + "".join(f"{v:08x}" for v in (
            self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nb), 0))
        self.ino += 1
        self.buf.write(hdr.encode() + nb)
        self.buf.write(b"\0" * (-(110 + len(nb)) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-len(data) % 4))

    def dir(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def close(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self.buf.getvalue()


def build(path: str | os.PathLike, init_script: str, *, kernel: Path, busybox: str,
          modules: tuple[str, ...] = NET_MODULES, files: dict[str, bytes | tuple[bytes, int]] | None = None) -> Path:
    """Write an initramfs for ``kernel`` (its modules come from /lib/modules) to ``path``: the static
    ``busybox`` as /bin/busybox (its applets linked by /init), the modules (loaded by /init before the
    script, in dependency order) and ``init_script`` as the rest of /init, run by busybox's sh.
    ``files``: more files to carry (path -> content, or (content, mode) for a program). The lab's find_kernel and find_busybox give
    what `vnetbe setup lab` installed. Returns the kernel."""
    moddir = _modules_dir(kernel)
    order = module_load_order(moddir, modules)
    c = _Cpio()
    for d in ("bin", "dev", "proc", "sys", "tmp", "lib", "lib/modules"):
        c.dir(d)
    c.file("bin/busybox", Path(busybox).read_bytes(), 0o755)
    c.symlink("bin/sh", "busybox")
    loads = []
    for i, mod in enumerate(order):
        name = f"lib/modules/{i:02d}-{Path(mod).name}"
        data = (moddir / mod).read_bytes()
        if mod.endswith(".xz") or mod.endswith(".zst"):
            raise SetupError(f"{mod} is compressed; this initramfs builder takes plain .ko modules")
        c.file(name, data)
        loads.append(f"insmod /{name}")
    for name, data in (files or {}).items():
        data, mode = data if isinstance(data, tuple) else (data, 0o644)
        c.file(name.lstrip("/"), data, mode)
    init = "\n".join([
        "#!/bin/sh",
        "/bin/busybox --install -s /bin",
        "mount -t proc proc /proc",
        "mount -t sysfs sysfs /sys",
        "mount -t devtmpfs devtmpfs /dev",
        *loads,
        init_script,
        "poweroff -f",
    ]) + "\n"
    c.file("init", init.encode(), 0o755)
    Path(path).write_bytes(gzip.compress(c.close(), compresslevel=1))
    return kernel
