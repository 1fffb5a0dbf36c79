"""Triton ``branch_prune``: grouped threshold + top-k in a single launch, without host synchronization.

One program per group. The group's bounds are read from ``group_offsets`` inside the kernel
and the number of groups comes from the shape, so nothing is read back to the host and the
outputs have fixed sizes (usable under CUDA graph capture). The kernel writes every output
element itself, ``-1`` padding included, so the op is exactly one launch.

The offsets' values are checked in the same launch (``CHECK``): each program validates the pair
of offsets it reads anyway (``value_checks.offsets_pair_ok``) and fires a device-side assert
before it touches a score, so the default call costs no second launch and no host sync.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from genssd_kernels.triton import device_guard
from genssd_kernels.triton.value_checks import DEBUG_ONLY_ASSERTS, offsets_message, offsets_pair_ok

# One warp per group. A group is usually a few dozen candidates; with <= 64 registers a
# thread, 32 one-warp programs fit on each SM, so P=4096 groups run in a single wave on a
# 132-SM H100 (at 4 warps a program they needed two).
NUM_WARPS = 1
# A group of at most BLOCK candidates is held in registers (2 a thread) and its best k are
# picked by k rounds of arg-max: two warp reductions a round. Larger groups fall back to
# ranking by tile-against-tile comparisons in PAIR x PAIR tiles (32 x 32 keeps the kernel
# within 64 registers).
BLOCK = 64
PAIR = 32
MESSAGE = offsets_message("branch_prune", "group_offsets", "C (the number of scores)")


@triton.jit
def _load_scores(base_ptr, stride, idx, in_group):
    """Scores at group-local ``idx`` with NaN (and positions outside the group) as -inf."""
    s = tl.load(base_ptr + idx * stride, mask=in_group, other=float("-inf"))
    return tl.where(s != s, float("-inf"), s)


@triton.jit
def _rank_key(s, in_group, threshold, min_score):
    """The score of a survivor and -inf for everything else (which never outranks a survivor),
    and the survivor mask."""
    survives = in_group & (s > float("-inf")) & (s >= threshold) & (s >= min_score)
    return tl.where(survives, s, float("-inf")), survives


@triton.jit
def _select_in_registers(
    base, stride_s, size, start, keep_ptr, out_idx, threshold, min_score, K, BLOCK: tl.constexpr
):
    """A group of ``size <= BLOCK``: pick the best ``K`` survivors one at a time. Returns their count."""
    lanes = tl.arange(0, BLOCK)
    in_group = lanes < size
    key, alive = _rank_key(_load_scores(base, stride_s, lanes, in_group), in_group, threshold, min_score)
    rounds = tl.minimum(tl.sum(alive.to(tl.int32), axis=0), K)
    kept = tl.zeros((BLOCK,), dtype=tl.int1)
    for r in range(0, rounds):
        best = tl.max(key, axis=0)
        pick = tl.min(tl.where(key == best, lanes, BLOCK), axis=0)  # ties: the lowest index
        tl.store(out_idx + r, start + pick)
        kept = kept | (lanes == pick)
        key = tl.where(lanes == pick, float("-inf"), key)
    tl.store(keep_ptr + start + lanes, kept.to(tl.uint8), mask=in_group)
    return rounds


@triton.jit
def _select_by_rank(
    base, stride_s, size, start, keep_ptr, out_idx, threshold, min_score, K, PAIR: tl.constexpr
):
    """Any group size: rank every survivor by the survivors that beat it (a higher score, or an
    equal one at a lower index) and keep ranks below ``K``. Returns the number kept."""
    lanes = tl.arange(0, PAIR)
    n_survivors = tl.zeros((PAIR,), dtype=tl.int32)
    for i0 in range(0, size, PAIR):
        i = i0 + lanes
        i_in = i < size
        key_i, alive_i = _rank_key(_load_scores(base, stride_s, i, i_in), i_in, threshold, min_score)
        rank = tl.zeros((PAIR,), dtype=tl.int32)
        for j0 in range(0, size, PAIR):
            j = j0 + lanes
            j_in = j < size
            key_j, _ = _rank_key(_load_scores(base, stride_s, j, j_in), j_in, threshold, min_score)
            beats = (key_j[None, :] > key_i[:, None]) | (
                (key_j[None, :] == key_i[:, None]) & (j[None, :] < i[:, None])
            )
            rank += tl.sum(beats.to(tl.int32), axis=1)
        kept = alive_i & (rank < K)
        tl.store(keep_ptr + start + i, kept.to(tl.uint8), mask=i_in)
        tl.store(out_idx + rank, start + i, mask=kept)
        n_survivors += alive_i.to(tl.int32)
    return tl.minimum(tl.sum(n_survivors, axis=0), K)


@triton.jit
def _branch_prune_kernel(
    scores_ptr,
    offsets_ptr,
    keep_ptr,
    kept_idx_ptr,
    kept_count_ptr,
    mean_ptr,
    verdict_ptr,
    stride_s,
    stride_o,
    num_scores,
    margin,
    min_score,
    K,
    BLOCK: tl.constexpr,
    PAIR: tl.constexpr,
    CHECK: tl.constexpr,
    MESSAGE: tl.constexpr,
    WRITE_VERDICT: tl.constexpr,
):
    """Program ``p`` handles candidates ``offsets[p]:offsets[p+1]`` and writes ``keep [those]``
    (uint8), ``kept_idx [p, :K]``, ``kept_count [p]`` and ``mean [p]``. With ``CHECK`` it first
    asserts that its pair of offsets is valid (``WRITE_VERDICT``: and writes ``verdict [p]``,
    int32 1 valid / 0 not, for the interpreter, which ignores asserts)."""
    group = tl.program_id(0)
    start = tl.load(offsets_ptr + group * stride_o).to(tl.int64)
    end = tl.load(offsets_ptr + (group + 1) * stride_o).to(tl.int64)
    if CHECK:
        ok = offsets_pair_ok(start, end, group, tl.num_programs(0), num_scores)
        tl.device_assert(ok, MESSAGE)
        if WRITE_VERDICT:
            tl.store(verdict_ptr + group, ok.to(tl.int32))
    # Group-local int32 indices from here on; int64 only for the global ones that are stored.
    size = (end - start).to(tl.int32)
    base = scores_ptr + start * stride_s
    lanes = tl.arange(0, BLOCK)

    # Group mean of the finite scores, accumulated in float64 and rounded to float32.
    total = tl.zeros((BLOCK,), dtype=tl.float64)
    count = tl.zeros((BLOCK,), dtype=tl.int32)
    for c0 in range(0, size, BLOCK):
        idx = c0 + lanes
        s = _load_scores(base, stride_s, idx, idx < size)
        finite = (s > float("-inf")) & (s < float("inf"))
        total += tl.where(finite, s, 0.0).to(tl.float64)
        count += finite.to(tl.int32)
    n_finite = tl.sum(count, axis=0)
    mean64 = tl.sum(total, axis=0) / tl.maximum(n_finite, 1).to(tl.float64)
    mean = tl.where(n_finite > 0, mean64.to(tl.float32), float("-inf"))
    tl.store(mean_ptr + group, mean)
    # Formed and compared in float32, like every backend, so all draw the same line.
    threshold = mean - margin

    out_idx = kept_idx_ptr + group.to(tl.int64) * K
    if size <= BLOCK:
        n_kept = _select_in_registers(
            base, stride_s, size, start, keep_ptr, out_idx, threshold, min_score, K, BLOCK
        )
    else:
        n_kept = _select_by_rank(
            base, stride_s, size, start, keep_ptr, out_idx, threshold, min_score, K, PAIR
        )
    tl.store(kept_count_ptr + group, n_kept)
    # The -1 padding fills ranks n_kept..K-1, disjoint from the ranks written above.
    for r0 in range(0, K, BLOCK):
        r = r0 + lanes
        padding = (r < K) & (r >= n_kept)
        tl.store(out_idx + r, tl.full((BLOCK,), -1, dtype=tl.int64), mask=padding)


def branch_prune(scores, group_offsets, margin, k, min_score, check_values=False, verdict=None):
    """See :func:`genssd_kernels.ops.branch_prune`; arguments are already validated.

    Args:
        scores: ``[C]`` fp32; group_offsets: ``[P+1]`` int32/int64 (values are never read on the host).
        margin, min_score: compared in float32; k: >= 1.
        check_values: assert on the device that ``group_offsets`` is valid (P >= 1; ``ops``
            checks the offsets of P = 0 itself, since no program runs then).
        verdict: None, or ``[P]`` int32 that gets each group's check result (1 valid, 0 not).
    Returns:
        ``keep_mask [C] bool``, ``kept_idx [P, k] int64`` (-1 padded), ``kept_count [P] int32``,
        ``group_mean [P] fp32``.
    """
    num_groups = group_offsets.numel() - 1
    device = scores.device
    keep_mask = torch.empty(scores.numel(), dtype=torch.bool, device=device)
    kept_idx = torch.empty(num_groups, k, dtype=torch.int64, device=device)
    kept_count = torch.empty(num_groups, dtype=torch.int32, device=device)
    group_mean = torch.empty(num_groups, dtype=torch.float32, device=device)
    check = bool(check_values or verdict is not None)
    if num_groups:
        with device_guard(scores):
            # bool is stored through a uint8 view: one byte per element, 0 or 1.
            _branch_prune_kernel[(num_groups,)](
                scores,
                group_offsets,
                keep_mask.view(torch.uint8),
                kept_idx,
                kept_count,
                group_mean,
                verdict if verdict is not None else kept_count,
                scores.stride(0),
                group_offsets.stride(0),
                scores.numel(),
                margin,
                min_score,
                k,
                BLOCK=BLOCK,
                PAIR=PAIR,
                CHECK=check,
                MESSAGE=MESSAGE,
                WRITE_VERDICT=verdict is not None,
                num_warps=NUM_WARPS,
                # The asserts are compiled in only in debug mode; without the overflow
                # sanitizer that is the same machine code plus the check (unchecked: unchanged).
                **(DEBUG_ONLY_ASSERTS if check else {}),
            )
    return keep_mask, kept_idx, kept_count, group_mean
