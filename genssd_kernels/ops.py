"""Public ops: docstring with shapes -> validation -> dispatch.

Shapes, dtypes, devices and scalars are checked on the host before any kernel launch; a bad
one raises ``ValueError`` naming the argument. Checks of tensor *values* (target range, offsets
from 0 to the row count, non-decreasing) run unless ``check_values=False``:

- CPU tensors: on the host, before any launch, raising ``ValueError`` naming the argument.
- CUDA tensors: on the device, without waiting (reading values back would be a host sync):
  Triton check kernels (``genssd_kernels/triton/value_checks.py``; ``branch_prune`` checks inside
  its own kernel on the triton backend, in a small kernel of the extension on cpp) end in a
  device-side assert whose message names the op and the argument. It is printed on stderr, and
  the error surfaces at the next synchronizing point as a CUDA error (the process cannot go on
  using the GPU). So the default call launches without a host sync and can be captured in a CUDA
  graph (the checks replay too).
"""

from __future__ import annotations

import math

import torch

from genssd_kernels import reference
from genssd_kernels.dispatch import resolve_backend, unavailable_reason
from genssd_kernels.fused_loss import FusedLinearCrossEntropy, matmul_then

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INDEX_DTYPES = (torch.int32, torch.int64)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


# The device-side message of a bad target: one for both ops, since linear_cross_entropy
# validates through _validate_gather too.
GATHER_OP = "logprob_gather / linear_cross_entropy"


def _check_on_device(op: str, **checks) -> None:
    """Launch the value checks of CUDA tensors without waiting (``value_checks.check_values``'s
    keywords). Where triton is missing, ``torch._assert_async`` checks the same conditions."""
    targets, offsets = checks.get("targets"), checks.get("offsets")
    device = (targets if targets is not None else offsets).device
    if unavailable_reason("triton", device) is None:
        from genssd_kernels.triton import value_checks

        value_checks.check_values(op, **checks)
        return
    if targets is not None and targets.numel():
        in_range = (targets >= 0) & (targets < checks["vocab"]) | (targets == checks["ignore_index"])
        torch._assert_async(
            in_range.all(), f"genssd_kernels.{op}: targets must lie in [0, V) or equal ignore_index"
        )
    if offsets is not None:
        valid = (offsets[0] == 0) & (offsets[-1] == checks["total"]) & (offsets[1:] >= offsets[:-1]).all()
        name, total = checks["offsets_name"], checks.get("total_name", "the row count")
        torch._assert_async(
            valid, f"genssd_kernels.{op}: {name} must start at 0, end at {total} and be non-decreasing"
        )


def _check_offsets(
    name: str, offsets: torch.Tensor, total: int, device: torch.device, check_values: bool
) -> None:
    # Messages are formatted only on failure: branch_prune validates on every call of a hot loop.
    if not isinstance(offsets, torch.Tensor):
        raise ValueError(f"{name} must be a tensor")
    if offsets.dim() != 1 or offsets.numel() < 1:
        raise ValueError(f"{name} must be 1-D with at least one entry, got shape {tuple(offsets.shape)}")
    if offsets.dtype not in INDEX_DTYPES:
        raise ValueError(f"{name} must be int32 or int64, got {offsets.dtype}")
    if offsets.device != device:
        raise ValueError(f"{name} is on {offsets.device} but the data is on {device}")
    # CUDA offsets are checked on the device by the caller (see the module docstring).
    if check_values and not offsets.is_cuda:
        first, last = offsets[0].item(), offsets[-1].item()
        _check(first == 0, f"{name} must start at 0, got {first}")
        _check(last == total, f"{name} must end at {total} (the number of rows), got {last}")
        _check(bool((offsets[1:] >= offsets[:-1]).all()), f"{name} must be non-decreasing")


