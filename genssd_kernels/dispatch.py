"""Backend choice.

Order: the ``backend=`` argument > the ``GENSSD_BACKEND`` environment variable > ``triton`` on
CUDA tensors > ``cpp`` on CPU tensors > ``reference``. A backend that was asked for by name
and cannot run raises ``RuntimeError`` saying why; the automatic choice silently falls back.
"""

from __future__ import annotations

import functools
import os

import torch

from genssd_kernels._ext import cuda_ops_built, load_extension

BACKENDS = ("reference", "cpp", "triton")


@functools.lru_cache(maxsize=None)
def _triton_import_error() -> str | None:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except ImportError as exc:
        return f"triton is not importable ({exc})"
    return None


def triton_interpreted() -> bool:
    """True when Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def unavailable_reason(backend: str, device: torch.device) -> str | None:
    """Why ``backend`` cannot run on ``device``, or None when it can."""
    if backend == "reference":
        return None
    if backend == "cpp":
        _, error = load_extension()
        if error is not None:
            return error
        if device.type == "cuda" and not cuda_ops_built():
            return "the extension was built without CUDA (torch without CUDA or no nvcc at install time)"
        if device.type not in ("cpu", "cuda"):
            return f"no cpp kernels for device type {device.type!r}"
        return None
    if backend == "triton":
        error = _triton_import_error()
        if error is not None:
            return error
        if device.type == "cuda" or (device.type == "cpu" and triton_interpreted()):
            return None
        return "triton runs on CUDA tensors, or on CPU tensors only with TRITON_INTERPRET=1 set before import"
    return f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}"


def resolve_backend(backend: str | None, device: torch.device, *, op: str = "") -> str:
    """Pick the backend for a call on tensors living on ``device``."""
    requested = backend or os.environ.get("GENSSD_BACKEND") or None
    if requested is not None:
        if requested not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {requested!r}")
        reason = unavailable_reason(requested, device)
        if reason is not None:
            raise RuntimeError(f"{op or 'genssd'}: backend {requested!r} is unavailable on {device.type}: {reason}")
        return requested
    preferred = ("triton", "cpp") if device.type == "cuda" else ("cpp",)
    for candidate in preferred:
        if unavailable_reason(candidate, device) is None:
            return candidate
    return "reference"


def available_backends(device: str | torch.device = "cpu") -> dict[str, str | None]:
    """Map each backend name to None (usable on ``device``) or the reason it is not."""
    device = torch.device(device)
    return {name: unavailable_reason(name, device) for name in BACKENDS}
