"""``linear_cross_entropy`` with the gradient computed during the forward (scalar losses).

When the loss is a scalar (``reduction="mean"`` or ``"sum"``, the training case), its gradient
needs only one number from upstream, so the forward computes it right away: for each chunk of
``R`` rows,

1. ``logits = hidden[rows] @ weight.T`` (``[R, V]`` in the input dtype, one matmul);
2. the row step (``cross_entropy_rows_``: Triton on CUDA, PyTorch on CPU) takes each row's
   softmax statistics, writes its loss, and overwrites the logits with
   ``scale * (softmax - onehot)``, ``scale`` being ``1 / count`` for the mean (a device tensor:
   no host sync) and 1 for the sum (steps 1 and 2 are the chunk step: :func:`matmul_then` a row
   step, or Triton's ``cross_entropy_chunk_``, which takes the statistics while it writes the
   logits: the default from d = 2048 on, ``cross_entropy_rows.fused_chunk_step``);
3. ``grad_hidden[rows] = grad_logits @ weight`` (complete per chunk, one rounding) and
   ``grad_weight += grad_logits.T @ hidden[rows]``.

Training then costs three matmuls and the row step, against four matmul-sized passes for the
recomputing backward of ``logprob_gather`` (forward, recomputed logits, two gradient products).
The backward only multiplies the saved gradients by the upstream scalar, out of place, so a
retained graph can be backpropagated again (on CUDA in a Triton kernel: PyTorch's mixed-dtype
product took 0.15x the matmul at d=896, ``triton/scale.py``).

Memory: the ``[R, V]`` chunk (see :func:`plan_chunks`) and, from the forward to the backward,
the gradients themselves (``[N, d]`` and ``[V, d]``, which a backward would allocate anyway).
16-bit ``grad_weight`` is accumulated across the chunks in the input dtype: cuBLAS sums each chunk's
product in fp32 and rounds the running sum once per chunk, so its error grows with the number of
chunks. Measured on an H200 at N=32768, d=896, V=151936 (bf16): its largest error against float64
was 1.45x that of ``F.cross_entropy`` on bf16 logits at 9 chunks and 1.86x at 19 (the tolerance
rule allows 2x), where an fp32 accumulator matched the reference's error exactly but took another
``[V, d]`` fp32 buffer (519 MiB there, 2.3 GiB at d=4096) and 3-15% more time in that product.
Hence at most ``MAX_CHUNKS`` roundings: past that either the chunks grow with N (as the saved
activations do) or, where that would take more memory, an fp32 accumulator sums them
(:func:`plan_chunks`). fp32 and fp64 ``grad_weight`` are summed in their own precision.

Deterministic: chunks run in a fixed order, no atomics.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from genssd_kernels.reference.logprob_gather import stat_dtype

# The [R, V] logits chunk: at most 512 MiB on CUDA, cut into equal chunks of a multiple of
# ROW_ALIGN rows. On an H200 at N=8192, V=151936 the matmuls of ragged 3533-row chunks (1 GiB)
# ran at 1.26-1.37x the floor against 1.02-1.05x at the larger shapes; the budget sets the
# training step's peak memory (the chunk sits on top of all the saved activations) and each
# chunk adds one read-modify-write of grad_weight (hidden under the product's compute: 1.07x
# against 1.03x for a plain write at N=32768, d=4096). On CPU 64 MiB: at N=512, d=256,
# V=32000 on 2 cores, 4 MiB chunks took 2-3x the time of one 64 MiB chunk (the matmuls of a few
# rows run far below the BLAS's speed), 16 MiB still 1.1-1.8x.
CHUNK_BYTES = {"cuda": 512 * 2**20, "cpu": 64 * 2**20}
ROW_ALIGN = {"cuda": 128, "cpu": 1}
# 16-bit grad_weight's roundings (see the module docstring): 8 chunks kept its error at 1.45x the
# reference's. Fewer, larger chunks are also faster at B and C (H200, fused_loss_parts --budgets:
# 3.52x the floor at B with 10 chunks of 512 MiB, 3.30x with these 8 of 593 MiB; C 3.28 -> 3.14x).
MAX_CHUNKS = 8


class ChunkPlan(NamedTuple):
    """How :func:`loss_and_grads` walks the rows: ``rows`` per chunk, and whether 16-bit
    ``grad_weight`` is summed across the chunks in an fp32 ``[V, d]`` accumulator."""

    rows: int
    fp32_accumulator: bool


def plan_chunks(
    n: int, v: int, d: int, dtype: torch.dtype, device: torch.device, need_weight: bool
) -> ChunkPlan:
    """As few equal chunks as fit ``[rows, v]`` logits of ``dtype`` in the device's budget, rows
    rounded up to the device's alignment (at most ``n``). Where 16-bit ``grad_weight`` would be
    rounded more than ``MAX_CHUNKS`` times, the cheaper in memory of two fixes: ``MAX_CHUNKS``
    larger chunks, or the budget's chunks with an fp32 accumulator (``V x d x 4`` bytes; e.g.
    N=32768 at V=152064, d=4096 grows the chunks to 1.16 GiB instead of a 2.3 GiB accumulator, and
    N=131072 keeps 512 MiB chunks with the accumulator instead of 4.6 GiB chunks)."""
    kind = "cuda" if device.type == "cuda" else "cpu"
    budget, align = CHUNK_BYTES[kind], ROW_ALIGN[kind]
    element_size = dtype.itemsize

    def aligned_rows(chunks: int) -> int:
        rows = -(-n // chunks)
        return max(1, min(n, -(-rows // align) * align))

    chunks = max(1, -(-n * v * element_size // budget))
    rounded = need_weight and dtype in (torch.float16, torch.bfloat16)
    if chunks <= MAX_CHUNKS or not rounded:
        return ChunkPlan(aligned_rows(chunks), False)
    grown = aligned_rows(MAX_CHUNKS)
    if grown * v * element_size <= budget + v * d * 4:
        return ChunkPlan(grown, False)
    return ChunkPlan(aligned_rows(chunks), True)


def _accumulate(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``acc += a @ b`` for an fp32 ``acc`` and 16-bit ``a``, ``b``."""
    if acc.is_cuda:
        # cuBLAS sums into fp32 in its epilogue: no 16-bit rounding of the partial product.
        torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
    else:
        # The CPU has no mixed-dtype GEMM: the chunk's product is rounded once, the sum is not.
        acc.add_(torch.mm(a, b))


