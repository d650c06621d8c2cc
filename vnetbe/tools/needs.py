"""One thing a vnetbe command needs from the system beyond ``pip install .``: what it is, how to tell it is
here, the Debian packages (or pip requirement) that bring it, and the ``vnetbe setup`` target that
installs it. Each module declares the needs of what it runs (the lab in lab.py, DPDK in dpdk.py, ...);
``vnetbe setup`` (provision.py) installs them, and a command that lacks one says so in one line.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class Need:
    """A missing-or-present piece of the system: ``probe()`` says where it is, or None."""

    component: str
    missing: str
    probe: Callable[[], str | None] = field(compare=False, repr=False)
    target: str                          # the `vnetbe setup` target that installs it
    step: str                            # the install step it belongs to, as a progress line names it
    apt: tuple[str, ...] = ()            # Debian packages that bring it
    pip: tuple[str, ...] = ()            # or pip requirements, into this interpreter
    recommends: bool = True              # False: apt-get --no-install-recommends (libvirt's pull in Xen, LVM, ...)

    @property
    def install(self) -> str:
        """The command that installs it (the setup target: one command whatever the package manager)."""
        return setup_command(self.target)

    def __str__(self) -> str:
        return f"{self.missing}: install with `{self.install}`"


def setup_command(target: str) -> str:
    """`vnetbe setup TARGET`, with sudo when this process is not root (apt needs it)."""
    return f"{'' if os.geteuid() == 0 else 'sudo '}vnetbe setup {target}"


def missing(needs) -> list[Need]:
    """The needs whose probe finds nothing, in order."""
    return [n for n in needs if n.probe() is None]
