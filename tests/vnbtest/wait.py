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
