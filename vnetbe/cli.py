"""The ``vnetbe`` command: ``bench`` (the main job), ``costs`` (what exits and mode switches cost),
``lab`` (the kernel lab).

Expected failures (VnetError) are printed as one line on stderr, without a traceback.
"""
from __future__ import annotations

import argparse
import sys

from .errors import VnetError


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vnetbe", description="userspace virtio-net backend with vhost-net offload")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    from . import benchcli, costs, report

    benchcli.add_parser(sub)
    costs.add_parser(sub)
    report.add_parser(sub)
    try:
        from . import lab
    except ImportError:  # pragma: no cover - lab is part of the package
        lab = None
    if lab is not None:
        lab.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return dispatch(args)


def dispatch(args, prog: str = "vnetbe") -> int:
    """Run a parsed subcommand; expected failures become one line on stderr, no traceback."""
    try:
        return int(args.func(args) or 0)
    except VnetError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
