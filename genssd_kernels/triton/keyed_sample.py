"""Triton ``keyed_sample``: the teacher's keyed Gumbel-max draw in one read of the logits.

``keyed_sample(logits, keys, step, temperature=T, banned=banned)`` returns, token for token, what

    sample(logits.float().masked_fill(banned, -inf), step_keys(keys, step), temperature=T)

returns (``genssd.sampling``, ``top_p = 1``; nucleus sampling, ``top_p < 1``, stays on the torch
path). The torch code makes ~20 elementwise int64/fp32 passes over ``[R, V]``; here every logit is
loaded once and its hash, Gumbel noise and the running arg-max live in registers.

Kernels (inference only, no autograd):

1. ``_partials_kernel``, grid = R rows x S vocabulary splits, flattened (split fastest). A program
   walks its split's ``BLOCK_V`` tiles and keeps a running (value, index) per lane; one reduction
   over the lanes at the end. With S = 1 it writes the token itself and nothing else runs.
2. ``_combine_kernel`` (S > 1 only): one program per ``COMBINE_ROWS`` rows folds the ``[R, S]``
   partial records into the tokens.

Why a split grid: the kernel is bound by its arithmetic, not by memory. Per logit it does two
64-bit multiplies and the shifts of the hash, two precise ``logf`` and the arg-max update: ~94
SASS instructions in the sm_90 build (offline ptxas, Triton 3.9; 64 registers, no spills) against
2-4 bytes loaded, so an H100/H200 needs every SM busy with several programs to hide the dependent
latencies (the ``logf`` chains). One program per row gives 256
programs at R = 256, under two per SM; the split gives about ``WAVES`` waves of programs on any R
(at R = 256: 38 splits of 4 tiles at V = 152k, 32 splits of one tile at V = 32k), so the last wave
leaves little of the card idle, and the partial records are tiny (8 bytes per program).

Matching the torch path bit for bit:

- Hash: ``mix(step_key + (v + 1) * GOLDEN)`` in uint64, whose products wrap modulo 2**64 and whose
  ``>>`` is logical, as the int64 torch code emulates. The 64-bit constants are all >= 2**63, so
  Triton types them uint64 (checked: the TTIR holds 64-bit constants, no int32 truncation).
- ``u = ((bits >> 40) + 0.5) * 2**-24`` clamped to ``1 - 2**-24`` and ``-log(-log(u))`` in the same
  float32 operations. ``tl.log`` of float32 lowers on CUDA to libdevice's ``__nv_logf`` (checked in
  the sm_90 PTX of Triton 3.9: the same code as ``libdevice.log``, no ``lg2.approx``), the ``logf``
  torch's CUDA log calls: on an H200 (torch 2.11, Triton 3.6) the kernel's noise equals torch's
  CUDA ``-log(-log(u))`` bit for bit on all 2**24 possible ``u``. ``libdevice.log`` itself cannot
  run in the interpreter
  (``extern_elementwise`` raises there), hence ``tl.log``. In the interpreter ``tl.log`` is numpy's
  float32 log, which differs in the last bit from torch's CPU log (SLEEF) for ~22% of the 2**24
  possible ``u``; the interpreter takes the log in float64 and rounds (~0.1% differ, by one ulp),
  which can flip a token only when two perturbed scores lie within an ulp of each other.
- Temperature: torch divides by a Python scalar differently per device. On CPU it divides by
  ``float32(T)``. On CUDA (``div_true_kernel_cuda``, a CPU-scalar divisor) it multiplies by the
  reciprocal formed in float64 and rounded to float32: with torch 2.11 on an H200, ``x / T`` equals
  ``x * float32(1 / T)`` on 4M random ``x`` at T = 0.3, 0.7, 1.3 and 2.9, while the float32
  reciprocal of ``float32(T)`` (older torch) differs at T = 2.9. The kernel scales as torch does
  on each device (``RECIPROCAL``), with FP contraction off so that ``logit * (1/T) + gumbel`` is
  not fused into one FMA (torch rounds the product first). The tests build near ties that only the
  right scaling breaks as torch does, so a change in torch shows up there.
- Arg-max: the first index among equal maxima, NaN above everything (as ``torch.argmax``).

No host synchronization, nothing read on the host, fixed-size outputs: a CUDA graph can capture
it, and ``step`` is read from device memory so that replays see it advance.
"""

