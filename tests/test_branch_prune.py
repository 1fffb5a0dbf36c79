"""``branch_prune`` on every backend available here.

Decisions (masks, kept indices, counts) must match exactly a brute-force, per-candidate reading
of the spec written here in plain Python, so a wrong reference would fail too; group means must
match within 1e-6 relative. Random scores are kept at least 1e-4 away from every threshold, so
float32/float64 rounding of a mean cannot flip a decision.
"""

import math

import numpy as np
import pytest
import torch
from conftest import DEVICES, backends_on

from genssd_kernels import branch_prune, testing

# (device, backend) pairs: every backend that can run on each device of this machine.
CASES = [
    pytest.param(device, backend, id=f"{device}-{backend}")
    for device in DEVICES
    for backend in backends_on(device, "branch_prune")
]
INF = float("inf")
NAN = float("nan")
CLEARANCE = 1e-4


def _spec(scores, offsets, margin, k, min_score):
    """Brute-force outputs as Python values: ``keep [C], kept_idx [P][k], kept_count [P], group_mean [P]``.

    The group mean is the float64 mean of the finite scores rounded to float32 (-inf without
    any); the threshold ``mean - margin`` and the comparisons are float32, as the spec says.
    """
    values = [-INF if math.isnan(x) else x for x in scores.cpu().tolist()]
    bounds = offsets.cpu().tolist()
    keep = [False] * len(values)
    kept_idx, kept_count, means = [], [], []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        members = range(lo, hi)
        finite = [values[i] for i in members if math.isfinite(values[i])]
        mean = np.float32(math.fsum(finite) / len(finite)) if finite else np.float32(-INF)
        threshold = mean - np.float32(margin)
        floor = np.float32(min_score)
        alive = [
            i
            for i in members
            if values[i] > -INF and np.float32(values[i]) >= threshold and values[i] >= floor
        ]
        chosen = sorted(alive, key=lambda i: (-values[i], i))[:k]
        for i in chosen:
            keep[i] = True
        kept_idx.append(chosen + [-1] * (k - len(chosen)))
        kept_count.append(len(chosen))
        means.append(float(mean))
    return keep, kept_idx, kept_count, means


def _check(outputs, scores, offsets, margin, k, min_score):
    keep_mask, kept_idx, kept_count, group_mean = outputs
    num_groups = offsets.numel() - 1
    assert keep_mask.dtype == torch.bool and keep_mask.shape == scores.shape
    assert kept_idx.dtype == torch.int64 and kept_idx.shape == (num_groups, k)
    assert kept_count.dtype == torch.int32 and kept_count.shape == (num_groups,)
    assert group_mean.dtype == torch.float32 and group_mean.shape == (num_groups,)
    keep, idx, count, means = _spec(scores, offsets, margin, k, min_score)
    assert keep_mask.cpu().tolist() == keep
    assert kept_idx.cpu().tolist() == idx
    assert kept_count.cpu().tolist() == count
    torch.testing.assert_close(group_mean.cpu(), torch.tensor(means, dtype=torch.float32), rtol=1e-6, atol=0)


def _clear_of_thresholds(scores, offsets, margin, min_score) -> bool:
    """True when no score lies within CLEARANCE of its group's threshold or of ``min_score``
    without being exactly on it (exact ties are decided the same way by every backend)."""
    values = [-INF if math.isnan(x) else x for x in scores.tolist()]
    bounds = offsets.tolist()
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        finite = [values[i] for i in range(lo, hi) if math.isfinite(values[i])]
        lines = [min_score] + ([math.fsum(finite) / len(finite) - margin] if finite else [])
        for i in range(lo, hi):
            if any(0 < abs(values[i] - line) < CLEARANCE for line in lines if math.isfinite(line)):
                return False
    return True


def _groups(num_groups, max_size, *, seed, dtype):
    """``[P+1]`` offsets of random sizes in ``[0, max_size]``, with group 1 empty and group 2 a singleton."""
    sizes = testing.random_offsets(num_groups, max_size, seed=seed).diff()
    sizes[1], sizes[2] = 0, 1
    return torch.cat([torch.zeros(1, dtype=torch.int64), sizes.cumsum(0)]).to(dtype)


