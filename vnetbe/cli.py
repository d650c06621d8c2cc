"""The ``vnetbe`` command: ``bench`` (the main job), ``costs`` (what exits and mode switches cost),
``serve`` (a vhost-user back end), ``report``, ``lab`` (the kernel lab), ``setup`` (what they need from the system) and ``cleanup`` (what a killed run left). The only module that imports the subcommands.

Expected failures (VnetError) are printed as one line on stderr, without a traceback.
"""
from __future__ import annotations

import argparse
import sys

from .tools import benchcli, cleanup, costs, lab, provision, report, serve
from .tools.cliutil import dispatch


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vnetbe", description="userspace virtio-net backend with vhost-net offload")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for command in (benchcli, serve, costs, report, lab, provision, cleanup):
        command.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return dispatch(args)


if __name__ == "__main__":
    sys.exit(main())
