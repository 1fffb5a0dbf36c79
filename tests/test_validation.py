"""Bad arguments raise ``ValueError`` naming the argument, for every backend, before any kernel.

Each case changes one argument of a valid call. Dispatch is replaced by a tripwire, so a case
passes only if validation rejects the call before a backend is even chosen; the valid calls
themselves must reach the tripwire (their arguments pass validation).
"""

import pytest
import torch

from genssd_kernels import ops
from genssd_kernels.dispatch import BACKENDS

N, D, V, C = 6, 4, 11, 7


class DispatchReached(Exception):
    """Raised by the tripwire that stands in for backend dispatch."""


@pytest.fixture(autouse=True)
def tripwire(monkeypatch):
    def fail(*args, **kwargs):
        raise DispatchReached

    monkeypatch.setattr(ops, "resolve_backend", fail)


def _gather_args(**changes):
    gen = torch.Generator().manual_seed(0)
    args = {
        "hidden": torch.randn(N, D, generator=gen),
        "weight": torch.randn(V, D, generator=gen),
        "targets": torch.randint(0, V, (N,), generator=gen),
        "cu_seqlens": torch.tensor([0, 2, 2, N]),
        "temperature": 0.7,
        "ignore_index": -100,
    }
    args.update(changes)
    return args


def _prune_args(**changes):
    args = {
        "scores": torch.randn(C, generator=torch.Generator().manual_seed(1)),
        "group_offsets": torch.tensor([0, 3, 3, C], dtype=torch.int32),
        "margin": 0.5,
        "k": 2,
        "min_score": -3.0,
    }
    args.update(changes)
    return args


def _gather(**changes):
    args = _gather_args(**changes)
    return args.pop("hidden"), args.pop("weight"), args.pop("targets"), args


def _meta(tensor):
    return torch.empty_like(tensor, device="meta")


BAD_GATHER = {
    "hidden 1-D": ("hidden", lambda: _gather(hidden=torch.randn(N * D))),
    "hidden int": (
        "hidden",
        lambda: _gather(
            hidden=torch.ones(N, D, dtype=torch.int64), weight=torch.ones(V, D, dtype=torch.int64)
        ),
    ),
    "weight 3-D": ("weight", lambda: _gather(weight=torch.randn(1, V, D))),
    "weight dtype differs": ("weight", lambda: _gather(weight=torch.randn(V, D, dtype=torch.float16))),
    "weight d differs": ("weight", lambda: _gather(weight=torch.randn(V, D + 1))),
    "weight on meta": ("weight", lambda: _gather(weight=_meta(torch.randn(V, D)))),
    "targets 2-D": ("targets", lambda: _gather(targets=torch.zeros(N, 1, dtype=torch.int64))),
    "targets float": ("targets", lambda: _gather(targets=torch.zeros(N))),
    "targets int32": ("targets", lambda: _gather(targets=torch.zeros(N, dtype=torch.int32))),
    "targets length": ("targets", lambda: _gather(targets=torch.zeros(N + 1, dtype=torch.int64))),
    "targets on meta": ("targets", lambda: _gather(targets=_meta(torch.zeros(N, dtype=torch.int64)))),
    "target = V": ("targets", lambda: _gather(targets=torch.tensor([0, 1, V, 2, 3, 4]))),
    "target negative": ("targets", lambda: _gather(targets=torch.tensor([0, 1, -1, 2, 3, 4]))),
    "cu_seqlens not from 0": ("cu_seqlens", lambda: _gather(cu_seqlens=torch.tensor([1, 3, N]))),
    "cu_seqlens not to N": ("cu_seqlens", lambda: _gather(cu_seqlens=torch.tensor([0, 3, N - 1]))),
    "cu_seqlens decreasing": ("cu_seqlens", lambda: _gather(cu_seqlens=torch.tensor([0, 4, 2, N]))),
    "cu_seqlens float": ("cu_seqlens", lambda: _gather(cu_seqlens=torch.tensor([0.0, N]))),
    "cu_seqlens 2-D": ("cu_seqlens", lambda: _gather(cu_seqlens=torch.tensor([[0, N]]))),
    "cu_seqlens empty": ("cu_seqlens", lambda: _gather(cu_seqlens=torch.tensor([], dtype=torch.int64))),
    "cu_seqlens on meta": ("cu_seqlens", lambda: _gather(cu_seqlens=_meta(torch.tensor([0, N])))),
    "temperature 0": ("temperature", lambda: _gather(temperature=0.0)),
    "temperature negative": ("temperature", lambda: _gather(temperature=-1.0)),
    "temperature nan": ("temperature", lambda: _gather(temperature=float("nan"))),
    "temperature inf": ("temperature", lambda: _gather(temperature=float("inf"))),
    "ignore_index float": ("ignore_index", lambda: _gather(ignore_index=-100.0)),
}

