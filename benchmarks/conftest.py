"""Benchmarks: GPU suites skip without CUDA; peers skip when not importable."""

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="GPU benchmark: needs CUDA")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
