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


@functools.cache
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


# The compiled operators behind each public op of the cpp backend.
CPP_OPERATORS = {
    "logprob_gather": ("genssd::logprob_gather_fwd", "genssd::logprob_gather_bwd"),
    "linear_cross_entropy": (
        "genssd::logprob_gather_fwd",
        "genssd::logprob_gather_bwd",
        "genssd::cross_entropy_rows_",
    ),
    "branch_prune": ("genssd::branch_prune",),
}
_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA"}


def _cpp_unavailable_reason(device: torch.device, op: str | None) -> str | None:
    _, error = load_extension()
    if error is not None:
        return error
    if device.type not in _DISPATCH_KEYS:
        return f"no cpp kernels for device type {device.type!r}"
    if device.type == "cuda" and not cuda_ops_built():
        return "the extension was built without CUDA (torch without CUDA or no nvcc at install time)"
    key = _DISPATCH_KEYS[device.type]
    for name in CPP_OPERATORS if op is None else (op,):
        for operator in CPP_OPERATORS[name]:
            if not torch._C._dispatch_has_kernel_for_dispatch_key(operator, key):
                others = "triton or reference" if device.type == "cuda" else "reference"
                return f"the extension has no {key} kernel for {name} ({operator}); use {others}"
    return None


def unavailable_reason(backend: str, device: torch.device, op: str | None = None) -> str | None:
    """Why ``backend`` cannot run ``op`` on ``device``, or None when it can.

    ``op`` is a key of ``CPP_OPERATORS`` (a public op name); None asks about every op (the cpp
    backend, for instance, has CUDA kernels for ``branch_prune`` only).
    """
    if op is not None and op not in CPP_OPERATORS:
        raise ValueError(f"op must be one of {', '.join(CPP_OPERATORS)}, got {op!r}")
    if backend == "reference":
        return None
    if backend == "cpp":
        return _cpp_unavailable_reason(device, op)
    if backend == "triton":
        error = _triton_import_error()
        if error is not None:
            return error
        if device.type == "cuda" or (device.type == "cpu" and triton_interpreted()):
            return None
        return "triton runs on CUDA tensors, or on CPU tensors only with TRITON_INTERPRET=1 set before import"
    return f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}"


def resolve_backend(backend: str | None, device: torch.device, *, op: str | None = None) -> str:
    """Pick the backend for a call of ``op`` on tensors on ``device`` (op None: one that runs every op)."""
    requested = backend or os.environ.get("GENSSD_BACKEND") or None
    if requested is not None:
        if requested not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {requested!r}")
        reason = unavailable_reason(requested, device, op)
        if reason is not None:
            raise RuntimeError(
                f"{op or 'genssd'}: backend {requested!r} is unavailable on {device.type}: {reason}"
            )
        return requested
    preferred = ("triton", "cpp") if device.type == "cuda" else ("cpp",)
    for candidate in preferred:
        if unavailable_reason(candidate, device, op) is None:
            return candidate
    return "reference"


def available_backends(device: str | torch.device = "cpu", op: str | None = None) -> dict[str, str | None]:
    """Map each backend name to None (it runs ``op`` on ``device``; every op when None) or why not."""
    device = torch.device(device)
    return {name: unavailable_reason(name, device, op) for name in BACKENDS}
