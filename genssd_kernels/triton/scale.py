"""Triton: a tensor times a scalar held on the device, rounded once to the tensor's dtype.

The fused loss's backward multiplies its saved gradients (``[N, d]`` and ``[V, d]``) by the
upstream gradient, a 0-dim fp32 tensor. PyTorch runs ``bf16_tensor * fp32_scalar_tensor`` through
its generic mixed-dtype loop, not the vectorized one: on an H200 the two products took 0.15x the
matmul at N=8192, d=896, V=151936 (0.52 ms for 0.58 GB read and written, about 1.1 TB/s),
0.09x at d=2048 and 0.06x at d=4096 (``fused_loss_profile.py``). Here each program streams
``BLOCK`` contiguous elements, computes ``x * factor`` in fp32 and rounds once (PyTorch's CUDA fp16
product differed from that in the last bit on an H200).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from genssd_kernels.triton import INTERPRETED, check_kernel_dtype, device_guard, round_to

# 4096 elements a program at 8 warps: 16 a thread (32 bytes of bf16, two 16-byte loads). The
# interpreter wants small blocks so that the tests cover several and a ragged last one.
BLOCK = 64 if INTERPRETED else 4096
NUM_WARPS = 8


@triton.jit
def _scaled_kernel(x_ptr, factor_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    x = tl.load(x_ptr + offsets, mask=mask).to(tl.float32)
    factor = tl.load(factor_ptr).to(tl.float32)
    tl.store(out_ptr + offsets, round_to(x * factor, out_ptr.dtype.element_ty), mask=mask)


def scaled(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``x * factor`` in ``x``'s dtype, out of place.

    Args:
        x: any shape, fp16/bf16/fp32, contiguous; factor: ``[]`` fp32 on ``x``'s device.
    Returns:
        a new contiguous tensor like ``x``.
    """
    check_kernel_dtype("x", x)
    if not x.is_contiguous() or factor.dim() != 0 or factor.dtype != torch.float32:
        raise ValueError(
            f"scaled takes a contiguous x and a 0-dim float32 factor, got x strides {x.stride()} "
            f"and factor {factor.dtype} of shape {list(factor.shape)}"
        )
    out = torch.empty_like(x)
    n = x.numel()
    if n:
        with device_guard(x):
            _scaled_kernel[(triton.cdiv(n, BLOCK),)](x, factor, out, n, BLOCK=BLOCK, num_warps=NUM_WARPS)
    return out
