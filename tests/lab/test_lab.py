"""Tests of the kernel lab itself (vnetbe.tools.lab).

Booting costs 25-45 s under software emulation (~100 s on a busy host), so each boot checks many
things at once: one boot runs a probe script (exit status 7, streaming, cwd, environment, vhost
ioctls, macvtap, file systems), one runs pytest inside through tests/lab/run_in_lab.sh (exit status 0,
read-only tree handling). The failure paths that need a full boot (kernel panic, a module that does
not load, timeout) are also marked slow. Tests that depend on this host's setup are marked lab.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from vnetbe.tools import lab
from vnetbe.errors import ConfigError, LabError

ROOT = Path(__file__).resolve().parents[2]

_MISSING = lab.check()
needs_lab = pytest.mark.skipif(bool(_MISSING), reason=f"lab incomplete: {'; '.join(map(str, _MISSING))}")
not_nested = pytest.mark.skipif(lab.in_lab(), reason="already inside the lab: it would not boot another")


def boots(test):  # type: ignore[no-untyped-def]
    """Marks a test (or class) that boots the lab, and skips it where the lab cannot boot."""
    return pytest.mark.lab(needs_lab(not_nested(test)))


class Recorder(io.RawIOBase):
    """A binary sink that remembers when each piece of output arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.t0 = time.monotonic()
        self.chunks: list[tuple[float, bytes]] = []
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        with self._lock:
            self.chunks.append((time.monotonic() - self.t0, bytes(data)))
        return len(data)

    def text(self) -> str:
        return b"".join(c for _, c in self.chunks).decode()

    def arrival(self, needle: str) -> float:
        """Seconds from the start until the output first contained `needle`."""
        seen = b""
        for when, chunk in self.chunks:
            seen += chunk
            if needle.encode() in seen:
                return when
        raise AssertionError(f"{needle!r} never arrived")


# ------------------------------------------------------------------------------------ no boot


@pytest.mark.lab
def test_check_reports_nothing_missing_here() -> None:
    assert lab.check() == []


