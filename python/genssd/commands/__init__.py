"""Subcommands of the ``genssd`` CLI, one module each.

Command modules import torch, transformers and the library inside their handlers: the parser
is built from every module on each call, and ``genssd --help`` or an argument error should not
wait for torch to load.
"""
