"""Value checks on the GPU that never wait: the conditions ``ops.py`` checks on the host for CPU
tensors (target range, offsets), evaluated by tiny Triton kernels that fire ``tl.device_assert``.

Reading a CUDA tensor's values on the host costs a synchronization (134 us instead of 8 us for a
default ``branch_prune`` call on an H200). Here a check is one more launch on the current stream:
nothing is read back, so the call stays asynchronous and CUDA-graph capturable. A failed check
stops the kernel with a device-side assert; the message, naming the op and the argument, is
printed on stderr and the error surfaces at the next synchronizing point (CUDA contexts do not
survive a device-side assert: the process has to end).

``tl.device_assert`` is compiled in only when a kernel is compiled with ``debug=True``
(``triton/language/semantic.py``: ``device_assert`` returns early unless ``options.debug``). Debug
mode also turns on Triton's overflow sanitizer (an int64 recomputation and an assert for every
int32 add/sub/mul), so the hot kernels never use it: they stay as they are, and a check kernel of
this module is a separate, small launch. ``branch_prune`` folds its offsets check into its own
kernel instead (one launch is the whole op); it compiles with ``debug=True`` and
``sanitize_overflow=False`` (see ``DEBUG_ONLY_ASSERTS``), which adds only the asserts.

The interpreter (``TRITON_INTERPRET=1``) ignores ``tl.device_assert``, so each check can also
write its verdict to a flag tensor (``verdict=``): the tests compare the verdicts with the host
checks on CPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from genssd_kernels.triton import device_guard

# Launch options that compile the device asserts in and nothing else: ``debug`` alone would also
# add the overflow sanitizer to every int32 add/sub/mul of the kernel.
DEBUG_ONLY_ASSERTS = {"debug": True, "sanitize_overflow": False}

# Elements a check program reads: 4 warps, 8 elements a thread.
BLOCK = 1024


def targets_message(op: str) -> str:
    """The device-side message of a bad target value (``op``: the public op name)."""
    return f"genssd_kernels.{op}: targets must lie in [0, V) or equal ignore_index"


def offsets_message(op: str, name: str, total: str) -> str:
    """The device-side message of bad offsets (``total``: what the last offset must equal)."""
    return f"genssd_kernels.{op}: {name} must start at 0, end at {total} and be non-decreasing"


@triton.jit
def offsets_pair_ok(start, end, index, count_pairs, total):
    """True when the pair ``offsets[index], offsets[index + 1]`` (``start, end``, int64) of
    ``count_pairs`` pairs is valid on its own: ``0 <= start <= end <= total``, the first start 0
    and the last end ``total``. Every pair valid <=> the offsets valid; a pair that passes is
    safe to index with even when others fail (so a program asserts before it reads out of bounds).
    """
    ok = (start >= 0) & (end >= start) & (end <= total)
    ok = ok & ((index != 0) | (start == 0))
    return ok & ((index != count_pairs - 1) | (end == total))


@triton.jit
def _check_values_kernel(
    targets_ptr,
    stride_t,
    num_targets,
    vocab,
    ignore_index,
    offsets_ptr,
    stride_o,
    num_pairs,
    total,
    verdict_ptr,
    CHECK_TARGETS: tl.constexpr,
    CHECK_OFFSETS: tl.constexpr,
    TARGETS_MESSAGE: tl.constexpr,
    OFFSETS_MESSAGE: tl.constexpr,
    WRITE_VERDICT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Program ``b`` checks ``targets [b*BLOCK : (b+1)*BLOCK]`` (each in ``[0, vocab)`` or
    ``ignore_index``) and the offset pairs with the same indices; with ``WRITE_VERDICT`` it sets
    ``verdict[0]`` (targets) / ``verdict[1]`` (offsets) to 1 on a failure (never clears them)."""
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    if CHECK_TARGETS:
        inside = idx < num_targets
        t = tl.load(targets_ptr + idx * stride_t, mask=inside, other=0)
        ok = ((t >= 0) & (t < vocab)) | (t == ignore_index)
        tl.device_assert(ok, TARGETS_MESSAGE, mask=inside)
        if WRITE_VERDICT:
            bad = tl.max((inside & ~ok).to(tl.int32), axis=0)
            tl.store(verdict_ptr, 1, mask=bad > 0)
    if CHECK_OFFSETS:
        inside = idx < num_pairs
        start = tl.load(offsets_ptr + idx * stride_o, mask=inside, other=0).to(tl.int64)
        end = tl.load(offsets_ptr + (idx + 1) * stride_o, mask=inside, other=0).to(tl.int64)
        ok = offsets_pair_ok(start, end, idx, num_pairs, total)
        tl.device_assert(ok, OFFSETS_MESSAGE, mask=inside)
        if WRITE_VERDICT:
            bad = tl.max((inside & ~ok).to(tl.int32), axis=0)
            tl.store(verdict_ptr + 1, 1, mask=bad > 0)


def check_values(
    op: str,
    *,
    targets: torch.Tensor | None = None,
    vocab: int = 0,
    ignore_index: int = 0,
    offsets: torch.Tensor | None = None,
    offsets_name: str = "offsets",
    total: int = 0,
    total_name: str = "the row count",
    verdict: torch.Tensor | None = None,
) -> None:
    """One launch that checks, on the tensors' device and without waiting, what is given:

    Args:
        op: the public op name, for the message.
        targets: ``[N]`` int64, each in ``[0, vocab)`` or equal to ``ignore_index``.
        offsets: ``[P+1]`` int32/int64 named ``offsets_name``: 0 first, ``total`` last (called
            ``total_name`` in the message), non-decreasing.
        verdict: ``[2]`` int32 zeros or None; entry 0 (targets) / 1 (offsets) is set to 1 when
            that check fails (the only outcome visible under the interpreter).
    """
    pairs = offsets.numel() - 1 if offsets is not None else 0
    rows = targets.numel() if targets is not None else 0
    # One offset and nothing to pair it with (no groups): that single value must be 0 == total.
    # Checked as the pair (offsets[0], offsets[0]) through a zero stride.
    lone = offsets is not None and pairs == 0
    programs = triton.cdiv(max(rows, 1 if lone else pairs), BLOCK)
    if programs == 0:
        return
    anchor = targets if targets is not None else offsets
    with device_guard(anchor):
        _check_values_kernel[(programs,)](
            targets if targets is not None else anchor,
            targets.stride(0) if targets is not None else 0,
            rows,
            vocab,
            ignore_index,
            offsets if offsets is not None else anchor,
            0 if lone else (offsets.stride(0) if offsets is not None else 0),
            1 if lone else pairs,
            total,
            verdict if verdict is not None else anchor,
            CHECK_TARGETS=targets is not None and rows > 0,
            CHECK_OFFSETS=offsets is not None,
            TARGETS_MESSAGE=targets_message(op),
            OFFSETS_MESSAGE=offsets_message(op, offsets_name, total_name),
            WRITE_VERDICT=verdict is not None,
            BLOCK=BLOCK,
            num_warps=4,
            **DEBUG_ONLY_ASSERTS,
        )


def verdict(op: str, **kwargs) -> tuple[bool, bool]:
    """Run :func:`check_values` with a verdict and read it back (tests only: a host sync).

    Returns ``(targets_ok, offsets_ok)``.
    """
    anchor = kwargs.get("targets") if kwargs.get("targets") is not None else kwargs["offsets"]
    flags = torch.zeros(2, dtype=torch.int32, device=anchor.device)
    check_values(op, verdict=flags, **kwargs)
    bad_targets, bad_offsets = flags.tolist()
    return not bad_targets, not bad_offsets
