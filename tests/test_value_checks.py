"""Value checks without host syncs (``genssd_kernels/triton/value_checks.py``).

On CPU (the Triton interpreter, which ignores device asserts) the check kernels' verdicts, read
through a flag tensor, must agree with the host checks of ``ops.py`` on random valid and invalid
targets and offsets: odd sizes around the check block, int32/int64 offsets, strided views,
ignored rows. On a GPU: a bad value fails the process at the next synchronizing point with the
op and the argument in its output, and a default-argument call neither synchronizes nor breaks
CUDA graph capture.
"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import backends_on

from genssd_kernels import branch_prune, linear_cross_entropy, logprob_gather, ops, testing
from genssd_kernels.dispatch import available_backends

TRITON_ON_CPU = available_backends("cpu", "branch_prune")["triton"] is None
needs_interpreter = pytest.mark.skipif(not TRITON_ON_CPU, reason="triton cannot run on CPU here")
IGNORE = -100
# Sizes around the check kernels' block (1024 elements a program).
SIZES = [1, 7, 1023, 1024, 1025, 2500]


def _host_ok(check, *args) -> bool:
    """True when the ``ops.py`` host check accepts the arguments (it raises ValueError otherwise)."""
    try:
        check(*args)
    except ValueError:
        return False
    return True


def _host_targets_ok(targets, vocab, ignore_index):
    hidden = torch.zeros(targets.numel(), 1)
    return _host_ok(
        ops._validate_gather, hidden, torch.zeros(vocab, 1), targets, None, 1.0, ignore_index, True
    )


def _host_offsets_ok(offsets, total):
    return _host_ok(ops._check_offsets, "offsets", offsets, total, offsets.device, True)


def _target_cases():
    """(targets, vocab, ignore_index, valid): valid and invalid, ignored rows included."""
    cases = []
    for n in SIZES:
        gen = torch.Generator().manual_seed(n)
        vocab = int(torch.randint(1, 50, (1,), generator=gen))
        targets = torch.randint(0, vocab, (n,), generator=gen)
        targets[torch.rand(n, generator=gen) < 0.2] = IGNORE
        last = n - 1
        cases.append((f"valid-{n}", targets, vocab, IGNORE))
        for label, index, value in (("V", last, vocab), ("negative", n // 2, -1), ("huge", 0, 2**40)):
            bad = targets.clone()
            bad[index] = value
            cases.append((f"{label}-{n}", bad, vocab, IGNORE))
        # An ignore_index inside [0, V), and one that matches the bad value (then it is valid).
        cases.append((f"ignore-in-range-{n}", targets.clamp_min(0), vocab, 0))
        bad = targets.clamp_min(0)
        bad[last] = vocab + 3
        cases.append((f"bad-is-ignore-{n}", bad, vocab, vocab + 3))
    # Every other entry of a buffer (the skipped entries are out of range, or hold the bad one).
    interleaved = torch.randint(0, 9, (1500, 2), generator=torch.Generator().manual_seed(5))
    interleaved[:, 1] = 9
    cases.append(("strided-valid", interleaved[:, 0], 9, IGNORE))
    interleaved = interleaved.clone()
    interleaved[1400, 0] = 9
    cases.append(("strided-bad", interleaved[:, 0], 9, IGNORE))
    return [
        pytest.param(targets, vocab, ignore_index, "valid" in name or "ignore" in name, id=name)
        for name, targets, vocab, ignore_index in cases
    ]


def _offset_cases():
    """(name, offsets, total): valid and invalid, as int32 and int64."""
    cases = [
        ("lone-zero", torch.tensor([0]), 0),
        ("lone-not-total", torch.tensor([0]), 3),
        ("lone-nonzero", torch.tensor([2]), 2),
        ("all-empty", torch.zeros(1030, dtype=torch.int64), 0),
    ]
    for groups in [1, 4, 1023, 1024, 1030]:
        offsets = testing.random_offsets(groups, 5, seed=groups)
        total = int(offsets[-1])
        cases.append((f"valid-{groups}", offsets, total))
        cases.append((f"not-from-0-{groups}", offsets + 1, total + 1))
        cases.append((f"short-{groups}", offsets, total + 1))
        cases.append((f"long-{groups}", offsets, total - 1))
        if groups > 1:
            bad = offsets.clone()
            bad[groups // 2 + 1] = bad[groups // 2] - 1  # a decrease in the middle
            cases.append((f"decreasing-{groups}", bad, total))
            bad = offsets.clone()
            bad[groups // 2] = total + 7  # beyond the end, then back
            cases.append((f"overshoot-{groups}", bad, total))
            bad = offsets.clone()
            bad[1] = -1
            cases.append((f"negative-{groups}", bad, total))
    offsets = testing.random_offsets(1500, 4, seed=3)
    interleaved = torch.stack([offsets, torch.full_like(offsets, -5)], 1)
    cases.append(("strided-valid", interleaved[:, 0], int(offsets[-1])))
    cases.append(("strided-other-column", interleaved[:, 1], int(offsets[-1])))
    return [
        pytest.param(offsets.to(dtype), total, id=f"{name}-{str(dtype)[6:]}")
        for name, offsets, total in cases
        for dtype in (torch.int32, torch.int64)
    ]


@needs_interpreter
@pytest.mark.parametrize("targets,vocab,ignore_index,valid", _target_cases())
def test_targets_verdict_matches_host_check(targets, vocab, ignore_index, valid):
    from genssd_kernels.triton import value_checks

    want = _host_targets_ok(targets, vocab, ignore_index)
    assert want == valid  # the case is what its name says
    targets_ok, offsets_ok = value_checks.verdict(
        "logprob_gather", targets=targets, vocab=vocab, ignore_index=ignore_index
    )
    assert (targets_ok, offsets_ok) == (want, True)


@needs_interpreter
@pytest.mark.parametrize("offsets,total", _offset_cases())
def test_offsets_verdict_matches_host_check(offsets, total):
    from genssd_kernels.triton import value_checks

    want = _host_offsets_ok(offsets, total)
    got = value_checks.verdict("branch_prune", offsets=offsets, offsets_name="group_offsets", total=total)
    assert got == (True, want)


@needs_interpreter
def test_one_launch_checks_targets_and_offsets_apart():
    from genssd_kernels.triton import value_checks

    targets = torch.tensor([0, 3, IGNORE, 2])
    good, bad = torch.tensor([0, 2, 4]), torch.tensor([0, 3, 2, 4])
    for t, o, want in (
        (targets, good, (True, True)),
        (targets, bad, (True, False)),
        (targets.clamp_min(5), good, (False, True)),
        (targets.clamp_min(5), bad, (False, False)),
    ):
        got = value_checks.verdict(
            "logprob_gather",
            targets=t,
            vocab=4,
            ignore_index=IGNORE,
            offsets=o,
            offsets_name="cu_seqlens",
            total=4,
        )
        assert got == want


def _prune_offset_cases():
    """Offsets whose every value lies in [0, C]: the interpreter, which ignores the asserts, then
    runs the whole kernel without reading out of bounds."""
    offsets = testing.random_offsets(37, 9, seed=4)
    total = int(offsets[-1])
    decreasing = offsets.clone()
    decreasing[20] = decreasing[19] - 1
    late_start = offsets.clone()
    late_start[0] = 1
    early_end = offsets.clone()
    early_end[-1] -= 1
    return [
        pytest.param(o.to(dtype), total, id=f"{name}-{str(dtype)[6:]}")
        for name, o in (
            ("valid", offsets),
            ("decreasing", decreasing),
            ("late-start", late_start),
            ("early-end", early_end),
        )
        for dtype in (torch.int32, torch.int64)
    ]


@needs_interpreter
@pytest.mark.parametrize("offsets,total", _prune_offset_cases())
def test_branch_prune_kernel_checks_its_own_offsets(offsets, total):
    """The check folded into the triton branch_prune kernel: each group's verdict, all 1 exactly
    when the host accepts the offsets; with valid offsets the outputs equal the unchecked ones."""
    from genssd_kernels.triton import branch_prune as triton_prune

    scores = torch.randn(total, generator=torch.Generator().manual_seed(2))
    verdict = torch.full((offsets.numel() - 1,), 7, dtype=torch.int32)
    checked = triton_prune.branch_prune(scores, offsets, 0.5, 3, float("-inf"), verdict=verdict)
    assert set(verdict.tolist()) <= {0, 1}
    assert bool(verdict.all()) == _host_offsets_ok(offsets, total)
    if _host_offsets_ok(offsets, total):
        unchecked = triton_prune.branch_prune(scores, offsets, 0.5, 3, float("-inf"))
        for a, b in zip(checked, unchecked):
            assert torch.equal(a, b)


def test_fallback_without_triton_asserts_the_same(monkeypatch):
    """Without triton, ``torch._assert_async`` checks the values (on CPU it raises at once)."""
    monkeypatch.setattr(ops, "unavailable_reason", lambda *args: "no triton (test)")
    targets = torch.tensor([0, 3, IGNORE])
    ops._check_on_device("logprob_gather", targets=targets, vocab=4, ignore_index=IGNORE)
    with pytest.raises(RuntimeError, match="targets"):
        ops._check_on_device("logprob_gather", targets=targets, vocab=3, ignore_index=IGNORE)
    offsets = torch.tensor([0, 2, 2, 5])
    ops._check_on_device("branch_prune", offsets=offsets, offsets_name="group_offsets", total=5)
    for bad, total in ((offsets, 4), (offsets.flip(0), 0), (torch.tensor([0, 3, 2, 5]), 5)):
        with pytest.raises(RuntimeError, match="group_offsets"):
            ops._check_on_device("branch_prune", offsets=bad, offsets_name="group_offsets", total=total)


# ---- CUDA (run on the GPU machine) ----

# Each script makes one bad call with default arguments, then synchronizes; reaching the end
# means the bad value went unnoticed.
# case -> (the device message's start, which names the op and the argument, the call). The
# message is matched whole: a traceback alone also names the op and its arguments.
_PRUNE_MESSAGE = "genssd_kernels.branch_prune: group_offsets must start at 0"
_TARGETS_MESSAGE = f"genssd_kernels.{ops.GATHER_OP}: targets must lie in [0, V)"
_BAD_CALLS = {
    "branch_prune-triton": (_PRUNE_MESSAGE, "prune(backend='triton')"),
    "branch_prune-cpp": (_PRUNE_MESSAGE, "prune(backend='cpp')"),
    "branch_prune-reference": (_PRUNE_MESSAGE, "prune(backend='reference')"),
    "branch_prune-no-groups": (
        _PRUNE_MESSAGE,
        "g.branch_prune(torch.empty(0, device='cuda'), torch.tensor([3], device='cuda'), margin=0.5, k=2)",
    ),
    "logprob_gather-triton-targets": (_TARGETS_MESSAGE, "gather(backend='triton')"),
    "logprob_gather-reference-targets": (_TARGETS_MESSAGE, "gather(backend='reference')"),
    "logprob_gather-triton-cu_seqlens": (
        f"genssd_kernels.{ops.GATHER_OP}: cu_seqlens must start at 0",
        "gather(backend='triton', cu=bad_cu)",
    ),
    "linear_cross_entropy-targets": (_TARGETS_MESSAGE, "loss()"),
    "linear_cross_entropy-grad-targets": (_TARGETS_MESSAGE, "loss(grad=True)"),
}
_SCRIPT = """
import torch
import genssd_kernels as g

