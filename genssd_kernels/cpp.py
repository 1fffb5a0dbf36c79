"""The ``cpp`` backend: the compiled ``torch.ops.genssd`` operators, plus their Python halves.

Importing this module loads ``genssd_kernels._C`` (which registers the operators and their
CPU/CUDA kernels) and registers what torch needs from Python: the fake (meta) implementations
that give output shapes under ``torch.compile``/FakeTensor, and the autograd formula of
``logprob_gather_fwd``, whose backward is the ``logprob_gather_bwd`` operator. The C++ library
names this module with ``set_python_module``, so torch imports it on its own when it needs them.
"""

from __future__ import annotations

import torch

from genssd_kernels._ext import load_extension
from genssd_kernels.reference.logprob_gather import stat_dtype

_EXTENSION, _LOAD_ERROR = load_extension()


def _ops():
    if _LOAD_ERROR is not None:
        raise RuntimeError(f"the cpp backend is unavailable: {_LOAD_ERROR}")
    return torch.ops.genssd


def _fake_logprob_gather_fwd(hidden, weight, targets, cu_seqlens, temperature, ignore_index, return_entropy):
    stat = stat_dtype(hidden.dtype)
    n = hidden.shape[0]
    token_logprobs = hidden.new_empty(n, dtype=stat)
    lse = hidden.new_empty(n, dtype=torch.float64)
    entropy = hidden.new_empty(n if return_entropy else 0, dtype=stat)
    segments = cu_seqlens.shape[0] - 1 if cu_seqlens is not None else 0
    return token_logprobs, lse, entropy, hidden.new_empty(segments, dtype=stat)


def _fake_logprob_gather_bwd(grad_logprobs, hidden, weight, targets, lse, temperature, ignore_index):
    return hidden.new_empty(hidden.shape), weight.new_empty(weight.shape)


def _fake_cross_entropy_rows_(logits, targets, scale, ignore_index):
    return logits.new_empty(logits.shape[0], dtype=stat_dtype(logits.dtype))


def _fake_branch_prune(scores, group_offsets, margin, k, min_score, check_values=True):
    groups = group_offsets.shape[0] - 1
    return (
        scores.new_empty(scores.shape[0], dtype=torch.bool),
        scores.new_empty((groups, k), dtype=torch.int64),
        scores.new_empty(groups, dtype=torch.int32),
        scores.new_empty(groups, dtype=torch.float32),
    )


def _setup_gather_context(ctx, inputs, output):
    hidden, weight, targets, _cu_seqlens, temperature, ignore_index, _return_entropy = inputs
    _token_logprobs, lse, entropy, segment_mean = output
    # Only token_logprobs is differentiable (the reference detaches the entropy and the means).
    ctx.mark_non_differentiable(lse, entropy, segment_mean)
    ctx.save_for_backward(hidden, weight, targets, lse)
    ctx.temperature = temperature
    ctx.ignore_index = ignore_index


def _gather_backward(ctx, grad_logprobs, _grad_lse, _grad_entropy, _grad_segment_mean):
    hidden, weight, targets, lse = ctx.saved_tensors
    grad_hidden, grad_weight = torch.ops.genssd.logprob_gather_bwd(
        grad_logprobs.contiguous(), hidden, weight, targets, lse, ctx.temperature, ctx.ignore_index
    )
    needs_hidden, needs_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    # One gradient per input: hidden, weight, then none for targets, cu_seqlens and the scalars.
    return (grad_hidden if needs_hidden else None, grad_weight if needs_weight else None, *[None] * 5)


if _LOAD_ERROR is None:
    torch.library.register_fake("genssd::logprob_gather_fwd")(_fake_logprob_gather_fwd)
    torch.library.register_fake("genssd::logprob_gather_bwd")(_fake_logprob_gather_bwd)
    torch.library.register_fake("genssd::branch_prune")(_fake_branch_prune)
    torch.library.register_fake("genssd::cross_entropy_rows_")(_fake_cross_entropy_rows_)
    torch.library.register_autograd(
        "genssd::logprob_gather_fwd", _gather_backward, setup_context=_setup_gather_context
    )


def logprob_gather(hidden, weight, targets, cu_seqlens, temperature, ignore_index, return_entropy):
    """See :func:`genssd_kernels.ops.logprob_gather`; arguments are already validated.

    Args:
        hidden: ``[N, d]``; weight: ``[V, d]``; targets: ``[N]`` int64; cu_seqlens: ``[S+1]`` or None.

    Returns:
        ``token_logprobs [N]`` (differentiable in ``hidden`` and ``weight``), ``entropy [N]`` or
        None, ``segment_mean [S]`` or None; float32, or float64 for float64 inputs.
    """
    token_logprobs, _lse, entropy, segment_mean = _ops().logprob_gather_fwd(
        hidden, weight, targets, cu_seqlens, temperature, ignore_index, return_entropy
    )
    entropy = entropy if return_entropy else None
    return token_logprobs, entropy, segment_mean if cu_seqlens is not None else None


def cross_entropy_rows_(logits, targets, scale, ignore_index):
    """The row step of ``linear_cross_entropy``'s gradient-in-forward path, compiled (CPU).

    See :func:`genssd_kernels.reference.cross_entropy_rows.cross_entropy_rows_`: ``logits [R, V]``
    (unit inner stride) are overwritten with their scaled gradient; returns ``losses [R]``.
    """
    return _ops().cross_entropy_rows_(logits, targets, scale, ignore_index)


def branch_prune(scores, group_offsets, margin, k, min_score, check_values=False):
    """See :func:`genssd_kernels.ops.branch_prune`; arguments are already validated.

    ``check_values``: on CUDA a small kernel asserts on the device that ``group_offsets`` is
    valid (no host sync); the CPU kernel always checks them on the host (it indexes with them
    unclamped).

    Returns ``keep_mask [C] bool, kept_idx [P, k] int64, kept_count [P] int32, group_mean [P] fp32``.
    """
    return tuple(_ops().branch_prune(scores, group_offsets, margin, k, min_score, check_values))
