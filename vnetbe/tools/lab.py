"""The kernel lab: run a command as root inside a throwaway VM whose stock kernel has vhost_net.

The host kernel here has no vhost-net and cannot load modules, so anything that needs
``/dev/vhost-net`` runs under virtme-ng (``vng``) booting a distribution kernel (Debian's
``linux-image-amd64``) with the host's file system as its root: read-only, with writable overlays
over /tmp, /etc, /usr, /var, ... and over $HOME (all writes are discarded when the VM stops).
The project tree stays read-only inside, so build the cffi extension on the host first.

    vnetbe lab --check                       # what is present / missing, with install commands
    vnetbe lab -- python3 -m pytest -m vhost tests/ -q
    python3 -m vnetbe.tools.lab -- sh -c 'exit 7'  # same, without the main CLI; exits 7
    tests/lab/run_in_lab.sh [PYTEST ARGS]    # the test entry: one boot, pytest's exit status

``run()`` returns the command's exit status; when the lab itself fails (no vng, kernel panic,
modprobe failure, timeout) it raises LabError and the CLI exits with LAB_FAILED (125) so a caller
can tell "tests failed" from "no lab". Inside the lab the command runs in the host's working
directory with the host's environment, and VNETBE_LAB holds the lab kernel's release (``in_lab()``).

How the pieces talk: a per-run state directory under the host's /tmp is shared read-write with the
guest (``--rwdir``). The host writes ``enter.sh`` (the guest-side script) and ``env.sh`` there; the
guest writes ``started``, ``failed`` (one line) or ``status`` (the exit code) back, and QEMU writes
the guest's kernel console to ``console.log``. That, not vng's own exit code (which is 255 both for
``exit 255`` and for a panic), is how a broken boot is told apart from a failing command.
"""
from __future__ import annotations

import argparse
import codecs
import collections
import io
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any, Callable, Mapping, Sequence

from .. import VHOST_NET_PATH
from ..errors import ConfigError, LabError
from .needs import Need, missing, setup_command

__all__ = [
    "Need", "NEEDS", "LAB_FAILED", "check", "find_kernel", "run", "in_lab", "have_vhost", "add_parser", "main",
]

LAB_FAILED = 125
"""Exit status of the CLI when the lab itself failed (like ``docker run``): pytest never uses it."""

LAB_ENV = "VNETBE_LAB"
REQUIRED_MODULES = ("vhost_net", "macvtap", "tun")

BOOT_DIR = Path("/boot")
MODULES_DIR = Path("/lib/modules")
# vng already overlays these; the guest sees every other host path read-only.
_VNG_OVERLAID = ("/etc", "/lib", "/home", "/opt", "/srv", "/usr", "/var", "/tmp")
# Guest-only scratch space: /tmp is a RAM overlay inside the lab, so nothing here reaches the host.
_GUEST_SCRATCH = "/tmp/vnetbe-lab-scratch"
# Host variables that name things (sockets, per-session dirs) the guest does not have.
_HOST_ONLY_ENV = frozenset({
    "PWD", "OLDPWD", "SHLVL", "_", "XDG_RUNTIME_DIR", "DBUS_SESSION_BUS_ADDRESS", "SSH_AUTH_SOCK",
    "SSH_AGENT_PID", "DISPLAY", "WAYLAND_DISPLAY", "TMUX", "TMUX_PANE", "IFS", LAB_ENV,
})
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MEMORY = re.compile(r"[1-9][0-9]*[KMGT]?")


# --------------------------------------------------------------------------- what the lab needs


def _release_of(image: Path) -> str:
    return image.name.removeprefix("vmlinuz-")


def _version_key(release: str) -> tuple[tuple[int, int | str], ...]:
    # "6.10.0-1" must sort after "6.9.0-3": compare digit runs as numbers.
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", release) if p)


