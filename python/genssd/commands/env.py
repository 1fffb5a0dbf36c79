"""``genssd env``: versions and which kernel backends loaded (and why not)."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser("env", help="print versions and the kernel backends available here")
    parser.set_defaults(func=run)


def run(args) -> int:
    from genssd_kernels.env import report

    print(report())
    return 0
