"""Public ops: docstring with shapes -> validation -> dispatch.

Every check here runs before any kernel launch and raises ``ValueError`` naming the argument.
Checks that read tensor *values* (target range, offset monotonicity) cost a host
synchronization on CUDA; they run unless ``check_values=False`` or a CUDA graph is being
captured, so a hot loop whose inputs are valid by construction can skip them.
"""

from __future__ import annotations

import math

import torch

from genssd_kernels import reference
from genssd_kernels.dispatch import resolve_backend
from genssd_kernels.fused_loss import FusedLinearCrossEntropy

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INDEX_DTYPES = (torch.int32, torch.int64)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _values_checkable(*tensors: torch.Tensor) -> bool:
    on_cuda = any(t.is_cuda for t in tensors)
    return not (on_cuda and torch.cuda.is_current_stream_capturing())


def _check_offsets(
    name: str, offsets: torch.Tensor, total: int, device: torch.device, check_values: bool
) -> None:
    _check(isinstance(offsets, torch.Tensor), f"{name} must be a tensor")
    _check(
        offsets.dim() == 1 and offsets.numel() >= 1,
        f"{name} must be 1-D with at least one entry, got shape {tuple(offsets.shape)}",
    )
    _check(offsets.dtype in INDEX_DTYPES, f"{name} must be int32 or int64, got {offsets.dtype}")
    _check(offsets.device == device, f"{name} is on {offsets.device} but the data is on {device}")
    if check_values and _values_checkable(offsets):
        first, last = offsets[0].item(), offsets[-1].item()
        _check(first == 0, f"{name} must start at 0, got {first}")
        _check(last == total, f"{name} must end at {total} (the number of rows), got {last}")
        _check(bool((offsets[1:] >= offsets[:-1]).all()), f"{name} must be non-decreasing")


def _validate_gather(hidden, weight, targets, cu_seqlens, temperature, ignore_index, check_values):
    for name, t in (("hidden", hidden), ("weight", weight), ("targets", targets)):
        _check(isinstance(t, torch.Tensor), f"{name} must be a tensor, got {type(t).__name__}")
    _check(hidden.dim() == 2, f"hidden must be 2-D [N, d], got shape {tuple(hidden.shape)}")
    _check(weight.dim() == 2, f"weight must be 2-D [V, d], got shape {tuple(weight.shape)}")
    _check(targets.dim() == 1, f"targets must be 1-D [N], got shape {tuple(targets.shape)}")
    _check(
        hidden.dtype in FLOAT_DTYPES,
        f"hidden must be float16, bfloat16, float32 or float64, got {hidden.dtype}",
    )
    _check(
        weight.dtype == hidden.dtype, f"weight dtype {weight.dtype} differs from hidden dtype {hidden.dtype}"
    )
    _check(targets.dtype == torch.int64, f"targets must be int64, got {targets.dtype}")
    _check(
        hidden.shape[1] == weight.shape[1],
        f"hidden has d={hidden.shape[1]} but weight has d={weight.shape[1]}",
    )
    _check(
        targets.shape[0] == hidden.shape[0],
        f"targets has {targets.shape[0]} rows but hidden has {hidden.shape[0]}",
    )
    _check(
        weight.shape[0] >= 1 and hidden.shape[1] >= 1,
        f"weight must have V >= 1 and d >= 1, got {tuple(weight.shape)}",
    )
    _check(weight.device == hidden.device, f"weight is on {weight.device} but hidden is on {hidden.device}")
    _check(
        targets.device == hidden.device, f"targets is on {targets.device} but hidden is on {hidden.device}"
    )
    _check(
        isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0,
        f"temperature must be a finite number > 0, got {temperature!r}",
    )
    _check(isinstance(ignore_index, int), f"ignore_index must be an int, got {ignore_index!r}")
    if check_values and targets.numel() and _values_checkable(targets):
        valid = targets[targets != ignore_index]
        if valid.numel():
            low, high = valid.min().item(), valid.max().item()
            _check(
                low >= 0 and high < weight.shape[0],
                f"targets must lie in [0, {weight.shape[0]}) or equal ignore_index={ignore_index}, "
                f"got values in [{low}, {high}]",
            )
    if cu_seqlens is not None:
        _check_offsets("cu_seqlens", cu_seqlens, hidden.shape[0], hidden.device, check_values)