def matmul_then(rows_step):
    """The chunk step of ``torch.mm`` (cuBLAS, the CPU's BLAS) for the logits, then ``rows_step``
    (``(logits [R, V], targets [R], scale [], ignore_index) -> losses [R]``) over them."""

    def chunk_step(hidden, weight, targets, scale, ignore_index, logits):
        torch.mm(hidden, weight.T, out=logits)
        return rows_step(logits, targets, scale, ignore_index)

    return chunk_step


def loss_and_grads(hidden, weight, targets, *, ignore_index, reduction, chunk_step, need_hidden, need_weight):
    """The loss and its gradients in one pass (see the module docstring).

    Args:
        hidden: ``[N, d]``; weight: ``[V, d]`` (same dtype, any strides); targets: ``[N]`` int64.
        chunk_step: steps 1 and 2 for a chunk of rows, ``(hidden [R, d], weight, targets [R],
            scale [], ignore_index, logits [R, V]) -> losses [R]``, the logits buffer overwritten
            with their gradient.
        need_hidden / need_weight: which gradients to compute.
    Returns:
        ``loss []`` (float32; float64 for float64 inputs), ``grad_hidden [N, d] | None``,
        ``grad_weight [V, d] | None`` in the input dtype, for an upstream gradient of 1.
    """
    (n, d), v = hidden.shape, weight.shape[0]
    dtype, device = hidden.dtype, hidden.device
    stat = stat_dtype(dtype)
    targets = targets.contiguous()
    count = (targets != ignore_index).sum()
    scale = (
        1.0 / count.clamp_min(1).to(stat)
        if reduction == "mean"
        else torch.ones((), dtype=stat, device=device)
    )
    losses = torch.empty(n, dtype=stat, device=device)
    grad_hidden = torch.empty(n, d, dtype=dtype, device=device) if need_hidden else None
    grad_weight = None
    if need_weight:
        grad_weight = torch.empty(v, d, dtype=dtype, device=device) if n else weight.new_zeros(v, d)
    rows, fp32_accumulator = plan_chunks(n, v, d, dtype, device, need_weight)
    accumulator = torch.zeros(v, d, dtype=torch.float32, device=device) if fp32_accumulator else None
    buffer = torch.empty(min(rows, n), v, dtype=dtype, device=device)
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        chunk_hidden = hidden[r0:r1]
        logits = buffer[: r1 - r0]
        losses[r0:r1] = chunk_step(chunk_hidden, weight, targets[r0:r1], scale, ignore_index, logits)
        if need_hidden:
            torch.mm(logits, weight, out=grad_hidden[r0:r1])
        if accumulator is not None:
            _accumulate(accumulator, logits.T, chunk_hidden)
        elif need_weight and r0 == 0:
            torch.mm(logits.T, chunk_hidden, out=grad_weight)
        elif need_weight:
            grad_weight.addmm_(logits.T, chunk_hidden)
    del buffer
    if accumulator is not None:
        grad_weight.copy_(accumulator)
    return losses.sum() * scale, grad_hidden, grad_weight


class FusedLinearCrossEntropy(torch.autograd.Function):
    """The scalar loss; its gradients are computed in the forward and scaled in the backward.

    ``apply(hidden, weight, targets, ignore_index, reduction, chunk_step, scale)``: ``chunk_step``
    as in :func:`loss_and_grads`; ``scale(grad, factor [])`` gives ``grad * factor`` in ``grad``'s
    dtype, out of place (``torch.mul``, or Triton's ``scale.scaled`` on CUDA).
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index, reduction, chunk_step, scale):
        loss, grad_hidden, grad_weight = loss_and_grads(
            hidden,
            weight,
            targets,
            ignore_index=ignore_index,
            reduction=reduction,
            chunk_step=chunk_step,
            need_hidden=ctx.needs_input_grad[0],
            need_weight=ctx.needs_input_grad[1],
        )
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.scale = scale
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        # Out of place, so the saved gradients stay valid for a second backward of a retained
        # graph. A 0-dim float32 factor keeps the 16-bit dtype of the gradients.
        grad_hidden = None if grad_hidden is None else ctx.scale(grad_hidden, grad_loss)
        grad_weight = None if grad_weight is None else ctx.scale(grad_weight, grad_loss)
        return grad_hidden, grad_weight, None, None, None, None, None
