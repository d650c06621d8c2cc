"""A stuck datapath thread is noticed: the thread passes through its loop at least once a heartbeat
(VNB_DP_HEARTBEAT_MS) even when idle, so one that stops passing is stuck, not idle, and the device
says so (``DatapathStalled``) within three beats.

The stall is real, from outside the process: a child process ptrace-stops the datapath thread alone
(PTRACE_SEIZE + PTRACE_INTERRUPT stop one thread, not the group), as a debugger or a starved CPU would
hold it. The device keeps its rings; once the thread runs again, traffic resumes."""
from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest

from vnetbe.datapath.user import STALL_S
from vnetbe.errors import DatapathStalled
from vnetbe.memory import GuestMemory

from vnbtest.device import DeviceRig
from vnbtest.wait import wait_for

pytestmark = pytest.mark.root   # ptrace of another process's thread needs CAP_SYS_PTRACE

# The child: seize the thread, stop it, say so, hold it until stdin closes, let it go.
_HOLDER = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
PTRACE_SEIZE, PTRACE_INTERRUPT, PTRACE_DETACH, WALL = 0x4206, 0x4207, 17, 0x40000000
tid = int(sys.argv[1])
if libc.ptrace(PTRACE_SEIZE, tid, None, None) != 0 or libc.ptrace(PTRACE_INTERRUPT, tid, None, None) != 0:
    sys.exit(f"ptrace: {os.strerror(ctypes.get_errno())}")
os.waitpid(tid, WALL)
print("stopped", flush=True)
sys.stdin.read()
libc.ptrace(PTRACE_DETACH, tid, None, None)
"""


@pytest.fixture
def rig():
    r = DeviceRig(GuestMemory(64 << 20))
    yield r
    r.close()


def _frame(n: int) -> bytes:
    return bytes(range(6)) + bytes(6) + b"\x88\xb5" + n.to_bytes(4, "big") + bytes(46)


def test_an_idle_datapath_is_not_taken_for_a_stuck_one(rig):
    # Idle for longer than the stall bound: the heartbeat keeps it apart from a stuck thread.
    assert rig.dev.wait_fault(STALL_S + 1.0) is None
    rig.dev.check()


def test_a_stopped_datapath_thread_is_reported_within_three_heartbeats(rig):
    rig.guest.send(_frame(0))
    assert rig.link.sent(timeout=2.0) is not None
    tid = rig.dev.threads()[0]
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tid)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "stopped", holder.communicate(timeout=5)
        t0 = time.monotonic()
        err = rig.dev.wait_fault(STALL_S + 3.0)
        took = time.monotonic() - t0
        assert isinstance(err, DatapathStalled), err
        assert f"tid {tid}" in str(err) and "\n" not in str(err)
        # Reported only once the last beat is older than the bound, and soon after the stop: the last
        # beat came at most one heartbeat before it.
        age = float(re.search(r"for (\d+\.\d) s", str(err)).group(1))
        assert age >= STALL_S and took <= STALL_S + 1.0, (age, took)
        with pytest.raises(DatapathStalled):
            rig.dev.check()
        rig.guest.send(_frame(1))            # queued, but nobody moves it while the thread is held
        assert rig.link.sent(timeout=0.3) is None
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
    assert holder.returncode == 0
    # Released, the thread carries on where it stood: the frame goes out, and the stall clears.
    assert rig.link.sent(timeout=2.0) is not None
    assert wait_for(lambda: rig.dev.wait_fault(0) is None)
    rig.dev.check()