def _module_path(release: str, module: str) -> str | None:
    """Where `module` lives for this kernel release ("(built in)" if compiled in), or None."""
    moddir = MODULES_DIR / release
    wanted = re.compile(rf"(^|/){re.escape(module)}\.ko(\.[a-z]+)?$")
    for index, builtin in (("modules.dep", False), ("modules.builtin", True)):
        try:
            lines = (moddir / index).read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            path = line.split(":", 1)[0].strip()
            if wanted.search(path):
                return "(built in)" if builtin else path
    # No index (a kernel installed without depmod): look for the file itself.
    for hit in moddir.glob(f"kernel/**/{module}.ko*"):
        return str(hit.relative_to(moddir))
    return None


def find_kernel(path: str | os.PathLike[str] | None = None) -> Path:
    """The kernel image the lab boots: `path` if given, else the newest /boot/vmlinuz-* with vhost_net."""
    if path is not None:
        image = Path(path)
        if not image.is_file():
            raise LabError(f"kernel image {image} does not exist; pass an existing file to --kernel")
        return image
    candidates = sorted(BOOT_DIR.glob("vmlinuz-*"), key=lambda p: _version_key(_release_of(p)), reverse=True)
    for image in candidates:
        if _module_path(_release_of(image), "vhost_net") is not None:
            return image
    seen = ", ".join(p.name for p in candidates) or "none"
    raise LabError(
        f"no kernel in {BOOT_DIR} has a vhost_net module (kernels: {seen}); "
        f"install one with `{setup_command('lab')}`"
    )


def _is_static_elf(path: str) -> bool:
    # virtme-ng puts busybox into the initramfs, where there is no dynamic loader: a dynamically
    # linked busybox boots to nothing. Static means no PT_INTERP program header.
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit only: the lab is x86_64
                return False
            phoff = int.from_bytes(head[32:40], "little")
            phentsize = int.from_bytes(head[54:56], "little")
            phnum = int.from_bytes(head[56:58], "little")
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    return all(
        int.from_bytes(table[i:i + 4], "little") != 3  # PT_INTERP
        for i in range(0, len(table), phentsize)
    )


def _find_vng() -> str | None:
    # Prefer the vng installed next to this interpreter: a pyenv shim on PATH may resolve to a
    # different Python, and this one is the one `pip install virtme-ng` would have used.
    sibling = Path(sys.executable).parent / "vng"
    if sibling.is_file() and os.access(sibling, os.X_OK):
        return str(sibling)
    return shutil.which("vng")


def _find_qemu() -> str | None:
    return shutil.which("qemu-system-x86_64")


def find_busybox() -> str | None:
    for name in ("busybox-static", "busybox.static", "busybox"):
        found = shutil.which(name)
        if found and _is_static_elf(found):
            return found
    return None


_STEP = "QEMU, a stock kernel with vhost_net and a static busybox for the kernel lab"


def _kernel_found() -> str | None:
    try:
        image = find_kernel()
    except LabError:
        return None
    return f"{image} (vhost_net: {_module_path(_release_of(image), 'vhost_net')})"


_NO_QEMU = Need("qemu", "qemu-system-x86_64 not found", lambda: _find_qemu(),
                "lab", _STEP, apt=("qemu-system-x86",))
_NO_KERNEL = Need("kernel", f"no {BOOT_DIR}/vmlinuz-* with a vhost_net module under {MODULES_DIR}/<release>/",
                  _kernel_found, "lab", _STEP, apt=("linux-image-amd64",))
_NO_BUSYBOX = Need("busybox", "no statically linked busybox (virtme-ng needs it for the initramfs)",
                   lambda: find_busybox(), "lab", _STEP, apt=("busybox-static",))
_NO_VNG = Need("vng", "virtme-ng's vng not found", lambda: _find_vng(), "lab", "virtme-ng, which boots the lab",
               pip=("virtme-ng>=1.30",))
# What the lab needs, in install order; `vnetbe setup lab` installs them.
NEEDS = (_NO_QEMU, _NO_KERNEL, _NO_BUSYBOX, _NO_VNG)


def check() -> list[Need]:
    """What the lab is missing on this host; empty when it can boot."""
    return missing(NEEDS)


def in_lab() -> bool:
    """True inside the lab: the variable run() sets names the kernel we are running on."""
    return os.environ.get(LAB_ENV) == os.uname().release


