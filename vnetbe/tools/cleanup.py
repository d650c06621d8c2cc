"""``vnetbe cleanup``: remove what a vnetbe run killed with -9 (or a crashed test) left behind.

Every namespace and interface vnetbe's tools and tests create is named ``vnb...``; a run that ends
normally removes its own, even on failure. One that is killed cannot: this removes every namespace
and interface whose name starts with the prefix (``vnb`` by default, never anything else), and says
what it removed. Run it when no vnetbe bench or test is running: it cannot tell theirs from leftovers.
"""
from __future__ import annotations

import argparse
import os
from typing import Any

from ..errors import NotRoot
from ..link import NOT_ROOT_MSG
from .cliutil import standalone, subcommand
from .topology import PREFIX, cleanup_stale


def _add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--prefix", default=PREFIX,
                   help=f"remove namespaces and interfaces named PREFIX* (default {PREFIX}; must start with {PREFIX})")
    p.set_defaults(func=main)
    return p


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``cleanup`` subcommand on the main CLI's subparsers."""
    return subcommand(subparsers, "cleanup", "remove vnb* namespaces and interfaces a killed run left behind",
                      __doc__, _add_arguments)


def main(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise NotRoot(NOT_ROOT_MSG)
    removed = cleanup_stale(args.prefix)
    for name in removed:
        print(f"removed {name}")
    print(f"vnetbe cleanup: removed {len(removed)} object(s) named {args.prefix}*" if removed
          else f"vnetbe cleanup: nothing named {args.prefix}* to remove")
    return 0


if __name__ == "__main__":
    raise SystemExit(standalone(_add_arguments, "cleanup", __doc__))
