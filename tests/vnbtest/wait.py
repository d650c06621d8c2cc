"""Waiting for a condition instead of sleeping a fixed time."""
from __future__ import annotations

import time


def wait_for(pred, timeout: float = 2.0) -> bool:
    """Poll ``pred`` until it holds or ``timeout`` s pass; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.005)
    return bool(pred())


def thread_sleeping(tid: int) -> bool:
    """True while thread ``tid`` of this process is asleep (state S or D in /proc), i.e. waiting for
    its next event: a kick or a frame written before this call has woken it synchronously, so a
    thread seen asleep after them has dealt with them."""
    try:
        with open(f"/proc/self/task/{tid}/stat") as f:
            # The state follows the parenthesised name, which may itself hold spaces or parentheses.
            return f.read().rsplit(")", 1)[1].split()[0] in ("S", "D")
    except (OSError, IndexError):
        return False
