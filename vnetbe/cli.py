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


def load_json(path: str, what: str):
    """A JSON document a subcommand was pointed at; a missing or broken file is a one-line ConfigError."""
    import json

    from .errors import ConfigError
    try:
        with open(path) as f:
            return json.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not JSON ({e.msg} at line {e.lineno}): expected {what}") from None


def subcommand(subparsers, name: str, help_: str, doc: str | None, add_arguments) -> argparse.ArgumentParser:
    """Register ``vnetbe <name>`` on the main CLI, with the options ``add_arguments`` gives it."""
    return add_arguments(subparsers.add_parser(name, help=help_, description=doc,
                                               formatter_class=argparse.RawDescriptionHelpFormatter))


def standalone(add_arguments, module: str, doc: str | None, argv: list[str] | None = None) -> int:
    """``python3 -m vnetbe.<module>``: the subcommand without the main CLI, with the same errors."""
    p = add_arguments(argparse.ArgumentParser(prog=f"python3 -m vnetbe.{module}", description=doc,
                                              formatter_class=argparse.RawDescriptionHelpFormatter))
    return dispatch(p.parse_args(argv), f"vnetbe {module}")


if __name__ == "__main__":
    sys.exit(main())