def _random_scores(offsets, margin, min_score, seed, *, ties, specials):
    """Scores for the groups in ``offsets``, redrawn until clear of every threshold.

    ``ties`` draws from a few half-integers so equal scores are common; ``specials`` sprinkles
    NaN, +inf and -inf.
    """
    gen = torch.Generator().manual_seed(seed)
    size = int(offsets[-1])
    for _ in range(100):
        if ties:
            scores = torch.randint(-4, 5, (size,), generator=gen).float() / 2
        else:
            scores = torch.randn(size, generator=gen) * 2
        if specials:
            pick = torch.rand(size, generator=gen)
            scores[pick < 0.06] = NAN
            scores[(pick >= 0.06) & (pick < 0.1)] = INF
            scores[(pick >= 0.1) & (pick < 0.14)] = -INF
        if _clear_of_thresholds(scores, offsets, margin, min_score):
            return scores
    raise AssertionError("could not draw scores clear of the thresholds")


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("margin", [0.0, 0.5, INF], ids=["margin0", "margin0.5", "margin_inf"])
@pytest.mark.parametrize("k", [1, 3, 8])
@pytest.mark.parametrize("ties,specials", [(False, False), (True, True)], ids=["continuous", "ties+specials"])
def test_random_groups(device, backend, margin, k, ties, specials):
    """40 groups of 0..12 candidates: empty groups, groups smaller and larger than k."""
    seed = int(k * 1000 + (margin if math.isfinite(margin) else 7) * 10 + ties)
    offsets = _groups(40, 12, seed=seed, dtype=torch.int32 if k == 3 else torch.int64)
    for min_score in (-INF, -0.3):
        scores = _random_scores(offsets, margin, min_score, seed, ties=ties, specials=specials)
        scores, on_device = scores.to(device), offsets.to(device)
        outputs = branch_prune(scores, on_device, margin=margin, k=k, min_score=min_score, backend=backend)
        _check(outputs, scores, on_device, margin, k, min_score)


@pytest.mark.parametrize("device,backend", CASES)
def test_large_groups_span_several_tiles(device, backend):
    """Groups of a few hundred candidates, so kernels that tile a group must combine tiles."""
    offsets = torch.tensor([0, 150, 151, 451])
    scores = _random_scores(offsets, 0.25, -INF, 4, ties=True, specials=True)
    outputs = branch_prune(scores.to(device), offsets.to(device), margin=0.25, k=70, backend=backend)
    _check(outputs, scores, offsets, 0.25, 70, -INF)


# Worked by hand, margin 0.5, k 2:
#   group 0 = [1, 3, 2, 3, nan, -inf] (idx 0-5): mean of finite (1+3+2+3)/4 = 2.25, threshold 1.75,
#            survivors 1 (3.0), 3 (3.0), 2 (2.0); the tie 3.0/3.0 goes to the lower index -> [1, 3]
#   group 1 = [] : mean -inf, nothing kept
#   group 2 = [5, 1] (idx 6-7): mean 3, threshold 2.5 -> only 6
#   group 3 = [+inf, 0] (idx 8-9): +inf is not finite, mean 0, threshold -0.5 -> [8, 9]
#   group 4 = [-1, -1, -1] (idx 10-12): mean -1, threshold -1.5, all survive, ties -> [10, 11]
#   group 5 = [nan] (idx 13): counts as -inf, mean -inf, never survives
#   group 6 = [1, 0] (idx 14-15): mean 0.5, threshold exactly 0, so 0 survives too -> [14, 15]
HAND_SCORES = torch.tensor(
    [1.0, 3.0, 2.0, 3.0, NAN, -INF, 5.0, 1.0, INF, 0.0, -1.0, -1.0, -1.0, NAN, 1.0, 0.0]
)
HAND_OFFSETS = torch.tensor([0, 6, 6, 8, 10, 13, 14, 16])
HAND_KEPT = [[1, 3], [-1, -1], [6, -1], [8, 9], [10, 11], [-1, -1], [14, 15]]
HAND_COUNT = [2, 0, 1, 2, 2, 0, 2]
HAND_MEAN = [2.25, -INF, 3.0, 0.0, -1.0, -INF, 0.5]
HAND_KEEP = [1, 3, 6, 8, 9, 10, 11, 14, 15]
# With min_score 2.5 as well: group 0 keeps [1, 3], group 2 keeps [6], group 3 keeps only +inf,
# groups 4 and 6 keep none.
HAND_FLOOR_KEPT = [[1, 3], [-1, -1], [6, -1], [8, -1], [-1, -1], [-1, -1], [-1, -1]]
HAND_FLOOR_COUNT = [2, 0, 1, 1, 0, 0, 0]


def test_spec_oracle_on_a_hand_worked_example():
    """The brute-force oracle itself against values worked out by hand (see the next test)."""
    keep, idx, count, means = _spec(HAND_SCORES, HAND_OFFSETS, 0.5, 2, -INF)
    assert idx == HAND_KEPT and count == HAND_COUNT and means == HAND_MEAN
    assert [i for i, kept in enumerate(keep) if kept] == HAND_KEEP


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("offset_dtype", [torch.int32, torch.int64], ids=["int32", "int64"])
def test_hand_worked_example(device, backend, offset_dtype):
    scores, offsets = HAND_SCORES.to(device), HAND_OFFSETS.to(device=device, dtype=offset_dtype)
    outputs = branch_prune(scores, offsets, margin=0.5, k=2, backend=backend)
    keep_mask, kept_idx, kept_count, group_mean = outputs
    assert kept_idx.tolist() == HAND_KEPT
    assert kept_count.tolist() == HAND_COUNT
    assert group_mean.tolist() == HAND_MEAN
    assert keep_mask.nonzero().flatten().tolist() == HAND_KEEP

    keep_mask, kept_idx, kept_count, _ = branch_prune(
        scores, offsets, margin=0.5, k=2, min_score=2.5, backend=backend
    )
    assert kept_idx.tolist() == HAND_FLOOR_KEPT
    assert kept_count.tolist() == HAND_FLOOR_COUNT
    assert keep_mask.nonzero().flatten().tolist() == [1, 3, 6, 8]