def have_vhost() -> bool:
    """True if /dev/vhost-net exists and this process may open it."""
    try:
        fd = os.open(VHOST_NET_PATH, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


# --------------------------------------------------------------------------- the guest side

# Runs as root inside the lab under /bin/sh (dash: no bashisms). Modules load before env.sh replaces
# PATH, because the host's PATH may lack /sbin; the script's own variables are prefixed so that no
# host variable from env.sh can overwrite them.
_ENTER_SH = """\
_vnb_state={state}
uname -r > "$_vnb_state/started"
fail() {{
    printf '%s\\n' "$*" > "$_vnb_state/failed"
    exit {lab_failed}
}}
_vnb_fix="boot a kernel whose modules include it (--kernel PATH; see 'vnetbe lab --check')"
for _vnb_mod in {modules}; do
    if ! _vnb_out=$(modprobe "$_vnb_mod" 2>&1); then
        fail "modprobe $_vnb_mod failed inside the lab (kernel $(uname -r)): $(echo $_vnb_out); $_vnb_fix"
    fi
done
[ -c /dev/vhost-net ] || fail "vhost_net is loaded but /dev/vhost-net did not appear (kernel $(uname -r)); $_vnb_fix"
. "$_vnb_state/env.sh"
export {lab_env}="$(uname -r)"
mkdir -p {scratch}
_vnb_cwd={cwd}
cd "$_vnb_cwd" 2>/dev/null || fail "cannot enter $_vnb_cwd inside the lab, where it is hidden by a guest \
mount (/var/tmp, /var/cache, /var/log, /run and /dev are the guest's own); run from another directory"
{command}
_vnb_rc=$?
echo "$_vnb_rc" > "$_vnb_state/status"
exit "$_vnb_rc"
"""


def _guest_environment(extra: Mapping[str, str] | None) -> dict[str, str]:
    """The host's environment, adjusted so that tools behave the same on a read-only root."""
    env = {k: v for k, v in os.environ.items() if k not in _HOST_ONLY_ENV and _ENV_NAME.fullmatch(k)}
    if extra:
        env.update(extra)
    # This interpreter first, so `python3`, `pytest` and the `vnetbe` script inside are the ones that
    # started the lab even when its bin directory is not on PATH; the sbin dirs for ip/modprobe.
    dirs = [os.path.dirname(sys.executable), *env.get("PATH", "").split(":"),
            "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
    env["PATH"] = ":".join(dict.fromkeys(d for d in dirs if d))
    # The project tree is read-only inside: send every cache that would be written there to the
    # guest's scratch (pytest warns, hypothesis fails, Python silently retries bytecode writes).
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["HYPOTHESIS_STORAGE_DIRECTORY"] = f"{_GUEST_SCRATCH}/hypothesis"
    env["PYTEST_ADDOPTS"] = f"-o cache_dir={_GUEST_SCRATCH}/pytest-cache {env.get('PYTEST_ADDOPTS', '')}".strip()
    return env


def _write_state(state: Path, cmd: Sequence[str], cwd: str, env: Mapping[str, str]) -> None:
    (state / "env.sh").write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(env.items())))
    (state / "enter.sh").write_text(_ENTER_SH.format(
        state=shlex.quote(str(state)), lab_failed=LAB_FAILED, modules=" ".join(REQUIRED_MODULES),
        lab_env=LAB_ENV, scratch=shlex.quote(_GUEST_SCRATCH), cwd=shlex.quote(cwd), command=shlex.join(cmd),
    ))


def _shell_safe(what: str, value: str) -> str:
    # vng assembles virtme-run's command line as one string run by a shell, without quoting.
    if shlex.quote(value) != value:
        raise ConfigError(f"{what} {value!r} contains characters vng cannot pass; use a plain path")
    return value