def logprob_gather(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    cu_seqlens: torch.Tensor | None = None,
    temperature: float = 1.0,
    ignore_index: int = -100,
    return_entropy: bool = False,
    backend: str | None = None,
    check_values: bool = True,
):
    """Log-probability of each target token straight from hidden states, without ``[N, V]`` logits.

    Args:
        hidden: ``[N, d]`` final hidden states (fp32/fp16/bf16; fp64 on the reference and cpp backends).
        weight: ``[V, d]`` the LM head, same dtype and device as ``hidden``.
        targets: ``[N]`` int64 token ids in ``[0, V)`` or ``ignore_index``.
        cu_seqlens: ``[S+1]`` int32/int64 segment boundaries (0 first, N last, non-decreasing).
        temperature: logits are divided by it before the softmax.
        ignore_index: rows with this target give exactly 0 and are left out of the segment means.
        return_entropy: also return each row's softmax entropy.
        backend: ``"reference"``, ``"cpp"`` or ``"triton"``; None picks one (see ``dispatch``).
        check_values: validate target range and offsets (a host sync on CUDA).

    Returns:
        ``token_logprobs [N]`` fp32 (fp64 for fp64 inputs), differentiable in ``hidden`` and
        ``weight``; ``entropy [N]`` or None; ``segment_mean [S]`` (-inf for an empty segment) or None.
    """
    _validate_gather(hidden, weight, targets, cu_seqlens, temperature, ignore_index, check_values)
    chosen = resolve_backend(backend, hidden.device, op="logprob_gather")
    args = (hidden, weight, targets, cu_seqlens, float(temperature), int(ignore_index), bool(return_entropy))
    if chosen == "reference":
        return reference.logprob_gather(*args)
    if chosen == "cpp":
        from genssd_kernels import cpp

        return cpp.logprob_gather(*args)
    from genssd_kernels.triton import logprob_gather as triton_gather

    return triton_gather.logprob_gather(*args)


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    backend: str | None = None,
    check_values: bool = True,
    recompute: bool = False,
) -> torch.Tensor:
    """Cross-entropy of ``hidden @ weight.T`` against ``targets`` without materializing the logits.

    Two gradient paths:

    - **gradient in the forward** (the default for ``reduction="mean"|"sum"`` when autograd
      will need a gradient, on the ``triton`` and ``cpp`` backends): the forward walks the rows
      in chunks, computes each chunk's ``[R, V]`` logits, its losses and ``d loss / d logits``,
      and both gradients (three matmuls in all); the backward scales them by the upstream
      scalar. Extra memory: one ``[R, V]`` chunk (<= 1 GiB on CUDA) plus the gradients, held
      from the forward to the backward (``genssd_kernels.fused_loss``).
    - **recompute** (``reduction="none"``, ``recompute=True``, or no gradient needed): the fused
      ``logprob_gather`` forward, whose backward recomputes the logits by vocabulary chunks
      (four matmul-sized passes). It holds nothing between forward and backward beyond the
      inputs and two floats a row: choose it when memory is tighter than speed.

    The first path takes the softmax of the logits rounded to the input dtype (as
    ``F.cross_entropy(hidden @ weight.T)`` does); the second keeps them in float32. The
    ``reference`` backend always differentiates the materialized logits with autograd.

    Args:
        hidden: ``[N, d]``; weight: ``[V, d]``; targets: ``[N]`` int64 (``ignore_index`` rows skipped).
        reduction: ``"mean"`` over non-ignored rows (0 when there are none), ``"sum"``, or
            ``"none"`` for the ``[N]`` per-row losses (0 on ignored rows).
        recompute: take the recomputing path even for a scalar loss.
    Returns:
        a scalar fp32 loss, or ``[N]`` fp32 for ``reduction="none"`` (fp64 for fp64 inputs).
    """
    _check(
        reduction in ("mean", "sum", "none"), f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}"
    )
    _check(isinstance(recompute, bool), f"recompute must be a bool, got {recompute!r}")
    needs_grad = torch.is_grad_enabled() and any(
        isinstance(t, torch.Tensor) and t.requires_grad for t in (hidden, weight)
    )
    if reduction != "none" and needs_grad and not recompute:
        _validate_gather(hidden, weight, targets, None, 1.0, ignore_index, check_values)
        chosen = resolve_backend(backend, hidden.device, op="linear_cross_entropy")
        if chosen != "reference":
            return _fused_cross_entropy(hidden, weight, targets, ignore_index, reduction, chosen)
    token_logprobs, _, _ = logprob_gather(
        hidden, weight, targets, ignore_index=ignore_index, backend=backend, check_values=check_values
    )
    losses = -token_logprobs
    if reduction == "none":
        return losses
    total = losses.sum()
    if reduction == "sum":
        return total
    return total / (targets != ignore_index).sum().clamp_min(1)


