"""``linear_cross_entropy``'s gradient-in-forward path against autograd through the reference.

The fused path (``genssd_kernels.fused_loss``) runs for scalar losses on the ``triton`` and
``cpp`` backends; the tolerance rule of docs/design.md §2.3 compares its loss and both gradients
with the float64 truth, the bound set by ``F.cross_entropy`` on explicit logits in the input
dtype. Small ``CHUNK_BYTES`` force several row chunks.
"""

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES, backends_on

from genssd_kernels import fused_loss, linear_cross_entropy, reference, testing

IGNORE = -100
FUSED = [
    pytest.param(device, backend, id=f"{device}-{backend}")
    for device in DEVICES
    for backend in backends_on(device, "linear_cross_entropy")
    if backend != "reference"
]
DTYPES = [pytest.param(dtype, id=str(dtype).removeprefix("torch.")) for dtype in testing.ERROR_FLOOR]


def _explicit(hidden, weight, targets, reduction):
    logits = hidden @ weight.T
    logits = logits.double() if logits.dtype == torch.float64 else logits.float()
    return F.cross_entropy(logits, targets, ignore_index=IGNORE, reduction=reduction)


def _loss_and_grads(loss_fn, hidden, weight, upstream=1.0):
    hidden = hidden.detach().clone().requires_grad_(True)
    weight = weight.detach().clone().requires_grad_(True)
    loss = loss_fn(hidden, weight)
    (loss * upstream).backward()
    return loss.detach(), hidden.grad, weight.grad


def _check(backend, hidden, weight, targets, reduction="mean", upstream=1.0, what="", fused=None):
    """The loss and both gradients of ``fused(hidden, weight)`` (default: ``linear_cross_entropy``
    on ``backend``) within the tolerance rule."""
    dtype = hidden.dtype

    def default(h, w):
        return linear_cross_entropy(h, w, targets, ignore_index=IGNORE, reduction=reduction, backend=backend)

    fused = fused or default

    actual = _loss_and_grads(fused, hidden, weight, upstream)
    same_dtype = _loss_and_grads(lambda h, w: _explicit(h, w, targets, reduction), hidden, weight, upstream)
    truth = _loss_and_grads(
        lambda h, w: _explicit(h, w, targets, reduction), hidden.double(), weight.double(), upstream
    )
    assert actual[1].dtype == dtype and actual[2].dtype == dtype
    count = max(1, int((targets != IGNORE).sum())) if reduction == "sum" else 1
    for name, a, r, t in zip(("loss", "grad hidden", "grad weight"), actual, same_dtype, truth):
        # A sum of n losses is only good to ~n ulps of one: compare the per-row scale.
        a, r, t = (x / count for x in (a, r, t)) if name == "loss" else (a, r, t)
        testing.assert_within_tolerance(a, r, t, dtype, what=f"{backend} {what} {name}")
    return actual


@pytest.fixture(params=["one chunk", "several chunks", "many chunks"])
def chunking(request, monkeypatch):
    """Run a test with the default chunk budget, again with chunks of a few rows (an odd
    alignment, so the last chunk is shorter: ``grad_weight`` accumulates across them), and with
    chunks so many and small that 16-bit ``grad_weight`` goes to the fp32 accumulator where the
    shape makes that the cheaper fix (``plan_chunks``)."""
    budget = {"several chunks": 20_000, "many chunks": 2_000}.get(request.param)
    if budget is not None:
        monkeypatch.setattr(fused_loss, "CHUNK_BYTES", {"cuda": budget, "cpu": budget})
        monkeypatch.setattr(fused_loss, "ROW_ALIGN", {"cuda": 3, "cpu": 3})
    if request.param == "many chunks":
        monkeypatch.setattr(fused_loss, "MAX_CHUNKS", 1)
    return request.param


@pytest.mark.parametrize("device,backend", FUSED)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(97, 40, 300), (1, 16, 33), (33, 70, 517)], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_fused_matches_reference(device, backend, dtype, shape, reduction, chunking):
    if backend == "triton" and dtype == torch.float64:
        pytest.skip("the triton backend takes fp16/bf16/fp32")
    hidden, weight, targets = testing.random_gather_inputs(
        *shape, dtype, device=device, seed=sum(shape), ignore_fraction=0.2
    )
    _check(backend, hidden, weight, targets, reduction, what=f"{chunking} {shape}")


