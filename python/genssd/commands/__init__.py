"""Subcommands of the ``genssd`` CLI, one module each."""
