"""``logprob_gather`` and ``linear_cross_entropy`` on every backend available here, against float64.

Each backend's output must satisfy the docs/design.md §2.3 rule against the reference run in float64:
``err <= 2 * err(reference in the input dtype) + floor[dtype]``. Shapes stay small because the
Triton interpreter runs these on CPU-only machines.
"""

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES, backends_on

from genssd_kernels import linear_cross_entropy, logprob_gather, testing

# (device, backend) pairs: every backend that can run on each device of this machine.
CASES = [
    pytest.param(device, backend, id=f"{device}-{backend}")
    for device in DEVICES
    for backend in backends_on(device, "logprob_gather")
]
DTYPES = [pytest.param(dtype, id=str(dtype).removeprefix("torch.")) for dtype in testing.ERROR_FLOOR]
IGNORE = -100
OUTPUT_NAMES = ("token_logprobs", "entropy", "segment_mean")


def _seed(*parts) -> int:
    """A stable per-case seed, so every parametrization draws its own data."""
    return sum((i + 1) * sum(map(ord, str(p))) for i, p in enumerate(parts)) % 100_000


def _random_cu_seqlens(n: int, seed: int, device) -> torch.Tensor:
    """``[S+1]`` int64 boundaries over ``n`` rows with a few random cuts (repeats make empty segments)."""
    gen = torch.Generator().manual_seed(seed)
    cuts = torch.randint(0, n + 1, (4,), generator=gen).sort().values
    return torch.cat([torch.tensor([0]), cuts, torch.tensor([n])]).to(device)


def _check_forward(backend, hidden, weight, targets, **kwargs):
    """Run ``backend`` and check all its outputs under the tolerance rule; returns them."""
    dtype = hidden.dtype
    outputs = logprob_gather(hidden, weight, targets, backend=backend, **kwargs)
    same_dtype = logprob_gather(hidden, weight, targets, backend="reference", **kwargs)
    truth = logprob_gather(hidden.double(), weight.double(), targets, backend="reference", **kwargs)
    for name, actual, reference, exact in zip(OUTPUT_NAMES, outputs, same_dtype, truth):
        if exact is None:
            assert actual is None, f"{name} should be None"
            continue
        assert actual.dtype == torch.float32 and actual.shape == exact.shape
        assert actual.device == hidden.device
        testing.assert_within_tolerance(actual, reference, exact, dtype, what=f"{backend} {name}")
    ignored = targets == kwargs.get("ignore_index", IGNORE)
    assert torch.all(outputs[0][ignored] == 0), "ignored rows must give exactly 0"
    return outputs


def _gradients(backend, hidden, weight, targets, upstream, **kwargs):
    """``d(sum(token_logprobs * upstream)) / d(hidden, weight)``, computed through ``backend``.

    ``detach`` (not ``clone``) keeps the inputs' strides, so strided layouts reach the backward.
    """
    hidden = hidden.detach().requires_grad_(True)
    weight = weight.detach().requires_grad_(True)
    token_logprobs, _, _ = logprob_gather(hidden, weight, targets, backend=backend, **kwargs)
    (token_logprobs * upstream.to(token_logprobs.dtype)).sum().backward()
    return hidden.grad, weight.grad


def _check_gradients(backend, hidden, weight, targets, upstream, **kwargs):
    dtype = hidden.dtype
    grads = _gradients(backend, hidden, weight, targets, upstream, **kwargs)
    same_dtype = _gradients("reference", hidden, weight, targets, upstream, **kwargs)
    truth = _gradients("reference", hidden.double(), weight.double(), targets, upstream, **kwargs)
    for name, actual, reference, exact, source in zip(
        ("hidden", "weight"), grads, same_dtype, truth, (hidden, weight)
    ):
        assert actual.dtype == dtype and actual.shape == source.shape
        testing.assert_within_tolerance(actual, reference, exact, dtype, what=f"{backend} grad {name}")
    ignored = targets == kwargs.get("ignore_index", IGNORE)
    assert torch.all(grads[0][ignored] == 0), "ignored rows must get exactly zero gradient"
    return grads


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", testing.GATHER_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_matches_float64(device, backend, dtype, shape):
    n, d, v = shape
    seed = _seed(shape, dtype)
    hidden, weight, targets = testing.random_gather_inputs(n, d, v, dtype, device=device, seed=seed)
    _check_forward(
        backend, hidden, weight, targets, cu_seqlens=_random_cu_seqlens(n, seed, device), return_entropy=True
    )