def _fused_cross_entropy(hidden, weight, targets, ignore_index, reduction, backend):
    """The gradient-in-forward path of :func:`linear_cross_entropy` (arguments validated)."""
    if backend == "triton":
        from genssd_kernels.triton import check_kernel_dtype, device_guard
        from genssd_kernels.triton.cross_entropy_rows import cross_entropy_rows_

        check_kernel_dtype("hidden", hidden)
        with device_guard(hidden):
            return FusedLinearCrossEntropy.apply(
                hidden, weight, targets, int(ignore_index), reduction, cross_entropy_rows_
            )
    return FusedLinearCrossEntropy.apply(
        hidden, weight, targets, int(ignore_index), reduction, reference.cross_entropy_rows_
    )


def _validate_prune(scores, group_offsets, margin, k, min_score, check_values):
    _check(isinstance(scores, torch.Tensor), f"scores must be a tensor, got {type(scores).__name__}")
    _check(scores.dim() == 1, f"scores must be 1-D [C], got shape {tuple(scores.shape)}")
    _check(scores.dtype == torch.float32, f"scores must be float32, got {scores.dtype}")
    _check(isinstance(k, int) and not isinstance(k, bool) and k >= 1, f"k must be an int >= 1, got {k!r}")
    _check(
        isinstance(margin, (int, float)) and not math.isnan(margin) and margin >= 0,
        f"margin must be a number >= 0 (inf allowed), got {margin!r}",
    )
    _check(
        isinstance(min_score, (int, float)) and not math.isnan(min_score),
        f"min_score must be a number, got {min_score!r}",
    )
    _check_offsets("group_offsets", group_offsets, scores.shape[0], scores.device, check_values)


def branch_prune(
    scores: torch.Tensor,
    group_offsets: torch.Tensor,
    *,
    margin: float,
    k: int,
    min_score: float = float("-inf"),
    backend: str | None = None,
    check_values: bool = True,
):
    """Grouped threshold + top-k selection of candidates (one launch, fixed-size outputs).

    Group ``p`` is ``scores[group_offsets[p]:group_offsets[p+1]]``. NaN counts as -inf. A candidate
    survives iff it is finite-or-+inf (> -inf), ``score >= group_mean - margin`` and
    ``score >= min_score``, where ``group_mean`` is the mean of the group's finite scores
    (accumulated in float64, rounded to float32; -inf when there are none) and the comparisons
    are made in float32. Of the survivors the best ``k`` are kept, highest score first, ties to
    the lower index.

    Args:
        scores: ``[C]`` float32.
        group_offsets: ``[P+1]`` int32/int64, 0 first, C last, non-decreasing (empty groups allowed).
        margin: >= 0, in the units of ``scores``.
        k: >= 1, the most candidates kept per group.
        min_score: absolute floor.
        check_values: validate the offsets' values (a host sync on CUDA).

    Returns:
        ``keep_mask [C] bool``, ``kept_idx [P, k] int64`` (global indices, -1 padded),
        ``kept_count [P] int32``, ``group_mean [P] fp32``.
    """
    _validate_prune(scores, group_offsets, margin, k, min_score, check_values)
    chosen = resolve_backend(backend, scores.device, op="branch_prune")
    args = (scores, group_offsets, float(margin), int(k), float(min_score))
    if chosen == "reference":
        return reference.branch_prune(*args)
    if chosen == "cpp":
        from genssd_kernels import cpp

        return cpp.branch_prune(*args)
    from genssd_kernels.triton import branch_prune as triton_prune

    return triton_prune.branch_prune(*args)
