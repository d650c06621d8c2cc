"""`vnetbe setup` installs what a command needs, one progress line per step, and every failure is one
line saying what to do; every command that lacks something says so in one line with the setup
command that installs it. apt is faked here (the fresh-venv test runs the real thing)."""
from __future__ import annotations

import io
import shutil
import subprocess
import sys

import pytest

from vnetbe import cli
from vnetbe.errors import SetupError
from vnetbe.tools import dpdk, lab, linux_guest, provision
from vnetbe.tools.needs import Need


class FakeApt:
    """subprocess.run for apt-get and pip: records argv, answers with the scripted result, and makes
    the needs present once their package is installed."""

    def __init__(self, update=(0, ""), install=(0, "")):
        self.calls: list[list[str]] = []
        self.installed: set[str] = set()
        self.update, self.install_result = update, install

    def __call__(self, argv, capture_output=True, text=True, env=None):
        self.calls.append(list(argv))
        rc, err = (self.update if argv[:2] == ["apt-get", "update"] else self.install_result)
        if rc == 0 and "install" in argv:
            self.installed.update(a for a in argv[argv.index("install") + 1:] if not a.startswith("-"))
        return subprocess.CompletedProcess(argv, rc, "", err)


@pytest.fixture
def fake(monkeypatch):
    apt = FakeApt()
    needs = (
        Need("qemu", "qemu not found", lambda: "/q" if "qemu-system-x86" in apt.installed else None,
             "lab", "QEMU for the lab", apt=("qemu-system-x86",)),
        Need("kernel", "no kernel", lambda: "/k" if "linux-image-amd64" in apt.installed else None,
             "lab", "QEMU for the lab", apt=("linux-image-amd64",)),
        Need("vng", "vng not found", lambda: "/v" if "virtme-ng>=1.30" in apt.installed else None,
             "lab", "virtme-ng", pip=("virtme-ng>=1.30",)),
        Need("here", "never missing", lambda: "/h", "lab", "QEMU for the lab", apt=("already-here",)),
    )
    monkeypatch.setitem(provision.TARGETS, "lab", lambda: needs)
    monkeypatch.setattr(provision.shutil, "which", lambda name: "/usr/bin/" + name)
    return apt


def _installer(apt, root=True):
    out = io.StringIO()
    return provision.Installer(run=apt, out=out, as_root=root), out


def test_install_runs_one_step_per_group_with_a_progress_line_each(fake):
    inst, out = _installer(fake)
    assert inst.install(["lab"]) == 0
    assert fake.calls[0] == ["apt-get", "update", "-qq"]
    assert fake.calls[1] == ["apt-get", "install", "-y", "-qq", "qemu-system-x86", "linux-image-amd64"]
    assert fake.calls[2][:3] == [sys.executable, "-m", "pip"] and fake.calls[2][-1] == "virtme-ng>=1.30"
    assert len(fake.calls) == 3       # what is here already is not installed again
    lines = out.getvalue().splitlines()
    assert "vnetbe setup: installing QEMU for the lab (apt: qemu-system-x86 linux-image-amd64) ..." in lines
    assert "vnetbe setup: installing virtme-ng (pip: virtme-ng>=1.30) ..." in lines
    assert lines[-1] == "vnetbe setup: everything lab needs is installed"


def test_install_with_nothing_missing_runs_nothing(fake):
    fake.installed |= {"qemu-system-x86", "linux-image-amd64", "virtme-ng>=1.30"}
    inst, out = _installer(fake)
    assert inst.install(["lab"]) == 0 and fake.calls == []
    assert "everything lab needs is here" in out.getvalue()


def _one_line_error(inst, match):
    with pytest.raises(SetupError, match=match) as e:
        inst.install(["lab"])
    assert "\n" not in str(e.value)
    return str(e.value)


def test_not_root_is_told_to_use_sudo_before_apt_runs(fake):
    inst, _ = _installer(fake, root=False)
    _one_line_error(inst, r"needs root: run `sudo vnetbe setup lab`")
    assert fake.calls == []