from __future__ import annotations

import functools
import math
import numbers
import struct

import torch
import triton
import triton.language as tl

from genssd_kernels.triton import INTERPRETED, KERNEL_DTYPES, device_guard

# splitmix64 constants (genssd.sampling), as unsigned 64-bit values.
GOLDEN: tl.constexpr = tl.constexpr(0x9E3779B97F4A7C15)
MIX1: tl.constexpr = tl.constexpr(0xBF58476D1CE4E5B9)
MIX2: tl.constexpr = tl.constexpr(0x94D049BB133111EB)
# The largest float32 below 1, the upper clamp of u (see genssd.sampling.uniform).
BELOW_ONE: tl.constexpr = tl.constexpr(1.0 - 2.0**-24)
INT32_MAX: tl.constexpr = tl.constexpr(2**31 - 1)

if INTERPRETED:
    # The interpreter pays per operation and runs programs one after another: modest tiles, and
    # two tiles a split so that the tests run the split and combine paths on small shapes.
    BLOCK_V = 256
    NUM_WARPS = 4
    INTERPRETED_TILES_PER_SPLIT = 2
    COMBINE_ROWS, COMBINE_SPLITS = 8, 4
else:
    # 1024 logits a tile at 4 warps: 8 a thread, 16-32 byte vector loads. See WAVES for the split.
    BLOCK_V = 1024
    NUM_WARPS = 4
    COMBINE_ROWS, COMBINE_SPLITS = 32, 32
# Programs resident per SM assumed when sizing the splits (64 registers x 128 threads: 8 fit in an
# SM's 64K registers), and the waves of programs aimed for: with ~8 waves the partly filled last
# one costs at most ~1/8 of the time.
PROGRAMS_PER_SM = 8
WAVES = 8


@triton.jit
def _mix(x):
    """splitmix64's finalizer on uint64 ``x`` (products wrap, shifts are logical)."""
    x = (x ^ (x >> 30)) * MIX1
    x = (x ^ (x >> 27)) * MIX2
    return x ^ (x >> 31)


@triton.jit
def _top24_of_mix(x):
    """``_mix(x) >> 40`` as int32: the finalizer's last step ``z ^ (z >> 31)`` leaves bits 40-63 of
    ``z`` unchanged (``z >> 31`` has nothing above bit 32), so it is skipped."""
    x = (x ^ (x >> 30)) * MIX1
    x = (x ^ (x >> 27)) * MIX2
    return (x >> 40).to(tl.int32)


@triton.jit
def _log(x, FP64_LOG: tl.constexpr):
    """float32 natural log: libdevice ``logf`` on CUDA; in the interpreter the float64 log rounded to
    float32, closer to torch's CPU log than numpy's float32 log (module docstring)."""
    if FP64_LOG:
        return tl.log(x.to(tl.float64)).to(tl.float32)
    return tl.log(x)


@triton.jit
def _gumbel(top24, FP64_LOG: tl.constexpr):
    """Gumbel noise from 24 random bits (int32 in [0, 2**24)), in genssd.sampling's float32 steps."""
    u = (top24.to(tl.float32) + 0.5) * (1.0 / (1 << 24))
    u = tl.minimum(u, BELOW_ONE)
    return -_log(-_log(u, FP64_LOG), FP64_LOG)


@triton.jit
def _tile_update(best, best_idx, row_ptr, banned_ptr, stride_b, col0, V, tile_key, lane_offsets,
                 temperature, inv_temperature, GREEDY: tl.constexpr, HAS_BANNED: tl.constexpr,
                 RECIPROCAL: tl.constexpr, FP64_LOG: tl.constexpr, MASKED: tl.constexpr,
                 BLOCK_V: tl.constexpr):  # fmt: skip
    """Fold the tile of columns ``col0 .. col0 + BLOCK_V - 1`` into the per-lane running arg-max.

    ``tile_key`` is ``step_key + (col0 + 1) * GOLDEN`` and ``lane_offsets`` ``lane * GOLDEN``
    (uint64), so token ``v``'s hash input costs one add. Columns increase with the tiles, so a
    strictly greater score (or a first NaN) replaces the lane's best: the earlier index wins ties.
    Masked lanes read -inf, which never replaces anything.
    """
    cols = col0 + tl.arange(0, BLOCK_V)
    if MASKED:
        valid = cols < V
        x = tl.load(row_ptr + cols, mask=valid, other=float("-inf")).to(tl.float32)
        if HAS_BANNED:
            x = tl.where(tl.load(banned_ptr + cols * stride_b, mask=valid, other=1) != 0, float("-inf"), x)
    else:
        x = tl.load(row_ptr + cols).to(tl.float32)
        if HAS_BANNED:
            x = tl.where(tl.load(banned_ptr + cols * stride_b) != 0, float("-inf"), x)
    if not GREEDY:
        if RECIPROCAL:
            x = x * inv_temperature
        else:
            x = tl.math.div_rn(x, temperature)
        x = x + _gumbel(_top24_of_mix(tile_key + lane_offsets), FP64_LOG)
    take = (best == best) & ((x != x) | (x > best))
    return tl.where(take, x, best), tl.where(take, cols, best_idx)


