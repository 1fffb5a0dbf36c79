"""Test set-up: the Triton interpreter on CPU-only machines, and shared fixtures.

``TRITON_INTERPRET`` must be set before triton is first imported, so it is set here, at
collection time, when no CUDA device is present.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from genssd_kernels import available_backends  # noqa: E402


def backends_on(device: str, op: str) -> list[str]:
    """The backends that can run ``op`` on ``device`` in this environment."""
    return [name for name, reason in available_backends(device, op).items() if reason is None]


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