def test_a_machine_without_apt_is_told_what_to_install_by_hand(fake, monkeypatch):
    monkeypatch.setattr(provision.shutil, "which", lambda name: None)
    inst, _ = _installer(fake)
    msg = _one_line_error(inst, "no apt-get")
    assert "qemu-system-x86 linux-image-amd64" in msg and fake.calls == []


@pytest.mark.parametrize("update", [(100, "E: Could not connect to deb.debian.org"),
                                    (0, "W: Failed to fetch http://deb.debian.org/debian/dists/bookworm/InRelease")])
def test_an_unreachable_registry_is_one_line(fake, update):
    fake.update = update
    inst, _ = _installer(fake)
    _one_line_error(inst, "cannot reach Debian's package registry")
    assert len(fake.calls) == 1


def test_a_failing_apt_install_names_the_packages_and_apt_error(fake):
    fake.install_result = (100, "Reading package lists...\nE: Unable to locate package qemu-system-x86")
    inst, _ = _installer(fake)
    _one_line_error(inst, r"apt-get install qemu-system-x86 linux-image-amd64 failed: E: Unable to locate")


def test_a_need_still_missing_after_install_is_an_error(fake, monkeypatch):
    needs = (Need("ghost", "ghost not found", lambda: None, "lab", "ghosts", apt=("ghost",)),)
    monkeypatch.setitem(provision.TARGETS, "lab", lambda: needs)
    inst, _ = _installer(fake)
    _one_line_error(inst, "ghost not found even after installing ghost")


def test_check_lists_every_need_and_exits_1_when_one_is_missing(fake):
    out = io.StringIO()
    assert provision.report(["lab"], out) == 1
    text = out.getvalue()
    assert "MISSING  qemu" in text and "ok       here" in text and "vnetbe setup lab" in text.splitlines()[-1]
    fake.installed |= {"qemu-system-x86", "linux-image-amd64", "virtme-ng>=1.30"}
    assert provision.report(["lab"], io.StringIO()) == 0


def test_unknown_target_is_one_line(capsys):
    assert cli.main(["setup", "--check", "nonsense"]) == 1
    err = capsys.readouterr().err
    assert "unknown setup target 'nonsense'" in err and err.count("\n") == 1


def test_targets_cover_every_declared_need():
    # Every need a module declares is installed by `setup tests`, so the test command lacks nothing.
    declared = {n.component for n in lab.NEEDS + dpdk.NEEDS + linux_guest.NEEDS}
    assert declared <= {n.component for n in provision.needs_of(["tests"])}
    assert {n.target for n in provision.needs_of(["tests"])} <= set(provision.TARGETS)


# ------------------------------------------------------------------ each command, on a bare machine


@pytest.fixture
def bare(monkeypatch):
    """This machine as a bare one: no QEMU, kernel, busybox, DPDK, ping or ethtool, no /dev/vhost-net."""
    real_which = shutil.which
    gone = {"qemu-system-x86_64", "dpdk-testpmd", "ping", "ethtool", "busybox", "busybox-static"}
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name in gone else real_which(name, *a, **k))
    monkeypatch.setattr(lab, "find_kernel", lambda path=None: (_ for _ in ()).throw(lab.LabError("no kernel")))
    monkeypatch.setattr(provision.os.path, "exists",
                        lambda p, _real=provision.os.path.exists: False if p == "/dev/vhost-net" else _real(p))


@pytest.mark.parametrize("argv, target", [
    (["bench"], "bench"),
    (["bench", "--frontend", "qemu"], "qemu"),
    (["bench", "--frontend", "testpmd"], "testpmd"),
    (["report", "--out", "{tmp}"], "bench"),
    (["lab", "--", "true"], "lab"),
])
def test_each_command_names_what_it_lacks_and_the_setup_command_in_one_line(bare, argv, target, capsys, tmp_path):
    argv = [a.replace("{tmp}", str(tmp_path / "r")) for a in argv]
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert rc != 0
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"vnetbe setup {target}`" in err, err