def _strided_layouts(n, d, v, dtype, device, seed):
    """(name, hidden, weight) views with non-unit strides over random data."""
    gen = torch.Generator().manual_seed(seed)
    wide = torch.randn(n, 3 * d, generator=gen).to(device=device, dtype=dtype)
    transposed = torch.randn(d, n, generator=gen).to(device=device, dtype=dtype)
    column_major = (torch.randn(d, v, generator=gen) * d**-0.5).to(device=device, dtype=dtype)
    every_other = (torch.randn(2 * v, d, generator=gen) * d**-0.5).to(device=device, dtype=dtype)
    return [
        ("column-stride-3 hidden, column-major weight", wide[:, ::3], column_major.t()),
        ("transposed hidden, every-other-row weight", transposed.t(), every_other[::2]),
    ]


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_non_contiguous_inputs(device, backend, dtype):
    n, d, v = 45, 40, 150
    gen = torch.Generator().manual_seed(_seed("strided", dtype))
    targets = torch.randint(0, v, (n,), generator=gen)
    targets[torch.rand(n, generator=gen) < 0.2] = IGNORE
    targets = targets.to(device)
    upstream = torch.randn(n, generator=gen).to(device)
    seed = _seed("strided layouts", dtype)
    for layout, hidden, weight in _strided_layouts(n, d, v, dtype, device, seed):
        assert not hidden.is_contiguous() and not weight.is_contiguous(), layout
        _check_forward(backend, hidden, weight, targets, return_entropy=True)
        _check_gradients(backend, hidden, weight, targets, upstream)


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("temperature", [0.6, 2.5])
def test_temperature_and_ignored_rows(device, backend, temperature):
    hidden, weight, targets = testing.random_gather_inputs(
        64, 48, 300, torch.float32, device=device, seed=_seed("temperature", temperature), ignore_fraction=0.3
    )
    assert (targets == IGNORE).any() and (targets != IGNORE).any()
    _check_forward(backend, hidden, weight, targets, temperature=temperature, return_entropy=True)


@pytest.mark.parametrize("device,backend", CASES)
def test_custom_ignore_index_inside_vocabulary(device, backend):
    """An ``ignore_index`` that is also a real token id still zeroes exactly the rows that carry it."""
    hidden, weight, targets = testing.random_gather_inputs(
        30, 32, 90, torch.float32, device=device, seed=5, ignore_fraction=0.0
    )
    targets[::4] = 7
    outputs = _check_forward(backend, hidden, weight, targets, ignore_index=7)
    assert torch.all(outputs[0][targets != 7] < 0)


# Hidden states scaled so that |logits| reach ~1e4 (fp16 keeps them below its 65504 range).
HUGE_SCALE = {torch.float32: 1e4, torch.bfloat16: 1e4, torch.float16: 2e3}


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_huge_logits_do_not_overflow(device, backend, dtype):
    hidden, weight, targets = testing.random_gather_inputs(
        33, 40, 300, dtype, device=device, seed=_seed("huge", dtype), logit_scale=HUGE_SCALE[dtype]
    )
    logits = hidden.double() @ weight.double().T
    assert logits.abs().max() > 5e3
    token_logprobs, entropy, _ = _check_forward(backend, hidden, weight, targets, return_entropy=True)
    assert torch.isfinite(token_logprobs).all() and torch.isfinite(entropy).all()


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("offset_dtype", [torch.int32, torch.int64], ids=["int32", "int64"])
def test_segment_means_with_empty_and_all_ignored_segments(device, backend, offset_dtype):
    hidden, weight, targets = testing.random_gather_inputs(
        40, 24, 100, torch.float32, device=device, seed=_seed("segments", offset_dtype), ignore_fraction=0.2
    )
    targets[0:5] = IGNORE
    targets[5] = 3  # the segment 5:17 has at least one valid row
    # Segments: empty, all ignored, mixed, empty, mixed.
    cu_seqlens = torch.tensor([0, 0, 5, 17, 17, 40], dtype=offset_dtype, device=device)
    token_logprobs, _, means = _check_forward(backend, hidden, weight, targets, cu_seqlens=cu_seqlens)
    assert means.tolist()[0:2] == [float("-inf")] * 2 and means[3].item() == float("-inf")
    for s, lo, hi in [(2, 5, 17), (4, 17, 40)]:
        valid = targets[lo:hi] != IGNORE
        expected = token_logprobs[lo:hi][valid].double().mean().item()
        assert means[s].item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_gradients_match_float64_autograd(device, backend, dtype, temperature):
    seed = _seed("grad", dtype, temperature)
    hidden, weight, targets = testing.random_gather_inputs(
        37, 24, 70, dtype, device=device, seed=seed, ignore_fraction=0.3
    )
    upstream = torch.randn(37, generator=torch.Generator().manual_seed(seed)).to(device)
    _check_gradients(backend, hidden, weight, targets, upstream, temperature=temperature)