def _vng_command(vng: str, kernel: Path, state: Path, memory: str, cpus: int, qemu_opts: str = "") -> list[str]:
    console = state / "console.log"
    cmd = [
        vng, "--run", _shell_safe("kernel path", str(kernel)),
        "--disable-kvm",  # KVM on this host only runs special guests: the boot hangs
        "--memory", memory, "--cpus", str(cpus),
        "--rwdir", str(state),
        # The kernel console: vng sends ttyS0 to /dev/null unless --verbose, which would mix it into
        # the command's stderr. A virtio console (hvc0) into a file keeps panics and OOM reports.
        f"--qemu-opts=-device virtio-serial-pci,id=vnbcon -chardev file,id=vnbconlog,path={console}"
        " -device virtconsole,chardev=vnbconlog,bus=vnbcon.0" + (f" {qemu_opts}" if qemu_opts else ""),
        "--append", "console=hvc0", "--append", "loglevel=5",
        "--exec", f"/bin/sh {state}/enter.sh",
    ]
    home = os.environ.get("HOME", "")
    if (home and os.path.isdir(home) and shlex.quote(home) == home
            and not any(home == d or home.startswith(d + "/") for d in ("/", *_VNG_OVERLAID))):
        # A writable (throwaway) $HOME: many tools write ~/.cache or ~/.config and fail on a read-only one.
        cmd[-2:-2] = ["--overlay-rwdir", home]
    return cmd


# --------------------------------------------------------------------------- the host side


def _sink(stream: IO[Any]) -> Callable[[bytes], None]:
    """A writer of raw guest output to `stream`, text or binary, flushed at once (live output)."""
    binary = getattr(stream, "buffer", None)
    if binary is None and not isinstance(stream, io.TextIOBase):
        binary = stream
    if binary is not None:
        def write_bytes(data: bytes) -> None:
            if binary is not stream:
                stream.flush()  # keep order with what was print()ed before
            binary.write(data)
            binary.flush()
        return write_bytes
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def write_text(data: bytes) -> None:
        stream.write(decoder.decode(data))
        stream.flush()
    return write_text


def _pump(fd: int, sink: Callable[[bytes], None], tail: collections.deque[bytes] | None = None) -> None:
    with os.fdopen(fd, "rb", buffering=0) as pipe:
        while chunk := pipe.read(65536):
            if tail is not None:
                tail.append(chunk)
            try:
                sink(chunk)
            except (OSError, ValueError):
                pass  # the reader went away (closed pipe, pytest capture torn down): keep draining


def _last_line(chunks: collections.deque[bytes]) -> str:
    lines = [ln.strip() for ln in b"".join(chunks).decode(errors="replace").splitlines()]
    return next((ln for ln in reversed(lines) if ln), "")


def _console_verdict(console: Path) -> str | None:
    """The one console line that explains a dead guest (panic, oops, OOM), if any."""
    try:
        text = console.read_text(errors="replace")
    except OSError:
        return None
    patterns = ("Kernel panic", "Out of memory", "invoked oom-killer", "BUG:", "Oops:", "general protection")
    for pattern in patterns:
        for line in text.splitlines():
            if pattern in line:
                return re.sub(r"^\[\s*[0-9.]+\]\s*", "", line).strip()
    return None


def _stop(proc: subprocess.Popen[bytes]) -> None:
    # vng forks QEMU; both are in the session we created for them, so signal the whole group.
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


def _verdict(state: Path, vng_status: int, stderr_tail: collections.deque[bytes]) -> int:
    """CMD's exit status, or LabError saying why there is none."""
    status, failed, started = state / "status", state / "failed", state / "started"
    if status.exists():
        return int(status.read_text().strip())
    if failed.exists():  # the guest script wrote what went wrong and what to do
        raise LabError(failed.read_text(errors="replace").strip())
    console = state / "console.log"
    crash = _console_verdict(console)
    keep = f" (kernel console kept in {console})" if crash else ""
    if started.exists():
        if crash:
            raise LabError(f"the lab kernel died while the command ran: {crash}{keep}; "
                           "raise --memory if it ran out, else look for a kernel bug")
        raise LabError(f"the lab stopped before the command finished (vng exited {vng_status}) "
                       "without a kernel panic; did the command power the VM off?")
    if crash:
        raise LabError(f"the lab kernel died while booting: {crash}{keep}; try another --kernel")
    why = _last_line(stderr_tail) or f"vng exited {vng_status} without output"
    raise LabError(f"the lab did not start: {why}; run `vnetbe lab --check` and fix what it reports")


