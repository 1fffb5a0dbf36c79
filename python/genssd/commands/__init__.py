"""Subcommands of the ``genssd`` CLI, one module each.

Command modules import torch, transformers and the library inside their handlers: the parser
is built from every module on each call, and ``genssd --help`` or an argument error should not
wait for torch to load.
"""

from __future__ import annotations

import dataclasses

from genssd.prompts import CHAT_TEMPLATES


def add_overrides_flag(parser, flag: str, help: str) -> None:
    """A repeatable ``KEY=VALUE`` flag (``--set`` and the like) collecting config overrides."""
    parser.add_argument(flag, action="append", default=[], metavar="KEY=VALUE", help=help)


def add_prompt_flags(parser) -> None:
    """``--chat-template`` and ``--system-prompt``: the prompt settings every config holds
    (``genssd.prompts``), as flags; given ones beat ``--config`` and ``--set``."""
    parser.add_argument(
        "--chat-template",
        choices=CHAT_TEMPLATES,
        help="auto: prompt each model through its tokenizer's chat template when it has one (default); "
        "none: the task's raw prompt",
    )
    parser.add_argument(
        "--system-prompt", metavar="TEXT", help="a system turn before the question (templates)"
    )


def with_prompt_flags(config, args):
    """``config`` (any of SearchConfig, TrainConfig, EvalConfig) with the prompt flags given in ``args``."""
    given = {"chat_template": args.chat_template, "system_prompt": args.system_prompt}
    given = {name: value for name, value in given.items() if value is not None}
    return dataclasses.replace(config, **given) if given else config