@pytest.mark.parametrize("device,backend", CASES)
def test_statistics_are_not_differentiable(device, backend):
    hidden, weight, targets = testing.random_gather_inputs(9, 16, 40, torch.float32, device=device, seed=3)
    hidden.requires_grad_(True)
    cu_seqlens = torch.tensor([0, 4, 9], device=device)
    token_logprobs, entropy, means = logprob_gather(
        hidden, weight, targets, cu_seqlens=cu_seqlens, return_entropy=True, backend=backend
    )
    assert token_logprobs.requires_grad
    assert not entropy.requires_grad and not means.requires_grad


def _cross_entropy_truth(hidden, weight, targets, reduction):
    """``F.cross_entropy`` on explicit logits (float32 statistics, float64 for float64 inputs)."""
    logits = hidden @ weight.T
    logits = logits.double() if logits.dtype == torch.float64 else logits.float()
    return F.cross_entropy(logits, targets, ignore_index=IGNORE, reduction=reduction)


def _loss_and_grads(loss_fn, hidden, weight, upstream):
    hidden = hidden.detach().clone().requires_grad_(True)
    weight = weight.detach().clone().requires_grad_(True)
    loss = loss_fn(hidden, weight)
    (loss * upstream.to(loss.dtype)).sum().backward()
    return loss.detach(), hidden.grad, weight.grad


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_linear_cross_entropy_matches_torch(device, backend, dtype, reduction):
    n = 50
    seed = _seed("lce", dtype, reduction)
    hidden, weight, targets = testing.random_gather_inputs(
        n, 32, 120, dtype, device=device, seed=seed, ignore_fraction=0.2
    )
    upstream = torch.randn(n if reduction == "none" else (), generator=torch.Generator().manual_seed(seed))
    upstream = upstream.to(device)

    def fused(h, w):
        return linear_cross_entropy(h, w, targets, ignore_index=IGNORE, reduction=reduction, backend=backend)

    def explicit(h, w):
        return _cross_entropy_truth(h, w, targets, reduction)

    actual = _loss_and_grads(fused, hidden, weight, upstream)
    same_dtype = _loss_and_grads(explicit, hidden, weight, upstream)
    truth = _loss_and_grads(explicit, hidden.double(), weight.double(), upstream)
    assert actual[0].dtype == torch.float32 and actual[0].shape == truth[0].shape
    if reduction == "sum":
        # The error floors are per token; a sum of n fp32 losses is only good to ~n ulps of one.
        scale = (targets != IGNORE).sum().item()
        actual, same_dtype, truth = [(loss / scale, *grads) for loss, *grads in (actual, same_dtype, truth)]
    for name, a, r, t in zip(("loss", "grad hidden", "grad weight"), actual, same_dtype, truth):
        testing.assert_within_tolerance(a, r, t, dtype, what=f"{backend} {reduction} {name}")


@pytest.mark.parametrize("device,backend", CASES)
def test_linear_cross_entropy_all_ignored_is_zero(device, backend):
    hidden, weight, _ = testing.random_gather_inputs(6, 16, 30, torch.float32, device=device, seed=11)
    targets = torch.full((6,), IGNORE, device=device)
    hidden.requires_grad_(True)
    loss = linear_cross_entropy(hidden, weight, targets, reduction="mean", backend=backend)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.all(hidden.grad == 0)