def _autocast_operands(hidden, weight):
    """``hidden`` and ``weight`` in the autocast dtype when autocast is on for their device (the
    LM-head matmul ``F.linear`` would run there; fp64 is left alone, as autocast does), else as given.

    Under ``bf16=True`` training the head's master weight stays fp32: without this cast the three
    loss matmuls ran in fp32, 1.7x the unpatched Trainer step (H200, Qwen2-0.5B shape).
    """
    if not (isinstance(hidden, torch.Tensor) and isinstance(weight, torch.Tensor)):
        return hidden, weight
    device_type = hidden.device.type
    if device_type not in ("cuda", "cpu") or not torch.is_autocast_enabled(device_type):
        return hidden, weight
    dtype = torch.get_autocast_dtype(device_type)
    low = (torch.float32, torch.float16, torch.bfloat16)
    return tuple(t.to(dtype) if t.dtype in low else t for t in (hidden, weight))


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
    if check_values and targets.numel() and not targets.is_cuda:
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
    if check_values and hidden.is_cuda:
        # CUDA values: one check launch for both, no host sync (see the module docstring).
        _check_on_device(
            GATHER_OP,
            targets=targets,
            vocab=weight.shape[0],
            ignore_index=ignore_index,
            offsets=cu_seqlens,
            offsets_name="cu_seqlens",
            total=hidden.shape[0],
            total_name="N (the number of rows)",
        )


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
        weight: ``[V, d]`` the LM head, same dtype and device as ``hidden`` (under autocast both
            are cast to the autocast dtype first, as ``F.linear`` would be).
        targets: ``[N]`` int64 token ids in ``[0, V)`` or ``ignore_index``.
        cu_seqlens: ``[S+1]`` int32/int64 segment boundaries (0 first, N last, non-decreasing).
        temperature: logits are divided by it before the softmax.
        ignore_index: rows with this target give exactly 0 and are left out of the segment means.
        return_entropy: also return each row's softmax entropy.
        backend: ``"reference"``, ``"cpp"`` or ``"triton"``; None picks one (see ``dispatch``).
        check_values: validate the targets' range and ``cu_seqlens``' values: on CPU on the host
            (``ValueError`` at the call), on CUDA on the device without a host sync (a device-side
            assert naming the op and argument, raised at the next synchronizing point).

    Returns:
        ``token_logprobs [N]`` fp32 (fp64 for fp64 inputs), differentiable in ``hidden`` and
        ``weight``; ``entropy [N]`` or None; ``segment_mean [S]`` (-inf for an empty segment) or None.
    """
    hidden, weight = _autocast_operands(hidden, weight)
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
      scalar. Extra memory: one ``[R, V]`` chunk (<= 512 MiB on CUDA, or N / 8 rows, or an fp32
      ``[V, d]`` accumulator for 16-bit inputs: ``fused_loss.plan_chunks``) plus the gradients,
      held from the forward to the backward (``genssd_kernels.fused_loss``).
    - **recompute** (``reduction="none"``, ``recompute=True``, or no gradient needed): the fused
      ``logprob_gather`` forward, whose backward recomputes the logits by vocabulary chunks
      (four matmul-sized passes). It holds nothing between forward and backward beyond the
      inputs and two floats a row: choose it when memory is tighter than speed.

    The first path takes the softmax of the logits rounded to the input dtype (as
    ``F.cross_entropy(hidden @ weight.T)`` does); the second keeps them in float32. The
    ``reference`` backend always differentiates the materialized logits with autograd.

    Args:
        hidden: ``[N, d]``; weight: ``[V, d]`` (one dtype; under autocast both are cast to the
            autocast dtype, as ``F.linear`` would be); targets: ``[N]`` int64 (``ignore_index`` rows
            skipped).
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
        # The recomputing path below casts in logprob_gather.
        hidden, weight = _autocast_operands(hidden, weight)
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
        from genssd_kernels.triton.cross_entropy_rows import fused_chunk_step
        from genssd_kernels.triton.scale import scaled

        check_kernel_dtype("hidden", hidden)
        with device_guard(hidden):
            return FusedLinearCrossEntropy.apply(
                hidden,
                weight,
                targets,
                int(ignore_index),
                reduction,
                fused_chunk_step(hidden.shape[1]),
                scaled,
            )
    from genssd_kernels import cpp

    return FusedLinearCrossEntropy.apply(
        hidden, weight, targets, int(ignore_index), reduction, matmul_then(cpp.cross_entropy_rows_), torch.mul
    )


def _validate_prune(scores, group_offsets, margin, k, min_score, check_values):
    # Messages are formatted only on failure: this runs on every call of the search's hot loop.
    if not isinstance(scores, torch.Tensor):
        raise ValueError(f"scores must be a tensor, got {type(scores).__name__}")
    if scores.dim() != 1:
        raise ValueError(f"scores must be 1-D [C], got shape {tuple(scores.shape)}")
    if scores.dtype != torch.float32:
        raise ValueError(f"scores must be float32, got {scores.dtype}")
    if not (isinstance(k, int) and not isinstance(k, bool) and k >= 1):
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if not (isinstance(margin, (int, float)) and not math.isnan(margin) and margin >= 0):
        raise ValueError(f"margin must be a number >= 0 (inf allowed), got {margin!r}")
    if not (isinstance(min_score, (int, float)) and not math.isnan(min_score)):
        raise ValueError(f"min_score must be a number, got {min_score!r}")
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
        check_values: validate ``group_offsets``' values: on CPU on the host (``ValueError`` at the
            call); on CUDA on the device without a host sync: inside the op's kernel on the triton
            backend (no extra launch), in one small extra kernel on cpp (a device-side assert
            naming the op and argument, raised at the next synchronizing point; CUDA-graph
            capturable).

    Returns:
        ``keep_mask [C] bool``, ``kept_idx [P, k] int64`` (global indices, -1 padded),
        ``kept_count [P] int32``, ``group_mean [P] fp32``.
    """
    _validate_prune(scores, group_offsets, margin, k, min_score, check_values)
    chosen = resolve_backend(backend, scores.device, op="branch_prune")
    args = (scores, group_offsets, float(margin), int(k), float(min_score))
    on_device = check_values and scores.is_cuda
    if on_device and (chosen == "reference" or group_offsets.numel() == 1):
        # The triton and cpp kernels check their offsets themselves, but launch no program
        # without groups; the reference has no kernel of its own.
        _check_on_device(
            "branch_prune",
            offsets=group_offsets,
            offsets_name="group_offsets",
            total=scores.shape[0],
            total_name="C (the number of scores)",
        )
    if chosen == "reference":
        return reference.branch_prune(*args)
    if chosen == "cpp":
        from genssd_kernels import cpp

        return cpp.branch_prune(*args, check_values=on_device)
    from genssd_kernels.triton import branch_prune as triton_prune

    return triton_prune.branch_prune(*args, check_values=on_device)
