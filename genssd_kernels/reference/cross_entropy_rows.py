"""Reference cross-entropy row step: the loss of each row of a logits chunk and its gradient, in place.

This is the middle of ``linear_cross_entropy``'s fused-gradient path
(``genssd_kernels.fused_loss``): between the chunk's logits matmul and its two gradient matmuls,
each row's softmax statistics give its loss and overwrite the logits with
``d loss / d logits``. The CPU backends run this PyTorch version; the Triton kernel
(``genssd_kernels.triton.cross_entropy_rows``) is tested against it.
"""

from __future__ import annotations

import torch

from genssd_kernels.reference.logprob_gather import stat_dtype


def cross_entropy_rows_(
    logits: torch.Tensor, targets: torch.Tensor, scale: torch.Tensor, ignore_index: int
) -> torch.Tensor:
    """Per-row cross-entropy of ``logits``, which are overwritten with its scaled gradient.

    Args:
        logits: ``[R, V]`` (fp16/bf16/fp32/fp64, unit inner stride), overwritten with
            ``scale * (softmax(logits) - onehot(target))`` on rows whose target is not
            ``ignore_index`` and with 0 on the others.
        targets: ``[R]`` int64 in ``[0, V)`` or ``ignore_index``.
        scale: ``[]`` float32 (a device tensor, so that a mean's ``1 / count`` needs no host sync).
    Returns:
        ``losses [R]``: ``logsumexp(logits) - logits[target]``, 0 on ignored rows; float32
        (float64 for float64 logits), computed from the logits as given (before the overwrite).
    """
    stat = stat_dtype(logits.dtype)
    z = logits if logits.dtype == stat else logits.to(stat)  # in place for fp32/fp64 logits
    valid = targets != ignore_index
    safe_targets = torch.where(valid, targets, 0)[:, None]
    lse = torch.logsumexp(z, dim=1)
    losses = torch.where(valid, lse - z.gather(1, safe_targets).squeeze(1), 0.0)
    z.sub_(lse[:, None]).exp_()
    z.scatter_add_(1, safe_targets, -valid.to(stat)[:, None])
    z.mul_(torch.where(valid, scale.to(stat), 0.0)[:, None])
    if z is not logits:
        logits.copy_(z)
    return losses