@pytest.mark.parametrize("device,backend", CASES)
def test_deterministic(device, backend):
    n = 96
    hidden, weight, targets = testing.random_gather_inputs(n, 70, 300, torch.float32, device=device, seed=21)
    cu_seqlens = _random_cu_seqlens(n, 21, device)
    upstream = torch.randn(n, generator=torch.Generator().manual_seed(21)).to(device)

    def run():
        h = hidden.clone().requires_grad_(True)
        w = weight.clone().requires_grad_(True)
        outputs = logprob_gather(h, w, targets, cu_seqlens=cu_seqlens, return_entropy=True, backend=backend)
        (outputs[0] * upstream).sum().backward()
        return [t.detach() for t in outputs] + [h.grad, w.grad]

    first, second = run(), run()
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_triton_rejects_float64(device):
    if "triton" not in backends_on(device, "logprob_gather"):
        pytest.skip("triton is unavailable on " + device)
    hidden, weight, targets = testing.random_gather_inputs(4, 16, 20, torch.float64, device=device)
    with pytest.raises(ValueError, match="fp16/bf16/fp32"):
        logprob_gather(hidden, weight, targets, backend="triton")


def test_triton_copies_views_whose_tile_offsets_would_overflow_int32():
    if not any("triton" in backends_on(device, "logprob_gather") for device in DEVICES):
        pytest.skip("triton is unavailable")
    from genssd_kernels.triton.logprob_gather import _addressable

    # Meta tensors: the strides of a huge batch without its memory.
    rows, d = 128, 64
    compact = torch.empty(1000, d, device="meta")
    assert _addressable(compact, rows) is compact
    stride = (2**31) // (rows - 1) + 1  # (rows - 1) * stride just passes 2**31
    huge = torch.empty_strided((1000, d), (stride, 1), device="meta")
    copied = _addressable(huge, rows)
    assert copied is not huge and copied.is_contiguous() and copied.shape == huge.shape
    below = torch.empty_strided((1000, d), (stride - 64, 1), device="meta")
    assert (rows - 1) * below.stride(0) + d < 2**31
    assert _addressable(below, rows) is below


@pytest.mark.parametrize("device", DEVICES)
def test_triton_load_paths_and_epilogue_slices_agree(device):
    """TMA and pointer loads (the forward with its entropy), the grad-logits epilogue on 1 to 8
    column slices, and a persistent or one-program-per-tile backward launch give the same bits."""
    if "triton" not in backends_on(device, "logprob_gather"):
        pytest.skip("triton is unavailable on " + device)
    from dataclasses import replace

    from genssd_kernels.triton import logprob_gather as triton_gather

    n, d, v = 45, 32, 200  # d=32 bf16: 64-byte rows, so TMA can read both inputs
    hidden, weight, targets = testing.random_gather_inputs(
        n, d, v, torch.bfloat16, device=device, seed=17, ignore_fraction=0.2
    )
    upstream = torch.randn(n, generator=torch.Generator().manual_seed(17)).to(device)
    base = triton_gather.forward_config(torch.bfloat16)
    if device == "cuda" and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("TMA needs a Hopper or newer GPU")
    assert triton_gather._operand_descriptors(hidden, weight, replace(base, tma=True))[0] is not None
    ragged = testing.random_gather_inputs(n, 70, v, torch.bfloat16, device=device, seed=17)
    assert triton_gather._operand_descriptors(ragged[0], ragged[1], replace(base, tma=True)) == (None, None)

    results = []
    for tma, parts, persistent in (
        (False, 1, False),
        (True, 1, False),
        (True, 2, True),
        (True, 8, True),
        (False, 4, True),
    ):
        logp, entropy, _, row_max, log2_sum = triton_gather.forward(
            hidden, weight, targets, return_entropy=True, config=replace(base, tma=tma)
        )
        config = replace(base, tma=tma, epilogue_parts=parts, persistent=persistent)
        grads = triton_gather.backward(
            upstream,
            hidden,
            weight,
            targets,
            row_max,
            log2_sum,
            temperature=0.8,
            ignore_index=IGNORE,
            config=config,
        )
        results.append((logp, entropy, *grads))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)
