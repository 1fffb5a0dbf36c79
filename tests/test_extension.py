"""The compiled extension ``genssd_kernels._C`` and its ``cpp`` backend.

Checks that it loaded (mandatory when ``GENSSD_REQUIRE_EXT=1``), that every registered operator
passes ``torch.library.opcheck`` (schema, fake/meta implementation, autograd registration,
AOT dispatch), that the chunked CPU kernels stay exact across chunk and block boundaries,
that results are bit-identical run to run, that an unavailable backend fails with its reason,
and, on a GPU machine, the CUDA ``branch_prune`` kernel.
"""

import os

import pytest
import torch

from genssd_kernels import branch_prune, dispatch, logprob_gather, reference, testing
from genssd_kernels._ext import load_extension

_, LOAD_ERROR = load_extension()
REQUIRED = os.environ.get("GENSSD_REQUIRE_EXT", "0") == "1"
needs_extension = pytest.mark.skipif(
    LOAD_ERROR is not None and not REQUIRED, reason=f"the extension is not built here: {LOAD_ERROR}"
)
IGNORE = -100
OPCHECK_DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(torch.bfloat16, id="bfloat16")]


def _ops():
    from genssd_kernels import cpp  # noqa: F401 - registers the fake and autograd implementations

    return torch.ops.genssd


@pytest.mark.skipif(not REQUIRED, reason="GENSSD_REQUIRE_EXT=1 is not set: the extension is optional")
def test_extension_loaded_when_required():
    assert LOAD_ERROR is None, LOAD_ERROR
    assert dispatch.unavailable_reason("cpp", torch.device("cpu")) is None


@needs_extension
def test_build_info_names_the_build():
    module, _ = load_extension()
    info = module.build_info()
    assert isinstance(info["cuda"], bool) and isinstance(info["openmp"], bool)
    # An extension built against another torch would not load reliably: its ABI differs.
    assert torch.__version__.startswith(info["torch"]), (info["torch"], torch.__version__)


@needs_extension
@pytest.mark.parametrize("dtype", OPCHECK_DTYPES)
@pytest.mark.parametrize("with_segments", [False, True], ids=["no_cu_seqlens", "cu_seqlens"])
@pytest.mark.parametrize("return_entropy", [False, True], ids=["no_entropy", "entropy"])
def test_opcheck_logprob_gather_fwd(dtype, with_segments, return_entropy):
    hidden, weight, targets = testing.random_gather_inputs(11, 8, 37, dtype, seed=3)
    hidden.requires_grad_()
    weight.requires_grad_()
    cu_seqlens = torch.tensor([0, 4, 4, 11], dtype=torch.int32) if with_segments else None
    args = (hidden, weight, targets, cu_seqlens, 0.8, IGNORE, return_entropy)
    torch.library.opcheck(_ops().logprob_gather_fwd.default, args)


@needs_extension
@pytest.mark.parametrize("dtype", OPCHECK_DTYPES)
def test_opcheck_logprob_gather_bwd(dtype):
    hidden, weight, targets = testing.random_gather_inputs(11, 8, 37, dtype, seed=4)
    _, lse, _, _ = _ops().logprob_gather_fwd(hidden, weight, targets, None, 1.3, IGNORE, False)
    grad = torch.randn(11, generator=torch.Generator().manual_seed(5))
    args = (grad, hidden, weight, targets, lse, 1.3, IGNORE)
    torch.library.opcheck(_ops().logprob_gather_bwd.default, args)


@needs_extension
@pytest.mark.parametrize("offset_dtype", [torch.int32, torch.int64], ids=["int32", "int64"])
def test_opcheck_branch_prune(offset_dtype):
    scores = torch.randn(23, generator=torch.Generator().manual_seed(6))
    offsets = torch.tensor([0, 5, 5, 17, 23], dtype=offset_dtype)
    torch.library.opcheck(_ops().branch_prune.default, (scores, offsets, 0.3, 3, -1.5))