def _run_here(cmd: Sequence[str], cwd: str, env: Mapping[str, str] | None, timeout: float | None) -> int:
    # Already in the lab: a nested software-emulated VM would crawl, and this kernel has vhost_net.
    try:
        return subprocess.run(list(cmd), cwd=cwd, env={**os.environ, **(env or {})}, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        raise LabError(f"the command did not finish within {timeout:g} s and was killed") from None
    except OSError as e:
        raise LabError(f"cannot run {cmd[0]!r} inside the lab: {e.strerror}") from None


def _supervise(proc: subprocess.Popen[bytes], state: Path, timeout: float | None, boot_timeout: float) -> int:
    """Wait for vng; stop it (and raise) when the boot or the whole run takes too long. Returns vng's status."""
    begun = time.monotonic()
    try:
        while True:
            try:
                return proc.wait(0.5)
            except subprocess.TimeoutExpired:
                pass
            elapsed = time.monotonic() - begun
            if timeout is not None and elapsed >= timeout:
                _stop(proc)
                raise LabError(f"the lab did not finish within {timeout:g} s (the boot counts too) and was "
                               "stopped; raise the timeout or look for a hang in the command")
            if elapsed >= boot_timeout and not (state / "started").exists():
                # A boot that never reaches our script: KVM left on, a hung device probe, a dead init.
                _stop(proc)
                console = state / "console.log"
                crash = _console_verdict(console)
                raise LabError(f"the lab did not boot within {boot_timeout:g} s"
                               + (f" ({crash}; kernel console kept in {console})" if crash else "")
                               + "; run `vng --run KERNEL --disable-kvm --verbose --exec true` to watch the boot")
    except BaseException:
        _stop(proc)  # Ctrl-C or a bug here: never leave a VM behind
        raise


def run(
    cmd: Sequence[str],
    kernel: str | os.PathLike[str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    memory: str = "2G",
    cpus: int = 2,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    *,
    boot_timeout: float = 300.0,
    stdout: IO[Any] | None = None,
    stderr: IO[Any] | None = None,
    qemu_opts: str = "",
) -> int:
    """Boot the lab, load vhost_net, macvtap and tun, run `cmd` as root there and return its exit status.

    `cwd` (default: ours) is the command's working directory, `env` is merged over the host's
    environment. The command's output streams live to `stdout`/`stderr` (default: ours; text or
    binary streams); its stdin is empty. Raises LabError when the lab cannot give an exit status:
    vng, QEMU or busybox missing, vng or QEMU failing, a kernel panic, a module that does not
    load, no boot within `boot_timeout` s, or `timeout` s elapsed (the boot counts too).
    `qemu_opts` adds QEMU options (devices: a vhost-user NIC, its memory backend).
    Called inside the lab, runs `cmd` directly instead of nesting a VM.
    """
    if not cmd:
        raise ConfigError("no command to run in the lab")
    if not _MEMORY.fullmatch(memory):
        raise ConfigError(f"lab memory {memory!r} is not a size like 2G or 1536M")
    if cpus < 1:
        raise ConfigError(f"lab cpus must be at least 1, not {cpus}")
    workdir = os.path.abspath(cwd if cwd is not None else os.getcwd())
    if in_lab():
        return _run_here(cmd, workdir, env, timeout)

    vng = _find_vng()
    for found, problem in ((vng, _NO_VNG), (_find_qemu(), _NO_QEMU), (find_busybox(), _NO_BUSYBOX)):
        if found is None:
            raise LabError(f"the lab cannot start: {problem}")
    assert vng is not None
    image = find_kernel(kernel)

    # Under /tmp on purpose: the guest sees the host's /tmp (beneath its overlay), so the directory
    # exists at the same path there, which vng's --rwdir needs.
    state = Path(tempfile.mkdtemp(prefix="vnetbe-lab-", dir="/tmp"))
    keep_state = False
    try:
        _write_state(state, cmd, workdir, _guest_environment(env))
        err_tail: collections.deque[bytes] = collections.deque(maxlen=16)
        # Pipes, never our own stdout: QEMU reopens /proc/self/fd/1 with O_TRUNC, which on a regular
        # file (a CI log, pytest's capture file) restarts at offset 0 and overwrites what is there.
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            proc = subprocess.Popen(
                _vng_command(vng, image, state, memory, cpus, qemu_opts), cwd=state, stdin=subprocess.DEVNULL,
                stdout=out_w, stderr=err_w, start_new_session=True,
            )
        except OSError as e:
            os.close(out_r)
            os.close(err_r)
            raise LabError(f"the lab cannot start: running {vng} failed: {e.strerror}") from None
        finally:
            os.close(out_w)
            os.close(err_w)
        pumps = [
            threading.Thread(target=_pump, args=(out_r, _sink(stdout or sys.stdout)), daemon=True),
            threading.Thread(target=_pump, args=(err_r, _sink(stderr or sys.stderr), err_tail), daemon=True),
        ]
        for t in pumps:
            t.start()
        try:
            vng_status = _supervise(proc, state, timeout, boot_timeout)
        finally:
            for t in pumps:
                t.join(5.0)
        return _verdict(state, vng_status, err_tail)
    except LabError:
        # The message points at the console log when that explains the failure: keep it.
        keep_state = _console_verdict(state / "console.log") is not None
        raise
    finally:
        if not keep_state:
            shutil.rmtree(state, ignore_errors=True)


# --------------------------------------------------------------------------- command line


def _configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--check", action="store_true",
                        help="report what the lab needs and what is missing (exit 1 if anything is)")
    parser.add_argument("--kernel", metavar="PATH",
                        help="kernel image to boot (default: newest /boot/vmlinuz-* with vhost_net)")
    parser.add_argument("--memory", default="2G", help="guest memory (default: %(default)s)")
    parser.add_argument("--cpus", type=int, default=2, help="guest CPUs (default: %(default)s)")
    parser.add_argument("--timeout", type=float, metavar="SECONDS",
                        help="stop the lab after this long, boot included")
    parser.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ...",
                        help="the command to run as root inside the lab")
    parser.set_defaults(func=main)
    return parser


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the `lab` subcommand on the main CLI's subparsers."""
    return _configure(subparsers.add_parser(
        "lab", help="run a command as root in a VM whose kernel has vhost-net",
        description="Boot a stock kernel with vhost_net under virtme-ng (QEMU, software emulation), "
                    "run CMD as root in the current directory, exit with CMD's status "
                    f"({LAB_FAILED} if the lab itself failed).",
    ))