BAD_PRUNE = {
    "scores 2-D": ("scores", _prune_args(scores=torch.randn(1, C))),
    "scores float64": ("scores", _prune_args(scores=torch.randn(C, dtype=torch.float64))),
    "scores int": ("scores", _prune_args(scores=torch.arange(C))),
    "group_offsets decreasing": ("group_offsets", _prune_args(group_offsets=torch.tensor([0, 5, 3, C]))),
    "group_offsets not from 0": ("group_offsets", _prune_args(group_offsets=torch.tensor([2, C]))),
    "group_offsets not to C": ("group_offsets", _prune_args(group_offsets=torch.tensor([0, C - 1]))),
    "group_offsets float": ("group_offsets", _prune_args(group_offsets=torch.tensor([0.0, C]))),
    "group_offsets empty": ("group_offsets", _prune_args(group_offsets=torch.tensor([], dtype=torch.int64))),
    "group_offsets on meta": ("group_offsets", _prune_args(group_offsets=_meta(torch.tensor([0, C])))),
    "k 0": ("k", _prune_args(k=0)),
    "k negative": ("k", _prune_args(k=-2)),
    "k float": ("k", _prune_args(k=2.0)),
    "k bool": ("k", _prune_args(k=True)),
    "margin negative": ("margin", _prune_args(margin=-0.1)),
    "margin nan": ("margin", _prune_args(margin=float("nan"))),
    "min_score nan": ("min_score", _prune_args(min_score=float("nan"))),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(BAD_GATHER))
def test_logprob_gather_rejects(case, backend):
    name, build = BAD_GATHER[case]
    hidden, weight, targets, kwargs = build()
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        ops.logprob_gather(hidden, weight, targets, backend=backend, **kwargs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["avg", "", None])
def test_linear_cross_entropy_rejects_reduction(backend, reduction):
    hidden, weight, targets, _ = _gather()
    with pytest.raises(ValueError, match="reduction"):
        ops.linear_cross_entropy(hidden, weight, targets, reduction=reduction, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(BAD_PRUNE))
def test_branch_prune_rejects(case, backend):
    name, kwargs = BAD_PRUNE[case]
    kwargs = dict(kwargs)
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        ops.branch_prune(kwargs.pop("scores"), kwargs.pop("group_offsets"), backend=backend, **kwargs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_valid_calls_pass_validation(backend):
    hidden, weight, targets, kwargs = _gather()
    targets[1] = kwargs["ignore_index"]  # an ignored row is valid
    with pytest.raises(DispatchReached):
        ops.logprob_gather(hidden, weight, targets, backend=backend, **kwargs)
    with pytest.raises(DispatchReached):
        ops.linear_cross_entropy(hidden, weight, targets, reduction="sum", backend=backend)
    kwargs = _prune_args(margin=float("inf"), min_score=float("-inf"))
    with pytest.raises(DispatchReached):
        ops.branch_prune(kwargs.pop("scores"), kwargs.pop("group_offsets"), backend=backend, **kwargs)
