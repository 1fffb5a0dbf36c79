"""Triton backend: one file per op, each laid out as kernels -> launcher -> ``torch.autograd.Function``.

The kernels run on CUDA tensors, and on CPU tensors in the Triton interpreter when
``TRITON_INTERPRET=1`` was set before triton was imported. This module holds only the few
helpers the op files share; import the ops from their files
(``genssd_kernels.triton.logprob_gather``, ``genssd_kernels.triton.branch_prune``).
"""

from __future__ import annotations

import contextlib

import torch

from genssd_kernels.dispatch import triton_interpreted

KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# Tile sizes are picked once per process: the interpreter pays per interpreted operation, so
# it wants few, modest tiles; a GPU wants tiles that fill the tensor cores.
INTERPRETED = triton_interpreted()


def check_kernel_dtype(name: str, tensor: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``tensor`` is fp16/bf16/fp32 (the dtypes ``tl.dot`` takes here)."""
    if tensor.dtype not in KERNEL_DTYPES:
        raise ValueError(
            f"the triton backend takes fp16/bf16/fp32 {name}, got {tensor.dtype}; "
            "use backend='reference' or 'cpp' for float64"
        )


def device_guard(tensor: torch.Tensor):
    """Make ``tensor``'s GPU the current device for a launch (Triton launches on the current one)."""
    if tensor.is_cuda:
        return torch.cuda.device(tensor.device)
    return contextlib.nullcontext()
