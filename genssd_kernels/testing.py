"""Tolerances, shapes and assertion helpers shared by the tests and the benchmarks.

The rule (docs/design.md §2.3, after flash-attention): a backend's error against the float64 reference
may be at most twice the error of the reference run in the input dtype, plus a floor.
"""

from __future__ import annotations

import torch

ERROR_FLOOR = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}

# (N, d, V): odd sizes that straddle tile edges, one row, a tiny vocabulary.
GATHER_SHAPES = [(193, 70, 517), (1, 16, 33), (64, 32, 1000), (7, 129, 65)]


def max_abs_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference; infinities must match exactly, NaN never passes."""
    actual64, expected64 = actual.detach().double().cpu(), expected.detach().double().cpu()
    if torch.isnan(actual64).any():
        return float("inf")
    inf_mask = torch.isinf(expected64)
    if not torch.equal(torch.isinf(actual64), inf_mask) or not torch.equal(
        actual64[inf_mask], expected64[inf_mask]
    ):
        return float("inf")
    finite = ~inf_mask
    if not finite.any():
        return 0.0
    return (actual64[finite] - expected64[finite]).abs().max().item()


def assert_within_tolerance(actual, same_dtype_reference, float64_reference, dtype, what="output"):
    """``err(actual) <= 2 * err(same_dtype_reference) + floor[dtype]`` against the float64 truth."""
    error = max_abs_error(actual, float64_reference)
    reference_error = max_abs_error(same_dtype_reference, float64_reference)
    bound = 2 * reference_error + ERROR_FLOOR[dtype]
    assert error <= bound, (
        f"{what}: error {error:.3g} > bound {bound:.3g} (reference error {reference_error:.3g}, {dtype})"
    )


def random_gather_inputs(n, d, v, dtype, *, device="cpu", ignore_fraction=0.1, logit_scale=1.0, seed=0):
    """Random ``hidden [n, d]``, ``weight [v, d]`` (std ``d**-0.5``) and ``targets [n]``.

    ``logit_scale`` multiplies the hidden states, e.g. 1e4 for huge logits; about
    ``ignore_fraction`` of the targets are -100.
    """
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=gen, dtype=torch.float64) * logit_scale
    weight = torch.randn(v, d, generator=gen, dtype=torch.float64) * d**-0.5
    targets = torch.randint(0, v, (n,), generator=gen)
    ignored = torch.rand(n, generator=gen) < ignore_fraction
    targets[ignored] = -100
    return hidden.to(device=device, dtype=dtype), weight.to(device=device, dtype=dtype), targets.to(device)


def random_offsets(num_groups, max_size, *, min_size=0, device="cpu", seed=0, dtype=torch.int64):
    """``[P+1]`` offsets of groups with sizes drawn from ``[min_size, max_size]``."""
    gen = torch.Generator().manual_seed(seed)
    sizes = torch.randint(min_size, max_size + 1, (num_groups,), generator=gen)
    return torch.cat([torch.zeros(1, dtype=torch.int64), sizes.cumsum(0)]).to(device=device, dtype=dtype)
