"""Reference ``branch_prune``: vectorized PyTorch over all groups at once (host syncs allowed)."""

from __future__ import annotations

import torch


def branch_prune(scores, group_offsets, margin, k, min_score):
    """See :func:`genssd_kernels.ops.branch_prune`; arguments are already validated.

    Returns ``keep_mask [C] bool, kept_idx [P, k] int64, kept_count [P] int32, group_mean [P] fp32``.
    """
    device = scores.device
    num_groups = group_offsets.numel() - 1
    offsets = group_offsets.long()
    sizes = offsets[1:] - offsets[:-1]
    group_of = torch.repeat_interleave(torch.arange(num_groups, device=device), sizes)  # [C]

    work = scores.to(torch.float64)
    work = torch.where(torch.isnan(work), float("-inf"), work)
    finite = torch.isfinite(work)
    zero = work.new_zeros(1)
    sums = torch.cat([zero, torch.where(finite, work, 0.0).cumsum(0)])
    counts = torch.cat([zero, finite.to(torch.float64).cumsum(0)])
    group_sum = sums[offsets[1:]] - sums[offsets[:-1]]
    group_count = counts[offsets[1:]] - counts[offsets[:-1]]
    group_mean = torch.where(group_count > 0, group_sum / group_count.clamp_min(1), float("-inf")).float()

    # The thresholds are formed and compared in float32, exactly as the kernels do, so that
    # every backend draws the same line through near-equal scores.
    score32 = work.float()
    threshold = group_mean[group_of] - torch.tensor(margin, dtype=torch.float32)
    survives = (
        (score32 > float("-inf"))
        & (score32 >= threshold)
        & (score32 >= torch.tensor(min_score, dtype=torch.float32))
    )

    # Order candidates by (group asc, score desc, index asc): two stable sorts.
    by_score = torch.sort(work, descending=True, stable=True).indices
    by_group = by_score[torch.sort(group_of[by_score], stable=True).indices]
    ordered_survives = survives[by_group]
    ordered_group = group_of[by_group]
    rank_in_group = torch.zeros_like(by_group)
    if by_group.numel():
        running = ordered_survives.long().cumsum(0)
        first_of_group = torch.cat([running.new_zeros(1), running])[offsets[:-1]]
        rank_in_group = running - 1 - first_of_group[ordered_group]
    kept = ordered_survives & (rank_in_group < k)

    keep_mask = torch.zeros_like(survives)
    keep_mask[by_group[kept]] = True
    kept_idx = torch.full((num_groups, k), -1, dtype=torch.int64, device=device)
    kept_idx[ordered_group[kept], rank_in_group[kept]] = by_group[kept]
    kept_count = torch.zeros(num_groups, dtype=torch.int64, device=device)
    kept_count.index_add_(0, ordered_group[kept], torch.ones_like(ordered_group[kept]))
    return keep_mask, kept_idx, kept_count.to(torch.int32), group_mean