@pytest.mark.parametrize("device,backend", FUSED)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_all_rows_ignored(device, backend, reduction):
    hidden, weight, _ = testing.random_gather_inputs(9, 16, 70, torch.float32, device=device, seed=3)
    targets = torch.full((9,), IGNORE, device=device)
    loss, grad_hidden, grad_weight = _loss_and_grads(
        lambda h, w: linear_cross_entropy(h, w, targets, reduction=reduction, backend=backend), hidden, weight
    )
    assert loss.item() == 0.0
    assert torch.all(grad_hidden == 0) and torch.all(grad_weight == 0)


@pytest.mark.parametrize("device,backend", FUSED)
def test_upstream_scale_and_retained_graph(device, backend):
    """A non-unit upstream gradient scales both gradients; a retained graph backpropagates twice."""
    hidden, weight, targets = testing.random_gather_inputs(
        40, 24, 300, torch.float32, device=device, seed=5, ignore_fraction=0.2
    )
    _check(backend, hidden, weight, targets, upstream=-2.5, what="upstream -2.5")
    h = hidden.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    loss = linear_cross_entropy(h, w, targets, backend=backend)
    (3.0 * loss).backward(retain_graph=True)
    first = h.grad.clone(), w.grad.clone()
    (0.5 * loss).backward()
    assert torch.allclose(h.grad, first[0] * (3.5 / 3.0), rtol=1e-6, atol=1e-9)
    assert torch.allclose(w.grad, first[1] * (3.5 / 3.0), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("device,backend", FUSED)
def test_gradient_accumulation_over_micro_batches(device, backend, chunking):
    """Means of micro-batches, each scaled by 1 / micro-batches, against the explicit loss's."""
    hidden, weight, targets = testing.random_gather_inputs(
        64, 24, 200, torch.float32, device=device, seed=8, ignore_fraction=0.2
    )

    def accumulate(loss_fn):
        h = hidden.clone().requires_grad_(True)
        w = weight.clone().requires_grad_(True)
        for rows in torch.arange(64).chunk(4):
            (loss_fn(h[rows], w, targets[rows]) / 4).backward()
        return h.grad, w.grad

    actual = accumulate(lambda h, w, t: linear_cross_entropy(h, w, t, backend=backend))
    expected = accumulate(lambda h, w, t: _explicit(h, w, t, "mean"))
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("device,backend", FUSED)
def test_only_one_input_needs_grad(device, backend):
    """A frozen head (or frozen hidden states) skips that gradient's matmul, not the other."""
    hidden, weight, targets = testing.random_gather_inputs(30, 16, 90, torch.float32, device=device, seed=2)
    h = hidden.clone().requires_grad_(True)
    linear_cross_entropy(h, weight, targets, backend=backend).backward()
    w = weight.clone().requires_grad_(True)
    linear_cross_entropy(hidden, w, targets, backend=backend).backward()
    _, grad_hidden, grad_weight = _loss_and_grads(
        lambda a, b: _explicit(a, b, targets, "mean"), hidden, weight
    )
    torch.testing.assert_close(h.grad, grad_hidden, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(w.grad, grad_weight, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("device,backend", FUSED)
def test_recompute_path_is_the_gather_backward(device, backend):
    """``recompute=True`` and ``reduction="none"`` keep the logprob_gather path; same loss."""
    hidden, weight, targets = testing.random_gather_inputs(
        25, 16, 130, torch.float32, device=device, seed=4, ignore_fraction=0.2
    )
    fused = _check(backend, hidden, weight, targets)
    recomputed = _loss_and_grads(
        lambda h, w: linear_cross_entropy(h, w, targets, backend=backend, recompute=True), hidden, weight
    )
    for a, b in zip(fused, recomputed):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _triton_here(device):
    if "triton" not in backends_on(device, "linear_cross_entropy"):
        pytest.skip("triton cannot run here")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("vocab", [1, 63, 64, 200])
@pytest.mark.parametrize("programs", [0, 3], ids=["program per row", "3 striding programs"])
def test_triton_row_step_matches_reference(device, dtype, vocab, programs):
    """The Triton row step: losses and the overwritten gradient rows against the PyTorch one
    (several slices and a ragged last one; ignored rows zeroed)."""
    _triton_here(device)
    from genssd_kernels.triton.cross_entropy_rows import cross_entropy_rows_

    gen = torch.Generator().manual_seed(vocab)
    logits = (torch.randn(11, vocab, generator=gen) * 4).to(device=device, dtype=dtype)
    targets = torch.randint(0, vocab, (11,), generator=gen).to(device)
    targets[[2, 7]] = IGNORE
    scale = torch.tensor(0.3, device=device)
    actual, expected = logits.clone(), logits.clone()
    losses = cross_entropy_rows_(actual, targets, scale, IGNORE, programs=programs)
    expected_losses = reference.cross_entropy_rows_(expected, targets, scale, IGNORE)
    torch.testing.assert_close(losses, expected_losses, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(actual.float(), expected.float(), rtol=1e-2, atol=1e-5)
    assert torch.all(actual[[2, 7]] == 0) and torch.all(losses[[2, 7]] == 0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(37, 24, 200), (5, 40, 63), (70, 16, 1)], ids=str)
def test_forward_writes_the_logits_it_takes_statistics_of(device, dtype, shape):
    """``logprob_gather.forward(logits_out=)``: the logits as ``torch.mm`` rounds them (ragged
    row and vocabulary tiles), and log-probs of those logits."""
    _triton_here(device)
    from genssd_kernels.triton import logprob_gather

    hidden, weight, targets = testing.random_gather_inputs(
        *shape, dtype, device=device, seed=sum(shape), ignore_fraction=0.2
    )
    logits = torch.full((shape[0], shape[2]), float("nan"), dtype=dtype, device=device)
    logp, *_ = logprob_gather.forward(hidden, weight, targets, ignore_index=IGNORE, logits_out=logits)
    exact = hidden.double() @ weight.double().T
    # Each element rounded once from an fp32 sum: within one unit of the dtype of the exact value.
    ulp = {torch.float32: 2**-23, torch.float16: 2**-10, torch.bfloat16: 2**-7}[dtype]
    assert torch.all((logits.double() - exact).abs() <= ulp * exact.abs() + 1e-6)
    # The log-softmax of the written logits; the target logit is the kernel's fp32 dot product,
    # so 16-bit rows differ by about one rounding of it.
    valid = targets != IGNORE
    log_probs = torch.log_softmax(logits.double(), dim=1).gather(1, torch.where(valid, targets, 0)[:, None])
    expected = torch.where(valid, log_probs.squeeze(1), 0.0)
    torch.testing.assert_close(logp.double(), expected, rtol=0, atol=1e-5 if dtype == torch.float32 else 3e-2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("vocab", [1, 63, 64, 200])
def test_triton_chunk_step_matches_matmul_and_row_step(device, dtype, vocab):
    """``cross_entropy_chunk_`` (logits written by the forward kernel, one gradient pass) against
    ``torch.mm`` + the PyTorch row step: losses and the overwritten gradient."""
    _triton_here(device)
    from genssd_kernels.fused_loss import matmul_then
    from genssd_kernels.triton.cross_entropy_rows import cross_entropy_chunk_

    hidden, weight, targets = testing.random_gather_inputs(11, 24, vocab, dtype, device=device, seed=vocab)
    targets[[2, 7]] = IGNORE
    scale = torch.tensor(0.3, device=device)
    actual = torch.empty(11, vocab, dtype=dtype, device=device)
    expected = torch.empty_like(actual)
    losses = cross_entropy_chunk_(hidden, weight, targets, scale, IGNORE, actual)
    expected_losses = matmul_then(reference.cross_entropy_rows_)(
        hidden, weight, targets, scale, IGNORE, expected
    )
    torch.testing.assert_close(
        losses, expected_losses, rtol=1e-4, atol=2e-2 if dtype != torch.float32 else 1e-5
    )
    torch.testing.assert_close(actual.float(), expected.float(), rtol=2e-2, atol=1e-4)
    assert torch.all(actual[[2, 7]] == 0) and torch.all(losses[[2, 7]] == 0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_triton_chunk_step_losses_of_confident_rows(device, dtype):
    """Rows whose target logit dominates: the loss is ~0, and the chunk step's, like the row
    step's, takes the log-sum-exp and the target logit from the same rounded logits (never
    negative, as close to the float64 truth as the row step's)."""
    _triton_here(device)
    from genssd_kernels.fused_loss import matmul_then
    from genssd_kernels.triton.cross_entropy_rows import cross_entropy_chunk_

    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(300, 32, generator=gen) * 32**-0.5
    targets = torch.randint(0, 300, (64,), generator=gen)
    hidden = weight[targets] * 12 + torch.randn(64, 32, generator=gen) * 0.1
    hidden, weight, targets = (t.to(device) for t in (hidden.to(dtype), weight.to(dtype), targets))
    scale = torch.tensor(1.0, device=device)
    truth = F.cross_entropy(hidden.double() @ weight.double().T, targets, reduction="none")
    logits = torch.empty(64, 300, dtype=dtype, device=device)
    losses = cross_entropy_chunk_(hidden, weight, targets, scale, IGNORE, logits)
    row_step = matmul_then(reference.cross_entropy_rows_)
    expected = row_step(hidden, weight, targets, scale, IGNORE, torch.empty_like(logits))
    assert torch.all(losses >= 0)
    error, bound = (losses.double() - truth).abs().max(), (expected.double() - truth).abs().max()
    assert error <= 2 * bound + 1e-6, (error, bound)


def test_triton_chunk_step_refuses_a_bad_logits_buffer():
    _triton_here("cpu")
    from genssd_kernels.triton.cross_entropy_rows import cross_entropy_chunk_

    hidden, weight, targets = testing.random_gather_inputs(4, 8, 20, torch.float32, seed=0)
    scale = torch.tensor(1.0)
    for bad in (torch.empty(4, 19), torch.empty(4, 20, dtype=torch.float16), torch.empty(20, 4).T):
        with pytest.raises(ValueError, match="logits must be"):
            cross_entropy_chunk_(hidden, weight, targets, scale, IGNORE, bad)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(97, 40, 300), (1, 16, 33), (33, 70, 517)], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_fused_loss_with_the_triton_chunk_step(device, dtype, shape, reduction, chunking):
    """The gradient-in-forward loss with ``cross_entropy_chunk_`` as its chunk step: loss and
    both gradients within the tolerance rule, over one, several and many chunks."""
    _triton_here(device)
    from genssd_kernels.triton.cross_entropy_rows import cross_entropy_chunk_
    from genssd_kernels.triton.scale import scaled

    hidden, weight, targets = testing.random_gather_inputs(
        *shape, dtype, device=device, seed=sum(shape), ignore_fraction=0.2
    )

    def fused(h, w):
        return fused_loss.FusedLinearCrossEntropy.apply(
            h, w, targets, IGNORE, reduction, cross_entropy_chunk_, scaled
        )

    _check("triton", hidden, weight, targets, reduction, what=f"chunk step {chunking} {shape}", fused=fused)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("hidden_size", [40, 48], ids=["below", "at"])
def test_triton_default_picks_the_chunk_step_by_hidden_size(device, hidden_size, monkeypatch):
    """The default call takes ``cross_entropy_chunk_`` from ``LOGITS_KERNEL_MIN_HIDDEN`` on and
    the matmul + row step below it, and is right either way."""
    _triton_here(device)
    from genssd_kernels.triton import cross_entropy_rows

    monkeypatch.setattr(cross_entropy_rows, "LOGITS_KERNEL_MIN_HIDDEN", 48)
    calls = {"logits kernel": 0, "row step": 0}

    def counted(name, step):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return step(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(
        cross_entropy_rows,
        "cross_entropy_chunk_",
        counted("logits kernel", cross_entropy_rows.cross_entropy_chunk_),
    )
    monkeypatch.setattr(
        cross_entropy_rows, "cross_entropy_rows_", counted("row step", cross_entropy_rows.cross_entropy_rows_)
    )
    hidden, weight, targets = testing.random_gather_inputs(
        37, hidden_size, 300, torch.float32, device=device, seed=hidden_size, ignore_fraction=0.2
    )
    _check("triton", hidden, weight, targets, what=f"d={hidden_size}")
    taken = "logits kernel" if hidden_size >= 48 else "row step"
    assert calls[taken] == 1 and sum(calls.values()) == 1, calls


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(), (1,), (63,), (65,), (7, 300)], ids=str)
def test_triton_scaled_is_torch_mul(device, dtype, shape):
    """The backward's ``grad * upstream``: computed in fp32 and rounded once, on sizes around the
    interpreter's 64-element block and a 0-dim tensor."""
    _triton_here(device)
    from genssd_kernels.triton.scale import scaled

    gen = torch.Generator().manual_seed(len(shape) + 7)
    x = (torch.randn(shape, generator=gen) * 3).to(dtype).to(device)
    factor = torch.tensor(0.3713, device=device)
    assert torch.equal(scaled(x, factor), (x.float() * factor).to(dtype))


def test_triton_scaled_refuses_bad_arguments():
    from genssd_kernels.triton.scale import scaled

    x = torch.randn(4, 6)
    with pytest.raises(ValueError, match="contiguous x and a 0-dim float32 factor"):
        scaled(x.T, torch.tensor(2.0))
    with pytest.raises(ValueError, match="contiguous x and a 0-dim float32 factor"):
        scaled(x, torch.tensor([2.0]))
    with pytest.raises(ValueError, match="fp16/bf16/fp32"):
        scaled(x.double(), torch.tensor(2.0))


BF16 = torch.bfloat16


@pytest.mark.parametrize(
    "n,v,d,dtype,device,need_weight,expected",
    [
        (8192, 151936, 896, BF16, "cuda", True, (1664, False)),  # 4.6 chunks of 512 MiB -> 5, 128-aligned
        (4000, 151936, 896, BF16, "cuda", True, (1408, False)),  # 2.3 -> 3 of 1334 rows, aligned up
        (100, 1000, 64, BF16, "cuda", True, (100, False)),  # one chunk: all rows
        # 19 chunks of 512 MiB: 8 chunks of 1.16 GiB take less than 512 MiB + a 2.3 GiB accumulator
        (32768, 152064, 4096, BF16, "cuda", True, (4096, False)),
        # ... but not 8 of 4.6 GiB: 75 chunks of 512 MiB and the fp32 accumulator
        (131072, 152064, 4096, BF16, "cuda", True, (1792, True)),
        # d=896: the 519 MiB accumulator is cheaper than 8 chunks of 1.16 GiB
        (32768, 151936, 896, BF16, "cuda", True, (1792, True)),
        # no grad_weight, or fp32: nothing rounded to 16 bits, the budget alone decides
        (131072, 152064, 4096, BF16, "cuda", False, (1792, False)),
        (131072, 152064, 4096, torch.float32, "cuda", True, (896, False)),
        (512, 32000, 256, torch.float32, "cpu", True, (512, False)),
        (3000, 32000, 256, torch.float32, "cpu", True, (500, False)),
    ],
)
def test_plan_chunks(n, v, d, dtype, device, need_weight, expected):
    plan = fused_loss.plan_chunks(n, v, d, dtype, torch.device(device), need_weight)
    assert tuple(plan) == expected
    chunks = -(-n // plan.rows)
    budget = fused_loss.CHUNK_BYTES[device] + fused_loss.ROW_ALIGN[device] * v * dtype.itemsize
    # Within the budget, unless the 16-bit grad_weight would be rounded more than MAX_CHUNKS times.
    assert plan.rows * v * dtype.itemsize <= budget or chunks == fused_loss.MAX_CHUNKS
    assert (
        plan.fp32_accumulator or not need_weight or dtype == torch.float32 or chunks <= fused_loss.MAX_CHUNKS
    )


def test_reference_row_step_is_the_softmax_gradient():
    """The PyTorch row step against autograd of F.cross_entropy in float64."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 40, generator=gen, dtype=torch.float64) * 3
    targets = torch.tensor([3, IGNORE, 0, 39, 7, IGNORE])
    leaf = logits.clone().requires_grad_(True)
    F.cross_entropy(leaf, targets, ignore_index=IGNORE, reduction="sum").backward()
    scale = torch.tensor(1.0)
    losses = reference.cross_entropy_rows_(logits, targets, scale, IGNORE)
    expected = F.cross_entropy(leaf.detach(), targets, ignore_index=IGNORE, reduction="none")
    torch.testing.assert_close(losses, expected)
    torch.testing.assert_close(logits, leaf.grad)


ALL_BACKENDS = [
    pytest.param(device, backend, id=f"{device}-{backend}")
    for device in DEVICES
    for backend in backends_on(device, "linear_cross_entropy")
]


@pytest.mark.parametrize("device,backend", ALL_BACKENDS)
@pytest.mark.parametrize("recompute", [False, True], ids=["gradient in forward", "recompute"])
def test_autocast_runs_the_loss_in_the_autocast_dtype(device, backend, recompute):
    """fp32 leaves under bf16 autocast (Trainer's ``bf16=True``): the loss and gradients are those of
    the bf16-cast operands, as ``F.linear`` would compute the head, not an fp32 loss."""
    hidden, weight, targets = testing.random_gather_inputs(
        37, 24, 150, torch.float32, device=device, seed=5, ignore_fraction=0.2
    )

    def loss_fn(h, w):
        return linear_cross_entropy(h, w, targets, backend=backend, recompute=recompute)

    def under_autocast(h, w):
        # The forward under autocast, the backward outside it (as torch.amp recommends and
        # Trainer does).
        with torch.autocast(device, dtype=torch.bfloat16):
            return loss_fn(h, w)

    expected = _loss_and_grads(lambda h, w: loss_fn(h.bfloat16(), w.bfloat16()), hidden, weight)
    actual = _loss_and_grads(under_autocast, hidden, weight)
    without = _loss_and_grads(loss_fn, hidden, weight)
    for a, e in zip(actual, expected):
        assert a.dtype == e.dtype
        torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(without[0], actual[0], rtol=1e-5, atol=0), "the fp32 loss is not the bf16 one"