@needs_extension
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("shape", [(600, 16, 4500), (5000, 8, 600)], ids=["wide", "tall"])
def test_cpp_across_vocabulary_chunks_and_row_blocks(dtype, shape):
    """N and V beyond one tile: partial softmax statistics must merge, gradients must add up.

    "wide" spans 3 forward vocabulary chunks and 5 row blocks; "tall" has so many rows that the
    backward narrows its vocabulary chunks (3 of them). Rows of huge logits put the row maximum
    in different chunks, with wide gaps between them.
    """
    n, d, v = shape
    hidden, weight, targets = testing.random_gather_inputs(n, d, v, dtype, seed=7)
    hidden[::7] *= 200
    cu_seqlens = torch.tensor([0, 1, 130, 130, n - 1, n])
    upstream = torch.randn(n, generator=torch.Generator().manual_seed(8), dtype=torch.float64)

    def run(backend, h, w):
        h = h.detach().requires_grad_()
        w = w.detach().requires_grad_()
        outputs = logprob_gather(h, w, targets, cu_seqlens=cu_seqlens, return_entropy=True, backend=backend)
        (outputs[0].double() * upstream).sum().backward()
        return (*outputs, h.grad, w.grad)

    got = run("cpp", hidden, weight)
    same_dtype = run("reference", hidden, weight)
    exact = run("reference", hidden.double(), weight.double())
    names = ("token_logprobs", "entropy", "segment_mean", "grad hidden", "grad weight")
    for name, actual, ref, truth in zip(names, got, same_dtype, exact):
        floor_dtype = torch.float32 if dtype == torch.float64 else dtype
        testing.assert_within_tolerance(actual, ref, truth, floor_dtype, what=f"cpp {name}")


@needs_extension
def test_cpp_is_deterministic():
    hidden, weight, targets = testing.random_gather_inputs(300, 24, 2600, torch.float32, seed=9)
    hidden.requires_grad_()
    weight.requires_grad_()
    cu_seqlens = torch.tensor([0, 100, 300])
    runs = []
    for _ in range(2):
        hidden.grad = weight.grad = None
        token_logprobs, entropy, means = logprob_gather(
            hidden, weight, targets, cu_seqlens=cu_seqlens, return_entropy=True, backend="cpp"
        )
        token_logprobs.sum().backward()
        runs.append((token_logprobs.detach(), entropy, means, hidden.grad, weight.grad))
    for first, second in zip(*runs):
        assert torch.equal(first, second)


@needs_extension
def test_entropy_and_means_carry_no_gradient():
    hidden, weight, targets = testing.random_gather_inputs(9, 8, 40, torch.float32, seed=10)
    hidden.requires_grad_()
    token_logprobs, entropy, means = logprob_gather(
        hidden, weight, targets, cu_seqlens=torch.tensor([0, 9]), return_entropy=True, backend="cpp"
    )
    assert token_logprobs.requires_grad
    assert not entropy.requires_grad and not means.requires_grad


def test_forced_cpp_on_a_device_without_kernels_says_why():
    hidden = torch.empty(4, 8, device="meta")
    weight = torch.empty(16, 8, device="meta")
    targets = torch.zeros(4, dtype=torch.int64, device="meta")
    with pytest.raises(RuntimeError, match="unavailable on meta"):
        logprob_gather(hidden, weight, targets, backend="cpp", check_values=False)


def test_forced_cpp_without_the_extension_says_why(monkeypatch):
    monkeypatch.setattr(dispatch, "load_extension", lambda: (None, "genssd_kernels._C did not load (test)"))
    scores = torch.randn(6)
    with pytest.raises(RuntimeError, match=r"backend 'cpp' is unavailable on cpu: .*did not load"):
        branch_prune(scores, torch.tensor([0, 6]), margin=0.5, k=2, backend="cpp")
    # The automatic choice falls back instead of raising.
    keep_mask, *_ = branch_prune(scores, torch.tensor([0, 6]), margin=0.5, k=2)
    assert keep_mask.shape == (6,)