scores = torch.randn(40, device="cuda")
bad_offsets = torch.tensor([0, 10, 5, 30, 40], device="cuda")  # decreasing in the middle
hidden = torch.randn(12, 8, device="cuda")
weight = torch.randn(20, 8, device="cuda")
targets = torch.randint(0, 20, (12,), device="cuda")
targets[3] = -100
targets[7] = 20  # out of range
bad_cu = torch.tensor([0, 6, 13], device="cuda")  # ends past N = 12
good_targets = targets.clamp(0, 19)

def prune(backend):
    return g.branch_prune(scores, bad_offsets, margin=0.5, k=2, backend=backend)

def gather(backend, cu=None):
    return g.logprob_gather(hidden, weight, good_targets if cu is not None else targets, cu_seqlens=cu,
                            backend=backend)

def loss(grad=False):
    h = hidden.clone().requires_grad_(grad)
    out = g.linear_cross_entropy(h, weight, targets)
    if grad:
        out.backward()
    return out

{call}
torch.cuda.synchronize()
print("bad value went unnoticed")
"""


def _cpp_on_cuda() -> bool:
    return torch.cuda.is_available() and "cpp" in backends_on("cuda", "branch_prune")


@pytest.mark.cuda
@pytest.mark.parametrize("case", list(_BAD_CALLS))
def test_bad_value_fails_at_the_next_sync_naming_op_and_argument(case):
    message, call = _BAD_CALLS[case]
    if "cpp" in case and not _cpp_on_cuda():
        pytest.skip("the extension has no CUDA branch_prune here")
    script = textwrap.dedent(_SCRIPT).replace("{call}", call)
    # The device-side assert message is printed by the CUDA runtime: read both streams.
    result = subprocess.run(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    output = result.stdout
    assert result.returncode != 0 and "went unnoticed" not in output, output[-3000:]
    assert message in output, output[-3000:]


def _default_calls():
    """name -> zero-argument closure calling an op with default arguments on valid CUDA inputs."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    scores = torch.randn(4096 * 8, device="cuda", generator=gen)
    offsets = torch.arange(0, 4096 * 8 + 1, 8, device="cuda")
    hidden, weight, targets = testing.random_gather_inputs(64, 32, 300, torch.float32, device="cuda")
    cu_seqlens = torch.tensor([0, 10, 10, 64], device="cuda")
    calls = {
        "branch_prune-triton": lambda: branch_prune(scores, offsets, margin=0.5, k=4, backend="triton"),
        "logprob_gather": lambda: logprob_gather(
            hidden, weight, targets, cu_seqlens=cu_seqlens, return_entropy=True, backend="triton"
        ),
        "linear_cross_entropy": lambda: linear_cross_entropy(hidden, weight, targets, backend="triton"),
    }
    if _cpp_on_cuda():
        calls["branch_prune-cpp"] = lambda: branch_prune(scores, offsets, margin=0.5, k=4, backend="cpp")
    return calls


