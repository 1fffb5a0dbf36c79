"""Test set-up: the Triton interpreter on CPU-only machines, and shared fixtures.

``TRITON_INTERPRET`` must be set before triton is first imported, so it is set here, at
collection time, when no CUDA device is present.
"""

import os
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from tiny_models import single_thread  # noqa: E402

from genssd_kernels import available_backends  # noqa: E402


def backends_on(device: str, op: str) -> list[str]:
    """The backends that can run ``op`` on ``device`` in this environment."""
    return [name for name, reason in available_backends(device, op).items() if reason is None]


# The real GSM8K test split beside the checkout (../shared); tests that need it skip elsewhere.
GSM8K_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "test.jsonl"
requires_gsm8k = pytest.mark.skipif(
    not GSM8K_TEST.is_file(), reason=f"the GSM8K test file is not at {GSM8K_TEST}"
)


@pytest.fixture(scope="session")
def gsm8k_test_path() -> Path:
    """The real GSM8K test file; skips the test when it is not beside the checkout."""
    if not GSM8K_TEST.is_file():
        pytest.skip(f"the GSM8K test file is not at {GSM8K_TEST}")
    return GSM8K_TEST


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture
def one_thread():
    """One torch thread for the test: tiny models gain nothing from threads, and two threads on a
    busy 2-core machine thrash. Modules of tiny-model tests use it for every test
    (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    with single_thread():
        yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