@triton.jit
def _argmax_reduce(vals, idxs, AXIS: tl.constexpr):
    """Reduce (value, index) pairs along ``AXIS``: the smallest index of a NaN if there is one,
    else the smallest index among the largest values. Returns (value, index)."""
    is_nan = vals != vals
    any_nan = tl.max(is_nan.to(tl.int32), axis=AXIS) > 0
    top = tl.max(tl.where(is_nan, float("-inf"), vals), axis=AXIS)
    if AXIS == 0:
        hit = tl.where(any_nan, is_nan, vals == top)
    else:
        hit = tl.where(any_nan[:, None], is_nan, vals == top[:, None])
    idx = tl.min(tl.where(hit, idxs, INT32_MAX), axis=AXIS)
    return tl.where(any_nan, float("nan"), top), idx


@triton.jit
def _partials_kernel(
    logits_ptr,
    keys_ptr,
    step_ptr,
    banned_ptr,
    part_val_ptr,
    part_idx_ptr,
    tokens_ptr,
    V,
    stride_r,
    stride_k,
    stride_b,
    n_splits,
    tiles_per_split,
    temperature,
    inv_temperature,
    GREEDY: tl.constexpr,
    HAS_BANNED: tl.constexpr,
    RECIPROCAL: tl.constexpr,
    FP64_LOG: tl.constexpr,
    DIRECT: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """Program ``row * n_splits + split``: the arg-max of row ``row``'s perturbed scores over tiles
    ``split * tiles_per_split ..`` (at most ``tiles_per_split``). Writes ``tokens [row]`` (int64)
    when ``DIRECT`` (one split), else ``part_val / part_idx [row * n_splits + split]``."""
    pid = tl.program_id(0)
    row = pid // n_splits
    split = pid % n_splits
    lanes = tl.arange(0, BLOCK_V)
    t0 = split * tiles_per_split
    t1 = tl.minimum(t0 + tiles_per_split, tl.cdiv(V, BLOCK_V))
    full_end = tl.minimum(t1, V // BLOCK_V)
    row_ptr = logits_ptr + row.to(tl.int64) * stride_r

    if GREEDY:
        step_key = tl.zeros((), dtype=tl.uint64)
        lane_offsets = tl.zeros((BLOCK_V,), dtype=tl.uint64)
    else:
        key = tl.load(keys_ptr + row.to(tl.int64) * stride_k).to(tl.uint64, bitcast=True)
        step = tl.load(step_ptr).to(tl.uint64, bitcast=True)
        step_key = _mix(key + (step + 1) * MIX2)
        lane_offsets = lanes.to(tl.uint64) * GOLDEN

    best = tl.full((BLOCK_V,), float("-inf"), dtype=tl.float32)
    # A lane whose scores are all -inf keeps its first column, which ties with the others at -inf.
    best_idx = t0 * BLOCK_V + lanes
    # The last tile of the row alone needs a column mask: peeled off the loop.
    for t in range(t0, full_end):
        col0 = t * BLOCK_V
        tile_key = step_key + (col0 + 1).to(tl.uint64) * GOLDEN
        best, best_idx = _tile_update(best, best_idx, row_ptr, banned_ptr, stride_b, col0, V, tile_key,
                                      lane_offsets, temperature, inv_temperature, GREEDY, HAS_BANNED,
                                      RECIPROCAL, FP64_LOG, False, BLOCK_V)  # fmt: skip
    if full_end < t1:
        col0 = full_end * BLOCK_V
        tile_key = step_key + (col0 + 1).to(tl.uint64) * GOLDEN
        best, best_idx = _tile_update(best, best_idx, row_ptr, banned_ptr, stride_b, col0, V, tile_key,
                                      lane_offsets, temperature, inv_temperature, GREEDY, HAS_BANNED,
                                      RECIPROCAL, FP64_LOG, True, BLOCK_V)  # fmt: skip
    val, idx = _argmax_reduce(best, best_idx, 0)
    if DIRECT:
        tl.store(tokens_ptr + row, idx.to(tl.int64))
    else:
        tl.store(part_val_ptr + pid, val)
        tl.store(part_idx_ptr + pid, idx)


@triton.jit
def _combine_kernel(
    part_val_ptr,
    part_idx_ptr,
    tokens_ptr,
    R,
    n_splits,
    BLOCK_R: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """Rows ``BLOCK_R * program ..``: fold the ``[R, n_splits]`` partial records into ``tokens``
    (int64). Every (row, lane) keeps the best record it has seen, the smaller index on ties."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    lanes = tl.arange(0, BLOCK_S)
    best = tl.full((BLOCK_R, BLOCK_S), float("-inf"), dtype=tl.float32)
    best_idx = tl.full((BLOCK_R, BLOCK_S), INT32_MAX, dtype=tl.int32)
    for s0 in range(0, n_splits, BLOCK_S):
        s = s0 + lanes
        inside = (rows < R)[:, None] & (s < n_splits)[None, :]
        offsets = rows.to(tl.int64)[:, None] * n_splits + s[None, :]
        v = tl.load(part_val_ptr + offsets, mask=inside, other=float("-inf"))
        i = tl.load(part_idx_ptr + offsets, mask=inside, other=INT32_MAX)
        take = (best == best) & ((v != v) | (v > best) | ((v == best) & (i < best_idx)))
        best = tl.where(take, v, best)
        best_idx = tl.where(take, i, best_idx)
    _, idx = _argmax_reduce(best, best_idx, 1)
    tl.store(tokens_ptr + rows, idx.to(tl.int64), mask=rows < R)


def _float32(value: float) -> float:
    """``value`` rounded to the nearest float32 (as torch casts a Python scalar)."""
    return struct.unpack("f", struct.pack("f", value))[0]


def _reciprocal(temperature: float) -> float:
    """``1 / temperature`` as torch's CUDA division by a Python scalar forms it: in float64, then
    rounded to float32 (module docstring). Only read on CUDA, and never when greedy."""
    return math.inf if temperature == 0 else _float32(1.0 / temperature)


@functools.cache
def _sm_count_of(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _tiles_per_split(rows: int, n_tiles: int, device: torch.device) -> int:
    """Vocabulary tiles per program: about ``WAVES`` waves of ``PROGRAMS_PER_SM`` programs per SM."""
    if INTERPRETED:
        return INTERPRETED_TILES_PER_SPLIT
    index = device.index if device.index is not None else torch.cuda.current_device()
    slots = _sm_count_of(index) * PROGRAMS_PER_SM
    return max(1, rows * n_tiles // (slots * WAVES))


def _check_inputs(logits, keys, step, temperature, banned) -> None:
    """Raise ``ValueError`` naming the first bad argument."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.dtype not in KERNEL_DTYPES:
        raise ValueError("logits must be a 2-D [R, V] fp32/bf16/fp16 tensor")
    rows, width = logits.shape
    if width == 0 or width >= 2**31:
        raise ValueError(f"logits must have 1 <= V < 2**31 columns, got V={width}")
    if logits.stride(1) != 1 and width > 1:
        raise ValueError("logits must have unit stride along the vocabulary (stride(1) == 1)")
    device = logits.device
    if device.type != "cuda" and not (INTERPRETED and device.type == "cpu"):
        raise ValueError(
            f"logits must be a CUDA tensor (CPU tensors only in the Triton interpreter), got {device}"
        )
    if not isinstance(keys, torch.Tensor) or keys.dtype != torch.int64 or tuple(keys.shape) != (rows,):
        raise ValueError(f"keys must be a [R] = [{rows}] int64 tensor")
    if keys.device != device:
        raise ValueError(f"keys must be on logits' device {device}, got {keys.device}")
    if isinstance(step, torch.Tensor):
        if step.dtype != torch.int64 or step.numel() != 1 or step.dim() > 1:
            raise ValueError("step must be an int or a [1] int64 tensor")
        if step.device != device:
            raise ValueError(f"step must be on logits' device {device}, got {step.device}")
    elif isinstance(step, bool) or not isinstance(step, numbers.Integral) or not -(2**63) <= step < 2**63:
        raise ValueError(f"step must be an int in the int64 range or a [1] int64 tensor, got {step!r}")
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, numbers.Real)
        or not math.isfinite(temperature)
        or temperature < 0
    ):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if banned is not None:
        if (
            not isinstance(banned, torch.Tensor)
            or banned.dtype != torch.bool
            or tuple(banned.shape) != (width,)
        ):
            raise ValueError(f"banned must be None or a [V] = [{width}] bool tensor")
        if banned.device != device:
            raise ValueError(f"banned must be on logits' device {device}, got {banned.device}")


def keyed_sample(
    logits: torch.Tensor,
    keys: torch.Tensor,
    step: int | torch.Tensor,
    *,
    temperature: float,
    banned: torch.Tensor | None = None,
) -> torch.Tensor:
    """One keyed Gumbel-max token per row, fused (top_p = 1 only: nucleus sampling stays on torch).

    Equals ``genssd.sampling.sample(logits.float().masked_fill(banned, -inf),
    step_keys(keys, step), temperature=temperature)`` token for token on the same device.

    Args:
        logits: ``[R, V]`` fp32/bf16/fp16 raw logits (read as fp32), any row stride, ``stride(1) == 1``.
        keys: ``[R]`` int64 candidate keys, not yet mixed with the step (``step_keys`` is applied here).
        step: the sampling step, a ``[1]`` int64 tensor on logits' device (read by the kernel, so a
            captured CUDA graph sees it advance) or an int.
        temperature: >= 0; 0 is greedy (the first arg-max of the masked logits; keys and step unused).
        banned: ``[V]`` bool or None: ids that are -inf before sampling.
    Returns:
        ``[R]`` int64 token ids.
    Raises:
        ValueError: naming the argument, on a bad shape, dtype, device or value (before any launch).
    """
    _check_inputs(logits, keys, step, temperature, banned)
    rows, width = logits.shape
    device = logits.device
    tokens = torch.empty(rows, dtype=torch.int64, device=device)
    if rows == 0:
        return tokens
    greedy = temperature == 0
    if greedy:
        step_t = keys  # not read
    elif isinstance(step, torch.Tensor):
        step_t = step
    else:
        # A fill kernel, no host-to-device copy: capturable as well (the value is then fixed).
        step_t = torch.full((1,), int(step), dtype=torch.int64, device=device)
    t32 = _float32(float(temperature))
    n_tiles = triton.cdiv(width, BLOCK_V)
    tiles = min(n_tiles, _tiles_per_split(rows, n_tiles, device))
    n_splits = triton.cdiv(n_tiles, tiles)
    direct = n_splits == 1
    if direct:
        part_val, part_idx = tokens, tokens  # not written
    else:
        part_val = torch.empty(rows * n_splits, dtype=torch.float32, device=device)
        part_idx = torch.empty(rows * n_splits, dtype=torch.int32, device=device)
    # bool is read through a uint8 view: one byte per element, 0 or 1.
    banned_u8 = banned.view(torch.uint8) if banned is not None else tokens
    with device_guard(logits):
        _partials_kernel[(rows * n_splits,)](
            logits,
            keys,
            step_t,
            banned_u8,
            part_val,
            part_idx,
            tokens,
            width,
            logits.stride(0),
            keys.stride(0),
            banned.stride(0) if banned is not None else 0,
            n_splits,
            tiles,
            t32,
            _reciprocal(float(temperature)),
            GREEDY=greedy,
            HAS_BANNED=banned is not None,
            RECIPROCAL=device.type == "cuda",
            FP64_LOG=INTERPRETED,
            DIRECT=direct,
            BLOCK_V=BLOCK_V,
            num_warps=NUM_WARPS,
            enable_fp_fusion=False,
        )
        if not direct:
            _combine_kernel[(triton.cdiv(rows, COMBINE_ROWS),)](
                part_val,
                part_idx,
                tokens,
                rows,
                n_splits,
                BLOCK_R=COMBINE_ROWS,
                BLOCK_S=COMBINE_SPLITS,
                num_warps=NUM_WARPS,
            )
    return tokens