@pytest.mark.cuda
def test_default_calls_do_not_sync_and_capture_in_a_cuda_graph():
    for name, call in _default_calls().items():
        want = call()  # compiles the kernels outside the checked region
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            call()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            call()
        torch.cuda.current_stream().wait_stream(stream)
        with torch.cuda.graph(graph):
            captured = call()
        graph.replay()
        torch.cuda.synchronize()
        want = want if isinstance(want, tuple) else (want,)
        captured = captured if isinstance(captured, tuple) else (captured,)
        for a, b in zip(want, captured):
            if a is not None:
                assert torch.equal(a, b), name


@pytest.mark.cuda
def test_check_values_false_launches_no_check(monkeypatch):
    from genssd_kernels.triton import value_checks

    launched = []
    monkeypatch.setattr(value_checks, "check_values", lambda op, **kwargs: launched.append(op))
    hidden, weight, targets = testing.random_gather_inputs(8, 4, 16, torch.float32, device="cuda")
    offsets = torch.tensor([0, 3, 8], device="cuda")
    scores = torch.randn(8, device="cuda")
    logprob_gather(hidden, weight, targets, cu_seqlens=offsets, check_values=False)
    branch_prune(scores, offsets, margin=0.5, k=2, backend="reference", check_values=False)
    assert launched == []
    logprob_gather(hidden, weight, targets, cu_seqlens=offsets)
    branch_prune(scores, offsets, margin=0.5, k=2, backend="reference")
    assert len(launched) == 2
