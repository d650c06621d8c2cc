"""What every subcommand shares: running it with one-line errors, registering it on the main CLI or
standalone (``python3 -m vnetbe.tools.<module>``), and reading the JSON documents it is pointed at."""
from __future__ import annotations

import argparse
import json
import sys

from ..errors import ConfigError, VnetError


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
    p = add_arguments(argparse.ArgumentParser(prog=f"python3 -m vnetbe.tools.{module}", description=doc,
                                              formatter_class=argparse.RawDescriptionHelpFormatter))
    return dispatch(p.parse_args(argv), f"vnetbe {module}")