@pytest.mark.lab
def test_cli_check_exit_status() -> None:
    out = subprocess.run([sys.executable, "-m", "vnetbe.tools.lab", "--check"], cwd=ROOT, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "vhost_net" in out.stdout and "MISSING" not in out.stdout


@pytest.mark.lab
def test_find_kernel_picks_one_with_vhost_net() -> None:
    image = lab.find_kernel()
    assert image.name.startswith("vmlinuz-")
    release = image.name.removeprefix("vmlinuz-")
    assert lab._module_path(release, "vhost_net") is not None
    assert lab.find_kernel(image) == image


def test_find_kernel_rejects_missing_path(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="does not exist"):
        lab.find_kernel(tmp_path / "no-such-vmlinuz")


def test_each_lab_need_names_its_package_and_the_setup_command() -> None:
    assert lab._NO_KERNEL.apt == ("linux-image-amd64",) and lab._NO_VNG.pip == ("virtme-ng>=1.30",)
    assert all(n.target == "lab" and "vnetbe setup lab" in str(n) for n in lab.NEEDS)


def test_version_order_is_numeric() -> None:
    releases = ["6.9.0-3-amd64", "6.10.0-1-amd64", "6.1.0-56-amd64"]
    assert max(releases, key=lab._version_key) == "6.10.0-1-amd64"


@pytest.mark.parametrize("kwargs", [{"memory": "2GB"}, {"cpus": 0}])
def test_bad_arguments_fail_before_booting(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        lab.run(["true"], **kwargs)  # type: ignore[arg-type]


def test_guest_environment_survives_a_read_only_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/usr/bin")
    monkeypatch.setenv("PYTEST_ADDOPTS", "-x")
    env = lab._guest_environment({"EXTRA": "1"})
    assert env["EXTRA"] == "1"
    assert env["PATH"].split(":")[0] == os.path.dirname(sys.executable)
    assert "/usr/sbin" in env["PATH"].split(":")  # modprobe, ip
    assert env["PYTEST_ADDOPTS"].endswith("-x") and "cache_dir=/tmp/" in env["PYTEST_ADDOPTS"]
    assert env["HYPOTHESIS_STORAGE_DIRECTORY"].startswith("/tmp/")
    assert "PWD" not in env


@boots
def test_a_file_that_is_not_a_kernel_is_a_lab_error() -> None:
    # QEMU refuses it within seconds: exercises the "did not start" path without a full boot.
    with pytest.raises(LabError, match="did not start.*invalid kernel header"):
        lab.run(["true"], kernel="/etc/hostname", stdout=Recorder(), stderr=Recorder())


# ------------------------------------------------------------------------------------ boots

PROBE = r'''
import errno, fcntl, json, os, struct, subprocess, sys, time

print("early", flush=True)
time.sleep(3)  # the host must see "early" before this sleep ends: output is streamed
r = {"cwd": os.getcwd(), "python": sys.executable, "token": os.environ.get("VNB_LAB_TOKEN")}
from vnetbe.tools import lab
r["in_lab"], r["have_vhost"] = lab.in_lab(), lab.have_vhost()

fd = os.open("/dev/vhost-net", os.O_RDWR)
fcntl.ioctl(fd, 0xAF01)                                        # VHOST_SET_OWNER = _IO(0xAF, 1)
raw = fcntl.ioctl(fd, (2 << 30) | (8 << 16) | 0xAF00, bytes(8))  # VHOST_GET_FEATURES = _IOR(0xAF, 0, u64)
r["features"] = struct.unpack("=Q", raw)[0]
os.close(fd)

ip = lambda *a: subprocess.run(["ip", *a], check=True)
ip("link", "add", "vnbLabD0", "type", "dummy")
ip("link", "add", "link", "vnbLabD0", "name", "vnbLabM0", "type", "macvtap", "mode", "bridge")
idx = int(open("/sys/class/net/vnbLabM0/ifindex").read())
for _ in range(50):  # devtmpfs creates the node asynchronously
    if os.path.exists(f"/dev/tap{idx}"):
        break
    time.sleep(0.1)
r["tap_node"] = os.path.exists(f"/dev/tap{idx}")
os.close(os.open(f"/dev/tap{idx}", os.O_RDWR))
r["modules"] = sorted(l.split()[0] for l in open("/proc/modules") if l.split()[0] in ("vhost_net", "macvtap", "tun"))

r["host_file"] = open(sys.argv[1]).read()
def writable(d):
    try:
        os.close(os.open(os.path.join(d, ".vnb-lab-probe"), os.O_CREAT | os.O_WRONLY))
        return "writable"
    except OSError as e:
        return errno.errorcode[e.errno]
r["project"], r["tmp"] = writable(sys.argv[2]), writable("/tmp")
print("RESULT " + json.dumps(r), flush=True)
print("to stderr", file=sys.stderr, flush=True)
for i in range(20000):
    print(f"line {i}")
sys.exit(7)
'''


@pytest.fixture(scope="module")
def probe_boot(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Recorder, Recorder, Path, float]:
    here = tmp_path_factory.mktemp("lab-probe")  # under the host's /tmp: the guest sees it
    (here / "probe.py").write_text(PROBE)
    (here / "from-host.txt").write_text("written on the host")
    out, err = Recorder(), Recorder()
    started = time.monotonic()
    status = lab.run(
        [sys.executable, "probe.py", str(here / "from-host.txt"), str(ROOT)],
        cwd=here, env={"VNB_LAB_TOKEN": "t0k3n", "PYTHONPATH": str(ROOT)}, stdout=out, stderr=err,
        timeout=600,
    )
    return status, out, err, here, time.monotonic() - started


def _result(out: Recorder) -> dict[str, object]:
    line = next(ln for ln in out.text().splitlines() if ln.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


@boots
class TestProbeBoot:
    def test_nonzero_exit_status_comes_back(self, probe_boot) -> None:
        assert probe_boot[0] == 7, probe_boot[2].text()

    def test_output_is_streamed_live_and_complete(self, probe_boot) -> None:
        _, out, err, _here, _took = probe_boot
        assert out.arrival("RESULT") - out.arrival("early") >= 2.5  # "early" came before the sleep
        lines = [ln for ln in out.text().splitlines() if ln.startswith("line ")]
        assert lines == [f"line {i}" for i in range(20000)]
        assert "to stderr" in err.text() and "to stderr" not in out.text()

    def test_same_directory_environment_and_interpreter(self, probe_boot) -> None:
        r = _result(probe_boot[1])
        assert r["cwd"] == str(probe_boot[3])
        assert r["token"] == "t0k3n"
        assert r["python"] == sys.executable
        assert r["in_lab"] is True

    def test_vhost_net_opens_and_answers_ioctls(self, probe_boot) -> None:
        r = _result(probe_boot[1])
        assert r["have_vhost"] is True
        features = int(r["features"])  # type: ignore[call-overload]
        assert features >> 32 & 1, f"no VIRTIO_F_VERSION_1 in {features:#x}"

    def test_modules_loaded_and_macvtap_gets_a_device_node(self, probe_boot) -> None:
        r = _result(probe_boot[1])
        assert r["modules"] == ["macvtap", "tun", "vhost_net"]
        assert r["tap_node"] is True

    def test_file_systems(self, probe_boot) -> None:
        r = _result(probe_boot[1])
        assert r["host_file"] == "written on the host"
        # The tree is read-only inside, or a throwaway overlay when it lies under one of the dirs vng
        # overlays (a CI clone under /tmp): either way nothing the guest writes reaches the host.
        assert r["project"] in ("EROFS", "writable")
        assert not (ROOT / ".vnb-lab-probe").exists()
        assert r["tmp"] == "writable"
        assert not (probe_boot[3] / ".vnb-lab-probe").exists()  # guest /tmp writes stay in the guest


@boots
def test_pytest_inside_the_lab_via_run_in_lab_sh() -> None:
    # One boot: the test entry script, exit status 0, pytest on the read-only tree.
    out = subprocess.run(
        ["sh", "tests/lab/run_in_lab.sh", "tests/lab/test_lab.py", "-k", "inside_the_lab_only", "-q"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 passed" in out.stdout


@pytest.mark.skipif(not lab.in_lab(), reason="runs only inside the lab (see the test above)")
def test_inside_the_lab_only() -> None:
    assert lab.have_vhost()
    assert os.environ["HYPOTHESIS_STORAGE_DIRECTORY"].startswith("/tmp/")
    Path(os.environ["HYPOTHESIS_STORAGE_DIRECTORY"]).mkdir(parents=True, exist_ok=True)


@pytest.mark.slow
@boots
def test_kernel_panic_is_a_lab_error() -> None:
    with pytest.raises(LabError, match="Kernel panic") as info:
        lab.run(["sh", "-c", "echo c > /proc/sysrq-trigger"], stdout=Recorder(), stderr=Recorder(),
                timeout=600)
    kept = Path(str(info.value).split("console kept in ")[1].split(")")[0])
    try:
        assert "sysrq triggered crash" in kept.read_text()
    finally:
        shutil.rmtree(kept.parent, ignore_errors=True)


@pytest.mark.slow
@boots
def test_failing_modprobe_is_a_lab_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lab, "REQUIRED_MODULES", ("vhost_net", "vnb_no_such_module"))
    with pytest.raises(LabError, match=r"modprobe vnb_no_such_module failed inside the lab .*--kernel"):
        lab.run(["true"], stdout=Recorder(), stderr=Recorder(), timeout=600)


@boots
def test_boot_watchdog_stops_a_lab_that_does_not_come_up() -> None:
    started = time.monotonic()
    with pytest.raises(LabError, match="did not boot within 3 s"):
        lab.run(["true"], stdout=Recorder(), stderr=Recorder(), boot_timeout=3)
    assert time.monotonic() - started < 20


@pytest.mark.slow
@boots
def test_timeout_stops_the_lab() -> None:
    started = time.monotonic()
    with pytest.raises(LabError, match="did not finish within 10 s"):
        lab.run(["sleep", "600"], stdout=Recorder(), stderr=Recorder(), timeout=10)
    assert time.monotonic() - started < 25
