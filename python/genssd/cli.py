"""``genssd`` command line: one subcommand per module in ``genssd.commands``.

Bad user input (``UsageError``, ``FileNotFoundError``) prints one line and exits with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from genssd.errors import UsageError

# Each module defines ``register(subparsers)``, which adds its parser with ``func=handler``.
COMMAND_MODULES = ["env", "train", "eval", "search", "distill", "export", "demo"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genssd", description="Student-in-the-loop chain-of-thought distillation."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"genssd.commands.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UsageError, FileNotFoundError) as exc:
        print(f"genssd {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
