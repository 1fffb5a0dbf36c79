"""Providers for the kernel benchmarks: genssd's fused ops and the peers they are judged against.

Every provider is a function ``make(hidden, weight, targets, cu_seqlens) -> callable`` returning
a zero-argument closure that runs one forward (or forward+backward). Peers that are not
importable return None and their rows are skipped.
"""

from __future__ import annotations

import torch

from genssd_kernels import branch_prune, linear_cross_entropy, logprob_gather

# (N, d, V) shapes of the speed issue: a 0.5B, a 1.5B and a 7B-class student head.
SHAPES = {"A": (8192, 896, 151936), "B": (16384, 2048, 151936), "C": (32768, 4096, 152064)}


def naive_logprobs(hidden, weight, targets):
    logits = (hidden @ weight.T).float()
    return torch.log_softmax(logits, -1).gather(1, targets[:, None]).squeeze(1)


def naive_loss(hidden, weight, targets):
    return torch.nn.functional.cross_entropy((hidden @ weight.T).float(), targets)


_compiled = {}


def _compiled_fn(fn):
    if fn not in _compiled:
        _compiled[fn] = torch.compile(fn, dynamic=False)
    return _compiled[fn]


def forward_providers():
    """name -> make(hidden, weight, targets, cu_seqlens) for the no-grad forward."""

    def matmul(h, w, t, cu):
        return lambda: h @ w.T

    def naive(h, w, t, cu):
        return lambda: naive_logprobs(h, w, t)

    def compiled(h, w, t, cu):
        fn = _compiled_fn(naive_logprobs)
        return lambda: fn(h, w, t)

    def genssd_triton(h, w, t, cu):
        return lambda: logprob_gather(h, w, t, cu_seqlens=cu, backend="triton", check_values=False)

    def genssd_triton_entropy(h, w, t, cu):
        return lambda: logprob_gather(
            h, w, t, cu_seqlens=cu, return_entropy=True, backend="triton", check_values=False
        )

    def liger(h, w, t, cu):
        try:
            from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss
        except ImportError:
            return None
        loss = LigerFusedLinearCrossEntropyLoss(reduction="none")
        return lambda: loss(w, h, t)

    def cce(h, w, t, cu):
        try:
            from cut_cross_entropy import linear_cross_entropy as cce_loss
        except ImportError:
            return None
        return lambda: cce_loss(h, w, t, reduction="none")

    return {
        "matmul": matmul,
        "genssd": genssd_triton,
        "genssd+entropy": genssd_triton_entropy,
        "torch.compile": compiled,
        "liger": liger,
        "cce": cce,
        "naive": naive,
    }


def _with_backward(loss_fn, hidden, weight):
    """A closure running ``loss_fn()`` forward and backward, clearing the grads first."""

    def run():
        hidden.grad = weight.grad = None
        loss_fn().backward()

    return run


def _matmul_then_row_step():
    """The fused loss's chunk step of cuBLAS + the Triton row step."""
    from genssd_kernels.fused_loss import matmul_then
    from genssd_kernels.triton.cross_entropy_rows import cross_entropy_rows_

    return matmul_then(cross_entropy_rows_)


def _logits_kernel_step():
    """The fused loss's chunk step of the Triton logits kernel + one gradient pass."""
    from genssd_kernels.triton.cross_entropy_rows import cross_entropy_chunk_

    return cross_entropy_chunk_


def train_providers():
    """name -> make(...) for forward+backward of the mean cross-entropy (inputs require grad)."""

    def matmul(h, w, t, cu):
        return lambda: h @ w.T

    def genssd_triton(h, w, t, cu):
        return _with_backward(lambda: linear_cross_entropy(h, w, t, backend="triton"), h, w)

    def genssd_recompute(h, w, t, cu):
        return _with_backward(lambda: linear_cross_entropy(h, w, t, backend="triton", recompute=True), h, w)

    def genssd_chunk_step(chunk_step):
        # The default call's path with one chunk step forced (the default picks by the hidden
        # size: cross_entropy_rows.fused_chunk_step), to time the one it did not pick.
        def make(h, w, t, cu):
            from genssd_kernels.fused_loss import FusedLinearCrossEntropy
            from genssd_kernels.triton.scale import scaled

            step = chunk_step()
            return _with_backward(
                lambda: FusedLinearCrossEntropy.apply(h, w, t, -100, "mean", step, scaled), h, w
            )

        return make

    def compiled(h, w, t, cu):
        fn = _compiled_fn(naive_loss)
        return _with_backward(lambda: fn(h, w, t), h, w)

    def liger(h, w, t, cu):
        try:
            from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss
        except ImportError:
            return None
        loss = LigerFusedLinearCrossEntropyLoss(reduction="mean")
        return _with_backward(lambda: loss(w, h, t), h, w)

    def cce(h, w, t, cu):
        try:
            from cut_cross_entropy import linear_cross_entropy as cce_loss
        except ImportError:
            return None
        return _with_backward(lambda: cce_loss(h, w, t, reduction="mean"), h, w)

    return {
        "matmul": matmul,
        "genssd": genssd_triton,
        "genssd (recompute)": genssd_recompute,
        "genssd (cuBLAS + row step)": genssd_chunk_step(_matmul_then_row_step),
        "genssd (logits kernel)": genssd_chunk_step(_logits_kernel_step),
        "torch.compile": compiled,
        "liger": liger,
        "cce": cce,
    }


def prune_providers():
    """name -> make(scores, offsets, k) for branch_prune."""

    def torch_chain(scores, offsets, k, margin):
        # The equivalent PyTorch chain a user would write for fixed-size groups.
        groups = scores.view(offsets.numel() - 1, -1)
        mean = groups.mean(1, keepdim=True)
        masked = torch.where(groups >= mean - margin, groups, float("-inf"))
        top = masked.topk(k, dim=1)
        return top.indices, top.values > float("-inf")

    # "default call": the arguments a user writes, value checks on (on the device, no host sync);
    # the check_values=False rows are the same kernels without the check.
    return {
        "genssd-triton": lambda s, o, k, m: (
            lambda: branch_prune(s, o, margin=m, k=k, backend="triton", check_values=False)
        ),
        "genssd-triton default call": lambda s, o, k, m: (
            lambda: branch_prune(s, o, margin=m, k=k, backend="triton")
        ),
        "genssd-cuda-cpp": lambda s, o, k, m: (
            lambda: branch_prune(s, o, margin=m, k=k, backend="cpp", check_values=False)
        ),
        "genssd-cuda-cpp default call": lambda s, o, k, m: (
            lambda: branch_prune(s, o, margin=m, k=k, backend="cpp")
        ),
        "genssd default call": lambda s, o, k, m: lambda: branch_prune(s, o, margin=m, k=k),
        "torch-chain": lambda s, o, k, m: lambda: torch_chain(s, o, k, m),
    }
