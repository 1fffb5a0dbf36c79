"""Triton backend: one file per op, each laid out as kernels -> launcher -> ``torch.autograd.Function``.

The kernels run on CUDA tensors, and on CPU tensors in the Triton interpreter when
``TRITON_INTERPRET=1`` was set before triton was imported. This module holds only the few
helpers the op files share (host-side checks, and the jit helpers ``dot`` and ``round_to``);
import the ops from their files (``genssd_kernels.triton.logprob_gather``, ...).
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

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


# The interpreter has two bf16 gaps that the jit helpers below work around, so that it computes
# what a GPU computes: it multiplies bf16 tiles as their raw uint16 bits, and its fp32 -> bf16
# cast truncates instead of rounding to nearest even.


@triton.jit
def dot(a, b, acc, INTERP_BF16: tl.constexpr):
    """``acc + a @ b`` with fp32 accumulation (``INTERP_BF16``: bf16 tiles under the interpreter)."""
    if INTERP_BF16:
        # Products of bf16 values are exact in fp32, so this equals a GPU bf16 dot.
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if a.dtype == tl.float32:
        # "ieee": fp32 inputs would otherwise run in tf32 (~1e-3 relative), far outside the fp32
        # tolerance. 16-bit inputs keep the default (tensor cores, exact products).
        return tl.dot(a, b, acc, input_precision="ieee")
    return tl.dot(a, b, acc)


@triton.jit
def round_to(x, dtype: tl.constexpr):
    """fp32 ``x`` to ``dtype``, rounding to nearest even (bf16 rounded by hand, so the cast that
    follows drops only zero bits, in the interpreter as on a GPU)."""
    if dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
        x = bits.to(tl.float32, bitcast=True)
    return x.to(dtype)
