"""Subcommands of the ``genssd`` CLI, one module each.

The parser is built from every module on each call. Most command modules import the library
inside their handlers, and transformers is imported only when a model or tokenizer loads, so
``genssd --help`` or an argument error does not wait for transformers. torch is imported while
the parser is built: ``register()`` in ``distill.py`` and ``demo.py`` reads its choices and
defaults from ``genssd.distill`` and ``genssd.demo``, which import torch.
"""

from __future__ import annotations

import dataclasses

from genssd.prompts import CHAT_TEMPLATES


def add_overrides_flag(parser, flag: str, help: str) -> None:
    """A repeatable ``KEY=VALUE`` flag (``--set`` and the like) collecting config overrides."""
    parser.add_argument(flag, action="append", default=[], metavar="KEY=VALUE", help=help)


def add_prompt_flags(parser) -> None:
    """``--chat-template``, ``--system-prompt``, ``--few-shot`` and ``--few-shot-file``: the prompt
    settings every config holds (``genssd.prompts``), as flags; given ones beat ``--config`` and
    ``--set``."""
    parser.add_argument(
        "--chat-template",
        choices=CHAT_TEMPLATES,
        help="auto: prompt each model through its tokenizer's chat template when it has one (default); "
        "none: the task's raw prompt",
    )
    parser.add_argument(
        "--system-prompt", metavar="TEXT", help="a system turn before the question (templates)"
    )
    parser.add_argument(
        "--few-shot",
        type=int,
        metavar="K",
        help="put K worked examples before each question (the task's own, or --few-shot-file's first K): "
        "earlier question/answer items in a raw prompt, earlier user/assistant turns under a template",
    )
    parser.add_argument(
        "--few-shot-file",
        metavar="FILE",
        help="JSONL of few-shot examples (question, answer in the task's format) instead of the task's",
    )


def add_model_run_flags(parser) -> None:
    """``--trust-remote-code``, the prompt flags (``add_prompt_flags``) and ``--no-progress``: the
    flags of a command that loads one model folder and runs it (``train``, ``eval``)."""
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="allow the model folder's own Python code"
    )
    add_prompt_flags(parser)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def with_prompt_flags(config, args):
    """``config`` (any of SearchConfig, TrainConfig, EvalConfig) with the prompt flags given in ``args``."""
    names = ("chat_template", "system_prompt", "few_shot", "few_shot_file")
    given = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    return dataclasses.replace(config, **given) if given else config
