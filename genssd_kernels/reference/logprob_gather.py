"""Reference ``logprob_gather``: plain PyTorch, materializes the ``[N, V]`` logits.

The matmul runs in the input dtype (this is "the same-dtype PyTorch reference" of the tolerance
rule); softmax statistics are taken in float32, or float64 for float64 inputs. Gradients come
from autograd.
"""

from __future__ import annotations

import torch


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the outputs and softmax statistics for inputs of ``dtype`` (every backend's)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def segment_mean(token_logprobs: torch.Tensor, valid: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Mean of the valid entries of each segment; ``-inf`` for a segment with none.

    Args:
        token_logprobs: ``[N]`` float.
        valid: ``[N]`` bool, False for ignored rows.
        cu_seqlens: ``[S+1]`` int, segment ``s`` is rows ``cu_seqlens[s]:cu_seqlens[s+1]``.
    Returns:
        ``[S]`` in the dtype of ``token_logprobs``.
    """
    # Prefix sums in float64 are deterministic on every device and lose < 1e-12 relative to a
    # sequential sum at the sizes used here (N <= 1e6), far below the fp32 output precision.
    values = torch.where(valid, token_logprobs.detach().to(torch.float64), 0.0)
    zero = values.new_zeros(1)
    sums = torch.cat([zero, values.cumsum(0)])
    counts = torch.cat([zero, valid.to(torch.float64).cumsum(0)])
    bounds = cu_seqlens.long()
    seg_sum = sums[bounds[1:]] - sums[bounds[:-1]]
    seg_count = counts[bounds[1:]] - counts[bounds[:-1]]
    mean = torch.where(seg_count > 0, seg_sum / seg_count.clamp_min(1), float("-inf"))
    return mean.to(token_logprobs.dtype)


def logprob_gather(hidden, weight, targets, cu_seqlens, temperature, ignore_index, return_entropy):
    """See :func:`genssd_kernels.ops.logprob_gather`; arguments are already validated."""
    stat = stat_dtype(hidden.dtype)
    logits = (hidden @ weight.T).to(stat) / temperature  # [N, V]
    log_probs = torch.log_softmax(logits, dim=-1)
    valid = targets != ignore_index
    safe_targets = torch.where(valid, targets, 0)
    picked = log_probs.gather(1, safe_targets[:, None]).squeeze(1)
    token_logprobs = torch.where(valid, picked, torch.zeros((), dtype=stat, device=picked.device))
    entropy = None
    if return_entropy:
        with torch.no_grad():
            entropy = -(log_probs.exp() * log_probs).sum(-1)
    means = None if cu_seqlens is None else segment_mean(token_logprobs, valid, cu_seqlens)
    return token_logprobs, entropy, means