@needs_extension
def test_cpp_logprob_gather_on_cuda_is_refused_by_op(monkeypatch):
    """The CUDA build has a CUDA branch_prune but no CUDA logprob_gather: dispatch asks per op."""
    monkeypatch.setattr(dispatch, "cuda_ops_built", lambda: True)
    reason = dispatch.unavailable_reason("cpp", torch.device("cuda"), "logprob_gather")
    assert reason is not None and "CUDA kernel for logprob_gather" in reason
    assert "logprob_gather" in dispatch.available_backends("cuda")["cpp"]


def test_unknown_op_name_is_rejected():
    with pytest.raises(ValueError, match="op must be one of"):
        dispatch.unavailable_reason("cpp", torch.device("cpu"), "softmax")


# ---- CUDA branch_prune (run on the GPU machine) ----


def _prune_case(device, offset_dtype):
    """Groups of many shapes: empty, one candidate, ties, NaN/inf, and 3000 candidates (3 tiles)."""
    gen = torch.Generator().manual_seed(11)
    sizes = [0, 1, 7, 0, 64, 3000, 5, 300]
    scores = torch.randn(sum(sizes), generator=gen)
    scores[1:8] = torch.tensor([0.5, 0.5, float("nan"), float("inf"), -float("inf"), 0.5, -0.25])
    scores[8:72] = torch.randint(0, 4, (64,), generator=gen).float()  # many exact ties
    offsets = torch.tensor([0, *sizes]).cumsum(0).to(offset_dtype)
    return scores.to(device), offsets.to(device)


@pytest.mark.cuda
@needs_extension
@pytest.mark.parametrize("offset_dtype", [torch.int32, torch.int64], ids=["int32", "int64"])
@pytest.mark.parametrize("k", [1, 4, 1500])
def test_cuda_branch_prune_matches_cpu(offset_dtype, k):
    assert dispatch.unavailable_reason("cpp", torch.device("cuda"), "branch_prune") is None
    scores, offsets = _prune_case("cuda", offset_dtype)
    for view in (scores, torch.stack([scores, -scores], 1)[:, 0]):  # contiguous, then strided
        got = branch_prune(view, offsets, margin=0.7, k=k, min_score=-1.0, backend="cpp")
        want = branch_prune(view.cpu(), offsets.cpu(), margin=0.7, k=k, min_score=-1.0, backend="cpp")
        for name, actual, expected in zip(("keep_mask", "kept_idx", "kept_count"), got, want):
            assert torch.equal(actual.cpu(), expected), name
        torch.testing.assert_close(got[3].cpu(), want[3], rtol=1e-6, atol=0)


@pytest.mark.cuda
@needs_extension
def test_cuda_branch_prune_no_sync_deterministic_and_graph_capturable():
    scores, offsets = _prune_case("cuda", torch.int64)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        first = branch_prune(scores, offsets, margin=0.5, k=8, backend="cpp", check_values=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    second = branch_prune(scores, offsets, margin=0.5, k=8, backend="cpp")
    for a, b in zip(first, second):
        assert torch.equal(a, b)

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = branch_prune(scores, offsets, margin=0.5, k=8, backend="cpp", check_values=False)
    scores.mul_(-1)
    graph.replay()
    expected = reference.branch_prune(scores, offsets, 0.5, 8, float("-inf"))
    for a, b in zip(captured[:3], expected[:3]):
        assert torch.equal(a, b)


@pytest.mark.cuda
@needs_extension
def test_cuda_branch_prune_without_groups():
    keep_mask, kept_idx, kept_count, group_mean = branch_prune(
        torch.empty(0, device="cuda"),
        torch.zeros(1, dtype=torch.int64, device="cuda"),
        margin=0.5,
        k=3,
        backend="cpp",
    )
    assert keep_mask.shape == (0,) and kept_idx.shape == (0, 3)
    assert kept_count.shape == (0,) and group_mean.shape == (0,)


@pytest.mark.cuda
@needs_extension
def test_cuda_logprob_gather_forced_to_cpp_says_why():
    hidden, weight, targets = testing.random_gather_inputs(4, 8, 16, torch.float32, device="cuda")
    with pytest.raises(RuntimeError, match="no CUDA kernel for logprob_gather"):
        logprob_gather(hidden, weight, targets, backend="cpp")