def _report() -> int:
    absent = []
    for need in NEEDS:
        found = need.probe()
        absent += [] if found else [need]
        print(f"{'ok' if found else 'MISSING':8} {need.component:8} {found or need.missing}")
    host = "yes" if have_vhost() else "no (tests marked vhost run in the lab)"
    print(f"{'info':8} {'host':8} /dev/vhost-net usable here: {host}")
    if absent:
        print(f"install: {setup_command('lab')}")
    return 1 if absent else 0


def main(args: argparse.Namespace) -> int:
    """Run the `lab` subcommand: --check, or CMD inside the lab. Returns the exit status."""
    if args.check:
        return _report()
    cmd = list(args.cmd)
    if cmd[:1] == ["--"]:
        cmd = cmd[1:]  # argparse keeps the separator in a REMAINDER argument
    if not cmd:
        print("vnetbe lab: give a command after --, e.g. `vnetbe lab -- python3 -m pytest -m vhost`, "
              "or --check", file=sys.stderr)
        return 2
    try:
        return run(cmd, kernel=args.kernel, memory=args.memory, cpus=args.cpus, timeout=args.timeout)
    except (LabError, ConfigError) as e:
        print(f"vnetbe lab: {e}", file=sys.stderr)
        return LAB_FAILED


if __name__ == "__main__":
    sys.exit(main(_configure(argparse.ArgumentParser(prog="python3 -m vnetbe.tools.lab")).parse_args()))
