"""Triton cross-entropy row step: each row's loss, and the logits overwritten with their gradient.

One program per row of the ``[R, V]`` logits chunk, two passes over the row:

1. an online max / sum of ``exp2`` in base 2 over ``BLOCK``-column slices (fp32 statistics);
2. ``scale * (softmax - onehot)`` written over the logits, in the logits' dtype.

The second pass walks the row backwards, so it starts on the slices the first pass read last,
which are the likeliest to still be in L2 (a 151936-column bf16 row is 297 KiB; the card's L2
holds the tails of the rows in flight). The target logit is read before the row is overwritten.
See ``genssd_kernels.reference.cross_entropy_rows`` for the contract.

``cross_entropy_chunk_`` does the matmul as well: the forward kernels of ``logprob_gather``
write the chunk's logits while they take its statistics, and ``_softmax_grad_kernel`` then
overwrites them with the gradient in one read and one write, where the matmul + row step above
stream the chunk four times (the matmul's write, the statistics' read, the gradient's read and
write). :func:`fused_chunk_step` picks between the two by the hidden size (see
``LOGITS_KERNEL_MIN_HIDDEN``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from genssd_kernels.fused_loss import matmul_then
from genssd_kernels.triton import INTERPRETED, check_kernel_dtype, device_guard, logprob_gather, round_to

# 4096 columns a slice: 8 KiB of bf16 per load at 8 warps (16 bytes a thread), enough bytes in
# flight per SM to stream at full bandwidth with a few programs resident. The interpreter
# wants small slices so that the tests cover several of them and a ragged last one.
BLOCK = 64 if INTERPRETED else 4096
NUM_WARPS = 8
# From this hidden size on, the fused loss's chunk step is cross_entropy_chunk_, below it the
# cuBLAS matmul + row step. H200, the whole loss (bench_kernels.py --ops train, three runs, codes
# 02f1449 and 75b045f): at d = 2048 the logits kernel took 0.01 / 0.14 / 0.09x the matmul less,
# at d = 4096 0.04 / 0.00 / 0.01x less, at d = 896 0.14 / 0.10 / 0.07x more.
LOGITS_KERNEL_MIN_HIDDEN = 2048


@triton.jit
def _row_step(z_ptr, t_ptr, scale_ptr, loss_ptr, row, V, stride_z, ignore_index, BLOCK: tl.constexpr):
    """Row ``row`` (int64): its loss into ``loss_ptr[row]``, its gradient over its logits."""
    base = z_ptr + row * stride_z
    target = tl.load(t_ptr + row)
    cols = tl.arange(0, BLOCK)
    if target != ignore_index:
        target_logit = tl.load(base + target).to(tl.float32)
        run_max = tl.full((BLOCK,), float("-inf"), dtype=tl.float32)
        run_sum = tl.zeros((BLOCK,), dtype=tl.float32)
        # Per-lane running statistics in base 2 (u = z * log2(e)), folded across lanes once at
        # the end: no reduction per slice.
        for c0 in range(0, V, BLOCK):
            mask = c0 + cols < V
            u = tl.load(base + c0 + cols, mask=mask, other=float("-inf")).to(tl.float32) * 1.4426950408889634
            new_max = tl.maximum(run_max, u)
            # Lanes that have seen only padding keep max -inf: exp2(-inf - -inf) would be NaN.
            safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)
            run_sum = run_sum * tl.exp2(run_max - safe_max) + tl.exp2(u - safe_max)
            run_max = new_max
        row_max = tl.max(run_max, axis=0)
        total = tl.sum(run_sum * tl.exp2(run_max - row_max), axis=0)
        log2_norm = row_max + tl.log2(total)  # log2 of sum(exp(z))
        tl.store(loss_ptr + row, log2_norm * 0.6931471805599453 - target_logit)
        scale = tl.load(scale_ptr)
        n_slices = tl.cdiv(V, BLOCK)
        for i in range(0, n_slices):
            c0 = (n_slices - 1 - i) * BLOCK
            mask = c0 + cols < V
            z = tl.load(base + c0 + cols, mask=mask, other=0.0).to(tl.float32)
            p = tl.exp2(z * 1.4426950408889634 - log2_norm)
            grad = (p - tl.where(c0 + cols == target, 1.0, 0.0)) * scale
            tl.store(base + c0 + cols, round_to(grad, z_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(loss_ptr + row, 0.0)
        zero = tl.zeros((BLOCK,), dtype=z_ptr.dtype.element_ty)
        for c0 in range(0, V, BLOCK):
            tl.store(base + c0 + cols, zero, mask=c0 + cols < V)


@triton.jit
def _cross_entropy_rows_kernel(z_ptr, t_ptr, scale_ptr, loss_ptr, R, V, stride_z, ignore_index,
                               BLOCK: tl.constexpr, PROGRAMS: tl.constexpr):  # fmt: skip
    """One program per row (``PROGRAMS`` 0), or ``PROGRAMS`` programs striding over the rows."""
    if PROGRAMS == 0:
        _row_step(z_ptr, t_ptr, scale_ptr, loss_ptr, tl.program_id(0).to(tl.int64), V, stride_z, ignore_index,
                  BLOCK)  # fmt: skip
    else:
        for row in range(tl.program_id(0), R, PROGRAMS):
            row64 = tl.cast(row, tl.int64)
            _row_step(z_ptr, t_ptr, scale_ptr, loss_ptr, row64, V, stride_z, ignore_index, BLOCK)


def cross_entropy_rows_(
    logits: torch.Tensor,
    targets: torch.Tensor,
    scale: torch.Tensor,
    ignore_index: int,
    *,
    block: int = BLOCK,
    num_warps: int = NUM_WARPS,
    programs: int = 0,
) -> torch.Tensor:
    """See :func:`genssd_kernels.reference.cross_entropy_rows.cross_entropy_rows_`.

    ``block`` / ``num_warps`` override the slice width and warps, ``programs`` > 0 launches that
    many programs striding over the rows (for launch sweeps).

    Args:
        logits: ``[R, V]`` fp16/bf16/fp32 with a unit inner stride (overwritten);
        targets: ``[R]`` int64, contiguous; scale: ``[]`` fp32 on the logits' device.
    Returns:
        ``losses [R]`` float32.
    """
    check_kernel_dtype("logits", logits)
    rows, vocab = logits.shape
    losses = torch.empty(rows, dtype=torch.float32, device=logits.device)
    if rows:
        with device_guard(logits):
            _cross_entropy_rows_kernel[(min(rows, programs) if programs else rows,)](
                logits, targets, scale, losses, rows, vocab, logits.stride(0), ignore_index,
                BLOCK=block, PROGRAMS=programs, num_warps=num_warps,
            )  # fmt: skip
    return losses


@triton.jit
def _softmax_grad_kernel(z_ptr, t_ptr, max_ptr, log2sum_ptr, scale_ptr, loss_ptr, V, stride_z, ignore_index,
                         BLOCK: tl.constexpr):  # fmt: skip
    """Program (row, slice): ``scale * (softmax - onehot)`` over the row's logits in that slice,
    0 on an ignored row, from the row's base-2 statistics (``max`` of ``z * log2(e)``,
    ``log2(sum)``; ``logprob_gather``'s forward). The program whose slice holds the target writes
    the row's loss from the stored target logit before overwriting it: the log-sum-exp and the
    target logit then carry the same rounding, which cancels on confident rows (with the fp32
    target logit a bf16 row's loss was off by up to 0.06 and often negative)."""
    row = tl.program_id(0).to(tl.int64)
    c0 = tl.program_id(1) * BLOCK
    cols = c0 + tl.arange(0, BLOCK)
    mask = cols < V
    row_ptr = z_ptr + row * stride_z
    target = tl.load(t_ptr + row)
    valid = target != ignore_index
    row_max = tl.load(max_ptr + row)
    log2_sum = tl.load(log2sum_ptr + row)
    if valid:
        if (target >= c0) & (target < c0 + BLOCK):
            target_logit = tl.load(row_ptr + target).to(tl.float32)
            tl.store(loss_ptr + row, (row_max + log2_sum) * 0.6931471805599453 - target_logit)
    elif c0 == 0:
        tl.store(loss_ptr + row, 0.0)
    z = tl.load(row_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    p = tl.exp2(tl.fma(z, 1.4426950408889634, -row_max) - log2_sum)
    grad = (p - tl.where(cols == target, 1.0, 0.0)) * tl.load(scale_ptr)
    # where, not a zero factor: an ignored row's non-finite logits must not leave NaN behind.
    tl.store(row_ptr + cols, round_to(tl.where(valid, grad, 0.0), z_ptr.dtype.element_ty), mask=mask)


def cross_entropy_chunk_(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    scale: torch.Tensor,
    ignore_index: int,
    logits: torch.Tensor,
) -> torch.Tensor:
    """``logits = hidden @ weight.T`` and the row step over them (see :func:`cross_entropy_rows_`)
    in two launches that stream the chunk twice.

    Args:
        hidden: ``[R, d]``, weight: ``[V, d]`` (fp16/bf16/fp32, one dtype), targets: ``[R]`` int64
        (contiguous), scale: ``[]`` fp32, logits: ``[R, V]`` in the inputs' dtype with a unit inner
        stride: overwritten with ``scale * (softmax - onehot)``, the softmax of the logits rounded
        to that dtype (as the matmul + row step take it).
    Returns:
        ``losses [R]`` float32: ``logsumexp - logit[target]`` of the rounded logits, 0 on ignored
        rows.
    """
    check_kernel_dtype("hidden", hidden)
    rows, vocab = hidden.shape[0], weight.shape[0]
    if logits.shape != (rows, vocab) or logits.dtype != hidden.dtype or logits.stride(1) != 1:
        raise ValueError(
            f"logits must be [{rows}, {vocab}] {hidden.dtype} with a unit inner stride, got "
            f"{list(logits.shape)} {logits.dtype} with strides {logits.stride()}"
        )
    losses = torch.empty(rows, dtype=torch.float32, device=logits.device)
    if not rows:
        return losses
    with device_guard(logits):
        _, _, _, row_max, log2_sum = logprob_gather.forward(
            hidden, weight, targets, ignore_index=ignore_index, logits_out=logits
        )
        _softmax_grad_kernel[(rows, triton.cdiv(vocab, BLOCK))](
            logits, targets, row_max, log2_sum, scale, losses, vocab, logits.stride(0), ignore_index,
            BLOCK=BLOCK, num_warps=NUM_WARPS,
        )  # fmt: skip
    return losses


def fused_chunk_step(hidden_size: int):
    """The chunk step of ``fused_loss.loss_and_grads`` for hidden size ``hidden_size``:
    :func:`cross_entropy_chunk_` from ``LOGITS_KERNEL_MIN_HIDDEN`` on, else the cuBLAS matmul then
    :func:`cross_entropy_rows_`."""
    if hidden_size >= LOGITS_KERNEL_MIN_HIDDEN:
        return cross_entropy_chunk_
    return matmul_then(cross_entropy_rows_)