@pytest.mark.parametrize("device,backend", CASES)
def test_single_candidate(device, backend):
    scores = torch.tensor([-2.5], device=device)
    offsets = torch.tensor([0, 1], device=device)
    outputs = branch_prune(scores, offsets, margin=0.0, k=3, backend=backend)
    keep_mask, kept_idx, kept_count, group_mean = outputs
    assert keep_mask.tolist() == [True]
    assert kept_idx.tolist() == [[0, -1, -1]]
    assert kept_count.tolist() == [1] and group_mean.tolist() == [-2.5]


@pytest.mark.parametrize("device,backend", CASES)
def test_min_score_above_everything_prunes_all(device, backend):
    offsets = testing.random_offsets(12, 9, min_size=1, seed=8)
    scores = torch.randn(int(offsets[-1]), generator=torch.Generator().manual_seed(8))
    floor = scores.max().item() + 1.0
    outputs = branch_prune(
        scores.to(device), offsets.to(device), margin=INF, k=4, min_score=floor, backend=backend
    )
    keep_mask, kept_idx, kept_count, group_mean = outputs
    assert not keep_mask.any() and (kept_idx == -1).all() and (kept_count == 0).all()
    assert torch.isfinite(group_mean).all()
    _check(outputs, scores, offsets, INF, 4, floor)


@pytest.mark.parametrize("device,backend", CASES)
def test_margin_inf_keeps_best_k_of_everything_finite(device, backend):
    offsets = torch.tensor([0, 7, 10])
    scores = torch.tensor([0.3, -9.0, 2.0, NAN, -INF, 1.5, 2.0, 4.0, -1.0, 0.0])
    keep_mask, kept_idx, kept_count, _ = branch_prune(
        scores.to(device), offsets.to(device), margin=INF, k=4, backend=backend
    )
    assert kept_idx.tolist() == [[2, 6, 5, 0], [7, 9, 8, -1]]
    assert kept_count.tolist() == [4, 3]
    assert keep_mask.nonzero().flatten().tolist() == [0, 2, 5, 6, 7, 8, 9]


@pytest.mark.parametrize("device,backend", CASES)
def test_no_candidates(device, backend):
    """Only empty groups (C = 0), and no groups at all (P = 0)."""
    empty = torch.zeros(0, device=device)
    keep_mask, kept_idx, kept_count, group_mean = branch_prune(
        empty, torch.zeros(4, dtype=torch.int64, device=device), margin=0.5, k=2, backend=backend
    )
    assert keep_mask.shape == (0,) and kept_idx.tolist() == [[-1, -1]] * 3
    assert kept_count.tolist() == [0] * 3 and group_mean.tolist() == [-INF] * 3
    keep_mask, kept_idx, kept_count, group_mean = branch_prune(
        empty, torch.zeros(1, dtype=torch.int64, device=device), margin=0.5, k=2, backend=backend
    )
    assert kept_idx.shape == (0, 2) and kept_count.shape == (0,) and group_mean.shape == (0,)


@pytest.mark.parametrize("device,backend", CASES)
def test_strided_scores(device, backend):
    """Scores as every other element of a buffer whose other half is junk that must not be read."""
    offsets = _groups(10, 8, seed=2, dtype=torch.int64)
    scores = _random_scores(offsets, 0.5, -INF, 2, ties=False, specials=True)
    buffer = torch.full((2 * scores.numel(),), 1e6)
    buffer[::2] = scores
    view = buffer.to(device)[::2]
    assert not view.is_contiguous()
    outputs = branch_prune(view, offsets.to(device), margin=0.5, k=3, backend=backend)
    _check(outputs, scores, offsets, 0.5, 3, -INF)


@pytest.mark.parametrize("device,backend", CASES)
def test_deterministic(device, backend):
    offsets = _groups(30, 20, seed=6, dtype=torch.int64)
    scores = _random_scores(offsets, 0.5, -INF, 6, ties=True, specials=True).to(device)
    first = branch_prune(scores, offsets.to(device), margin=0.5, k=5, backend=backend)
    second = branch_prune(scores, offsets.to(device), margin=0.5, k=5, backend=backend)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
