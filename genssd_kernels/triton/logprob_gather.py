"""Triton ``logprob_gather``: fused ``hidden @ weight.T`` -> log-softmax -> gather, with its backward.

Forward (three launches, no ``[N, V]`` buffer unless ``logits_out`` asks for the logits):

1. ``_forward_partials_kernel``, grid = row blocks x vocabulary splits. Each program walks its
   strip of the vocabulary in ``[BLOCK_N, BLOCK_V]`` logit tiles (``tl.dot`` over ``d``, fp32
   accumulation) and keeps an online max / sum-exp (/ entropy sum) per row. It writes one small
   partial record per (split, row). Splitting the vocabulary gives the GPU many programs for any
   ``N`` (the grid of a row-blocks-only design is 64 programs at N=8192 on a 132-SM card).
2. ``_combine_kernel``, one program per row block: folds the splits in a fixed order (so the
   result is bit-identical run to run), and computes the target logit as one dot product per
   row (a gather, far cheaper than testing every logit against the target inside the tile loop).
3. ``_segment_mean_kernel``: per-segment means of the valid log-probs.

Backward (deterministic, peak memory bounded): the vocabulary is cut into chunks of ``Vc``
columns. For each chunk ``_grad_logits_kernel`` recomputes the logit tiles and writes
``grad_z = g / T * (onehot - softmax)`` for the chunk (``[N, Vc]`` in the input dtype), then
cuBLAS adds ``grad_z @ weight[chunk]`` into an fp32 ``grad_hidden`` accumulator and writes
``grad_weight[chunk] = grad_z.T @ hidden``. Forward + backward is four matmul-sized passes:
the floor for a method that recomputes the logits instead of storing them.

Statistics are kept in base 2: ``u = z * log2(e) / T - m`` feeds ``exp2`` directly, and ``m`` /
``log2(sum)`` are stored separately so that huge logits (|z| ~ 1e4) never round a large
log-sum-exp before the subtraction.

No kernel uses atomics and every reduction runs in a fixed order, so outputs and gradients are
bit-identical run to run (pruning compares near-equal means). Inputs may have arbitrary
strides: the kernels take the strides of ``hidden`` and ``weight``, which are copied only when a
tile's in-tile offsets would overflow int32 (see ``_addressable``).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from genssd_kernels.triton import INTERPRETED, check_kernel_dtype, device_guard, dot

LOG2E = 1.0 / math.log(2.0)


@dataclass(frozen=True)
class TileConfig:
    """Tile shape and launch parameters of a logit-tile kernel.

    ``group_rows`` row blocks share each vocabulary strip (forward) or column panel (backward)
    among consecutively numbered programs, so the programs resident at one time reuse the same
    ``weight`` and ``hidden`` panels from L2. ``programs_per_sm`` is the expected occupancy, used
    only to size the vocabulary splits. ``tma``: the operand tiles are read through TMA tensor
    descriptors where the inputs allow it (see ``_tma_ready``), else through pointers.
    ``epilogue_parts`` (1, 2, 4 or 8; backward only): the epilogue (gradient and store) runs on
    that many column slices of the tile in turn. ``persistent`` (backward only):
    ``programs_per_sm`` programs per SM loop over the tiles instead of one program per tile.
    ``flatten_tiles`` (forward only, with TMA loads only): a program's loop over its split's
    tiles is fused with the reduction loop.
    """

    block_n: int
    block_v: int
    block_d: int
    num_warps: int
    num_stages: int
    group_rows: int
    programs_per_sm: int = 1
    max_registers: int | None = None
    tma: bool = False
    epilogue_parts: int = 1
    persistent: bool = False
    flatten_tiles: bool = False

    def launch_options(self) -> dict:
        """``num_warps`` / ``num_stages`` / ``maxnreg`` keyword arguments of a kernel launch."""
        options = dict(num_warps=self.num_warps, num_stages=self.num_stages)
        if self.max_registers is not None:
            options["maxnreg"] = self.max_registers
        return options


# A fixed table instead of @triton.autotune: autotuning costs device time per shape and could
# pick different tiles in different processes, which would change the bits of the results
# (the reduction order follows the tiles). See NOTES.md for the reasoning behind each entry.
if INTERPRETED:
    # The interpreter pays per operation: small tiles, and small splits/chunks so that the tests
    # run every multi-split and multi-chunk path on tiny shapes. 16-bit inputs take the GPU's
    # paths (TMA loads where the layout allows, a fused tile loop, a sliced epilogue).
    _SMALL = TileConfig(block_n=32, block_v=64, block_d=32, num_warps=4, num_stages=1, group_rows=2)
    FORWARD_CONFIGS = {"16-bit": replace(_SMALL, tma=True, flatten_tiles=True), "fp32": _SMALL}
    BACKWARD_CONFIGS = {
        "16-bit": replace(_SMALL, tma=True, epilogue_parts=2, persistent=True),
        "fp32": _SMALL,
    }
else:
    FORWARD_CONFIGS = {
        # The H100 sweeps (NOTES.md) put 128x256x64 tiles, 8 warps, 3 stages, one program per SM
        # ahead at every d: 1.12x the matmul at d=896 against 1.35x for two 128x128 programs per
        # SM, and 1.02x at d=4096. The wider tile's lower L2 traffic outweighs hiding the epilogue.
        # TMA loads with the split's tile loop fused into the reduction loop (the next tile's loads
        # overlap a tile's softmax update): 0.99 / 0.99 / 1.00x at d = 896 / 2048 / 4096, against
        # 1.05 / 1.02 / 1.02x unfused and 1.05 / 1.03 / 1.02x with pointer loads. The entropy costs
        # 1.02 / 1.02 / 0.99x of that time: its exp pass runs on the whole MMA accumulator (181
        # registers); an even/odd column split there had made Triton compute the exp twice, in two
        # layouts, with 512 shuffles a tile between them (254 registers, 1.20x at d=896).
        "16-bit": TileConfig(
            128, 256, 64, num_warps=8, num_stages=3, group_rows=16, tma=True, flatten_tiles=True
        ),
        # fp32 runs the exact ("ieee") dot on CUDA cores: smaller tiles keep it in registers.
        "fp32": TileConfig(64, 64, 32, num_warps=4, num_stages=2, group_rows=8, programs_per_sm=2),
    }
    BACKWARD_CONFIGS = {
        # H100 (NOTES.md, the grad-logits study): the grad-logits kernel at d=896
        # spent 1.34x the matmul, 1.14x without its [N, V] store. Its epilogue on four 64-column
        # slices of the tile (184 registers instead of 254), TMA loads and 16 row blocks a panel
        # bring it to 1.20 / 1.08 / 1.06x at d = 896 / 2048 / 4096; a persistent launch with a
        # flattened tile loop (the next tile's loads overlap the epilogue) to 1.11x at d=896.
        "16-bit": TileConfig(
            128,
            256,
            64,
            num_warps=8,
            num_stages=3,
            group_rows=16,
            tma=True,
            epilogue_parts=4,
            persistent=True,
        ),
        "fp32": TileConfig(64, 64, 32, num_warps=4, num_stages=2, group_rows=8),
    }

# Forward: each program owns at most 1/32 of one SM slot's share of the tiles, so the last wave
# leaves at most ~3% of the card idle; the partial records stay under PARTIAL_BYTES.
SPLITS_PER_SLOT = 32
PARTIAL_BYTES = 32 * 2**20
INTERPRETED_TILES_PER_SPLIT = 2
# A persistent launch in the interpreter: few programs, so that each loops over several tiles.
INTERPRETED_PERSISTENT_PROGRAMS = 3
# Combine / segment kernels.
COMBINE_ROWS, COMBINE_SPLITS, COMBINE_D = (16, 4, 32) if INTERPRETED else (32, 32, 128)
BLOCK_SEG = 128
# Backward: the [N, Vc] grad-logits chunk in the input dtype stays under CHUNK_BYTES. With the
# [N, d] fp32 accumulator (512 MiB at N=32768, d=4096) the backward peaks at ~1.25 GiB; a larger
# chunk means fewer read-modify-writes of that accumulator (13 chunks at that shape).
CHUNK_BYTES = 8 * 2**10 if INTERPRETED else 768 * 2**20
CHUNK_ALIGN = 1 if INTERPRETED else 128


def forward_config(dtype: torch.dtype) -> TileConfig:
    """The forward tile configuration for input ``dtype``."""
    return FORWARD_CONFIGS["fp32" if dtype == torch.float32 else "16-bit"]


def backward_config(dtype: torch.dtype) -> TileConfig:
    """The grad-logits tile configuration for input ``dtype``."""
    return BACKWARD_CONFIGS["fp32" if dtype == torch.float32 else "16-bit"]


# INTERP_BF16 (bfloat16 inputs under the interpreter) works around two interpreter gaps so that
# it computes what a GPU computes: it multiplies bf16 tiles as their raw uint16 bits, and it
# truncates fp32 -> bf16 casts instead of rounding to nearest even.


@triton.jit
def _round_bf16(x, INTERP_BF16: tl.constexpr):
    """fp32 ``x``; under the interpreter with bf16 inputs, rounded to the nearest bf16 value
    (ties to even), so that the truncating cast that follows is exact."""
    if INTERP_BF16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
        x = bits.to(tl.float32, bitcast=True)
    return x


@triton.jit
def _logit_tile(h_ptr, w_ptr, h_desc, w_desc, row0, col0, N, V, D, stride_hn, stride_hd, stride_wv, stride_wd,
                BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr,
                TMA: tl.constexpr, INTERP_BF16: tl.constexpr):  # fmt: skip
    """``[BLOCK_N, BLOCK_V]`` fp32 tile of ``hidden[row0:] @ weight[col0:].T`` (no temperature).

    ``row0``/``col0`` are int64. With ``TMA`` the operand tiles come through the tensor
    descriptors ``h_desc`` / ``w_desc``, whose copies fill rows, columns and ``d`` past the
    edges with zeros. Otherwise through pointers: rows past ``N`` and columns past ``V`` repeat
    the last row / column, so every load is in bounds without a mask (the caller masks what it
    writes), and only a ragged ``d`` (``EVEN_D`` false) masks the last slice of the reduction.
    """
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    if TMA:
        for d0 in range(0, D, BLOCK_D):
            h = h_desc.load([row0.to(tl.int32), d0])
            w = w_desc.load([col0.to(tl.int32), d0])
            acc = dot(h, tl.trans(w), acc, INTERP_BF16)
        return acc
    # Scalar int64 bases + int32 in-tile offsets: no 64-bit address math per element.
    r = tl.minimum(tl.arange(0, BLOCK_N), (N - 1 - row0).to(tl.int32))
    c = tl.minimum(tl.arange(0, BLOCK_V), (V - 1 - col0).to(tl.int32))
    k = tl.arange(0, BLOCK_D)
    h_ptrs = h_ptr + row0 * stride_hn + (r[:, None] * stride_hn + k[None, :] * stride_hd)
    w_ptrs = w_ptr + col0 * stride_wv + (c[:, None] * stride_wv + k[None, :] * stride_wd)
    for d0 in range(0, D, BLOCK_D):
        if EVEN_D:
            h = tl.load(h_ptrs)
            w = tl.load(w_ptrs)
        else:
            k_mask = k < D - d0
            h = tl.load(h_ptrs, mask=k_mask[None, :], other=0.0)
            w = tl.load(w_ptrs, mask=k_mask[None, :], other=0.0)
        acc = dot(h, tl.trans(w), acc, INTERP_BF16)
        h_ptrs += BLOCK_D * stride_hd
        w_ptrs += BLOCK_D * stride_wd
    return acc


@triton.jit
def _exp_sums(a, scale, neg_max, valid, RETURN_ENTROPY: tl.constexpr, MASKED: tl.constexpr):
    """Row sums of ``exp2(u)`` and (if asked) ``exp2(u) * u`` for ``u = a * scale + neg_max``."""
    # fma: a * scale is exact inside it, so u is accurate even when a and the max are huge.
    u = tl.fma(a, scale, neg_max)
    e = tl.exp2(u)
    if MASKED:
        # Padded columns repeat the last real one, so u is finite there; drop their terms.
        e = tl.where(valid, e, 0.0)
    total = tl.sum(e, axis=1)
    entropy_sum = total
    if RETURN_ENTROPY:
        entropy_sum = tl.sum(e * u, axis=1)
    return total, entropy_sum


@triton.jit
def _online_update(
    acc,
    run_max,
    run_sum,
    run_ent,
    scale,
    n_valid,
    RETURN_ENTROPY: tl.constexpr,
    MASKED: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """Fold one raw logit tile into the running per-row statistics (base 2).

    ``run_max`` = max of ``z * scale``; ``run_sum`` = sum ``exp2(u)``; ``run_ent`` = sum
    ``exp2(u) * u``, with ``u = z * scale - run_max`` (kept relative to the running max, so huge
    logits leave small terms). ``MASKED`` (the vocabulary's last, partial tile only) drops the
    columns from ``n_valid`` on; every other tile pays no masking.
    """
    valid = (tl.arange(0, BLOCK_V) < n_valid)[None, :]
    if MASKED:
        tile_max = tl.max(tl.where(valid, acc, float("-inf")), axis=1)
    else:
        tile_max = tl.max(acc, axis=1)
    # Every tile has a real column, so new_max is finite. scale > 0 keeps the order of z.
    new_max = tl.maximum(run_max, tile_max * scale)
    tile_sum, tile_ent = _exp_sums(acc, scale, -new_max[:, None], valid, RETURN_ENTROPY, MASKED)
    alpha = tl.exp2(run_max - new_max)  # 0 on the first tile (run_max = -inf)
    if RETURN_ENTROPY:
        # The first tile has run_sum == 0 and a -inf shift: 0 * -inf would be NaN.
        shift = tl.where(run_sum > 0, run_max - new_max, 0.0)
        run_ent = alpha * (run_ent + run_sum * shift) + tile_ent
    run_sum = run_sum * alpha + tile_sum
    return new_max, run_sum, run_ent


@triton.jit
def _stored_logits(acc, z_ptr, row0, col0, N, V, stride_zn, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
                   MASKED: tl.constexpr, INTERP_BF16: tl.constexpr):  # fmt: skip
    """Write the fp32 logit tile ``acc`` into ``z`` (``[N, V]``, rows ``row0:``, columns ``col0:``)
    in ``z``'s dtype and return the written values in fp32, so the statistics are those of the
    logits as stored (the softmax ``F.cross_entropy`` takes of 16-bit logits)."""
    z = _round_bf16(acc, INTERP_BF16).to(z_ptr.dtype.element_ty)
    rows = tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_V)
    mask = (rows < N - row0)[:, None]
    if MASKED:
        mask = mask & (cols < V - col0)[None, :]
    tl.store(z_ptr + row0 * stride_zn + col0 + (rows[:, None] * stride_zn + cols[None, :]), z, mask=mask)
    return z.to(tl.float32)


@triton.jit
def _forward_partials_kernel(
    h_ptr,
    w_ptr,
    h_desc,
    w_desc,
    part_ptr,
    z_ptr,
    N,
    V,
    D,
    n_splits,
    tiles_per_split,
    stride_hn,
    stride_hd,
    stride_wv,
    stride_wd,
    stride_zn,
    scale,
    RETURN_ENTROPY: tl.constexpr,
    STORE_LOGITS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
    GROUP_ROWS: tl.constexpr,
    EVEN_D: tl.constexpr,
    TMA: tl.constexpr,
    FLATTEN_TILES: tl.constexpr,
    INTERP_BF16: tl.constexpr,
):
    """One program per (row block, vocabulary split); writes the split's per-row statistics.

    ``part`` is ``[2 or 3, n_splits, N]`` fp32: max, sum-exp and (with entropy) the entropy sum,
    as defined in ``_online_update``. With ``STORE_LOGITS`` the raw logits are also written to
    ``z [N, V]`` (unit inner stride, the inputs' dtype) and the statistics are taken of them as
    written. Programs are numbered so that ``GROUP_ROWS`` consecutive
    ones take consecutive row blocks of the same split: those resident together walk the same
    weight tiles at about the same time and keep their hidden panels in L2.
    """
    pid = tl.program_id(0)
    n_row_blocks = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_ROWS * n_splits
    first_block = (pid // per_group) * GROUP_ROWS
    blocks_here = tl.minimum(n_row_blocks - first_block, GROUP_ROWS)
    local = pid % per_group
    row0 = (first_block + local % blocks_here).to(tl.int64) * BLOCK_N
    split = local // blocks_here

    tile0 = split * tiles_per_split
    tile_end = tl.minimum(tile0 + tiles_per_split, tl.cdiv(V, BLOCK_V))
    full_end = tl.minimum(tile_end, V // BLOCK_V)
    run_max = tl.full((BLOCK_N,), float("-inf"), dtype=tl.float32)
    run_sum = tl.zeros((BLOCK_N,), dtype=tl.float32)
    run_ent = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for t in tl.range(tile0, full_end, flatten=FLATTEN_TILES):
        col0 = tl.cast(t, tl.int64) * BLOCK_V
        acc = _logit_tile(h_ptr, w_ptr, h_desc, w_desc, row0, col0, N, V, D,
                          stride_hn, stride_hd, stride_wv, stride_wd, BLOCK_N, BLOCK_V, BLOCK_D,
                          EVEN_D, TMA, INTERP_BF16)  # fmt: skip
        if STORE_LOGITS:
            acc = _stored_logits(
                acc, z_ptr, row0, col0, N, V, stride_zn, BLOCK_N, BLOCK_V, False, INTERP_BF16
            )
        run_max, run_sum, run_ent = _online_update(
            acc, run_max, run_sum, run_ent, scale, BLOCK_V, RETURN_ENTROPY, False, BLOCK_V
        )
    if full_end < tile_end:  # this strip holds the vocabulary's last, partial tile
        col0 = full_end.to(tl.int64) * BLOCK_V
        acc = _logit_tile(h_ptr, w_ptr, h_desc, w_desc, row0, col0, N, V, D,
                          stride_hn, stride_hd, stride_wv, stride_wd, BLOCK_N, BLOCK_V, BLOCK_D,
                          EVEN_D, TMA, INTERP_BF16)  # fmt: skip
        if STORE_LOGITS:
            acc = _stored_logits(acc, z_ptr, row0, col0, N, V, stride_zn, BLOCK_N, BLOCK_V, True, INTERP_BF16)
        run_max, run_sum, run_ent = _online_update(
            acc, run_max, run_sum, run_ent, scale, V - col0, RETURN_ENTROPY, True, BLOCK_V
        )

    rows = row0 + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    # int32 offsets suffice: the partial records hold at most PARTIAL_BYTES.
    plane = n_splits * N
    out = part_ptr + split * N + rows
    tl.store(out, run_max, mask=row_mask)
    tl.store(out + plane, run_sum, mask=row_mask)
    if RETURN_ENTROPY:
        tl.store(out + 2 * plane, run_ent, mask=row_mask)


@triton.jit
def _combine_kernel(
    part_ptr,
    h_ptr,
    w_ptr,
    t_ptr,
    logp_ptr,
    max_ptr,
    log2sum_ptr,
    ent_ptr,
    N,
    D,
    n_splits,
    stride_hn,
    stride_hd,
    stride_wv,
    stride_wd,
    scale,
    ignore_index,
    RETURN_ENTROPY: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """One program per ``BLOCK_R`` rows: fold the split records in a fixed order; gather the target logit.

    Writes ``logp [N]``, the base-2 row statistics ``max [N]`` and ``log2(sum) [N]`` (the
    backward's softmax is ``exp2(z * scale - max - log2sum)``) and, if asked, ``entropy [N]``.
    """
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < N
    rows_in = tl.minimum(rows, N - 1)  # padded rows repeat the last row: finite, never stored
    plane = n_splits * N  # int32: the partial records hold at most PARTIAL_BYTES
    lanes = tl.arange(0, BLOCK_S)

    row_max = tl.full((BLOCK_R,), float("-inf"), dtype=tl.float32)
    for s0 in range(0, n_splits, BLOCK_S):
        splits = s0 + lanes
        ptrs = part_ptr + splits[:, None] * N + rows_in[None, :]
        m = tl.load(ptrs, mask=(splits < n_splits)[:, None], other=float("-inf"))
        row_max = tl.maximum(row_max, tl.max(m, axis=0))
    total = tl.zeros((BLOCK_R,), dtype=tl.float32)
    total_ent = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for s0 in range(0, n_splits, BLOCK_S):
        splits = s0 + lanes
        split_mask = (splits < n_splits)[:, None]
        ptrs = part_ptr + splits[:, None] * N + rows_in[None, :]
        m = tl.load(ptrs, mask=split_mask, other=float("-inf"))
        s = tl.load(ptrs + plane, mask=split_mask, other=0.0)
        shift = tl.where(split_mask, m - row_max[None, :], 0.0)  # -inf - max on padded splits
        weight = tl.exp2(shift)
        total += tl.sum(tl.where(split_mask, weight * s, 0.0), axis=0)
        if RETURN_ENTROPY:
            # Re-base each split's sum of exp2(u) * u from its own max to the row max.
            ent = tl.load(ptrs + 2 * plane, mask=split_mask, other=0.0)
            total_ent += tl.sum(tl.where(split_mask, weight * (ent + s * shift), 0.0), axis=0)

    # Target logit: one gathered dot product per row (fp32 products of the input values).
    target = tl.load(t_ptr + rows, mask=row_mask, other=ignore_index)
    valid = row_mask & (target != ignore_index)
    safe_target = tl.where(valid, target, 0)
    z_target = tl.zeros((BLOCK_R,), dtype=tl.float32)
    k = tl.arange(0, BLOCK_D)
    for d0 in range(0, D, BLOCK_D):
        ks = d0 + k
        k_mask = (ks < D)[None, :]
        h = tl.load(h_ptr + rows_in[:, None] * stride_hn + ks[None, :] * stride_hd, mask=k_mask, other=0.0)
        w = tl.load(
            w_ptr + safe_target[:, None] * stride_wv + ks[None, :] * stride_wd, mask=k_mask, other=0.0
        )
        z_target += tl.sum(h.to(tl.float32) * w.to(tl.float32), axis=1)

    log2_sum = tl.log2(total)
    ln2 = 0.6931471805599453
    logp = (tl.fma(z_target, scale, -row_max) - log2_sum) * ln2
    tl.store(logp_ptr + rows, tl.where(valid, logp, 0.0), mask=row_mask)
    tl.store(max_ptr + rows, row_max, mask=row_mask)
    tl.store(log2sum_ptr + rows, log2_sum, mask=row_mask)
    if RETURN_ENTROPY:
        # H = ln 2 * (log2(sum) - sum p u), with u and the sums relative to the row max.
        tl.store(ent_ptr + rows, (log2_sum - total_ent / total) * ln2, mask=row_mask)


@triton.jit
def _segment_mean_kernel(logp_ptr, t_ptr, cu_ptr, out_ptr, ignore_index, BLOCK: tl.constexpr):
    """One program per segment: float64 mean of its valid log-probs, in a fixed order; -inf if none."""
    seg = tl.program_id(0)
    start = tl.load(cu_ptr + seg).to(tl.int64)
    end = tl.load(cu_ptr + seg + 1).to(tl.int64)
    total = tl.zeros((BLOCK,), dtype=tl.float64)
    count = tl.zeros((BLOCK,), dtype=tl.int64)
    for r0 in range(start, end, BLOCK):
        rows = r0 + tl.arange(0, BLOCK)
        in_segment = rows < end
        target = tl.load(t_ptr + rows, mask=in_segment, other=ignore_index)
        valid = in_segment & (target != ignore_index)
        total += tl.load(logp_ptr + rows, mask=valid, other=0.0).to(tl.float64)
        count += valid.to(tl.int64)
    n = tl.sum(count, axis=0)
    mean = tl.sum(total, axis=0) / tl.maximum(n, 1).to(tl.float64)
    mean = tl.where(n > 0, mean, float("-inf"))
    tl.store(out_ptr + seg, mean.to(tl.float32))


@triton.jit
def _column_halves(x, BLOCK_N: tl.constexpr, WIDTH: tl.constexpr):
    """``x [BLOCK_N, WIDTH]`` as its left and right column halves (a free split of the MMA layout)."""
    return tl.split(tl.permute(tl.reshape(x, (BLOCK_N, 2, WIDTH // 2)), (0, 2, 1)))


@triton.jit
def _store_grad_logits(
    z,
    gz_ptr,
    row0,
    col0,
    col_start,
    width,
    stride_gz,
    target,
    coef,
    row_max,
    log2_sum,
    scale,
    row_mask,
    BLOCK_N: tl.constexpr,
    WIDTH: tl.constexpr,
    PARTS: tl.constexpr,
    INTERP_BF16: tl.constexpr,
):
    """Write ``gz`` for the logits ``z [BLOCK_N, WIDTH]`` of chunk columns ``col0:col0+WIDTH``.

    The epilogue runs on ``PARTS`` column slices in turn (splitting itself in halves), so only
    one slice's softmax, gradient and layout conversion for the store are live at a time.
    """
    if PARTS > 1:
        left, right = _column_halves(z, BLOCK_N, WIDTH)
        _store_grad_logits(left, gz_ptr, row0, col0, col_start, width, stride_gz, target, coef,
                           row_max, log2_sum, scale, row_mask, BLOCK_N, WIDTH // 2, PARTS // 2,
                           INTERP_BF16)  # fmt: skip
        _store_grad_logits(right, gz_ptr, row0, col0 + WIDTH // 2, col_start, width, stride_gz, target, coef,
                           row_max, log2_sum, scale, row_mask, BLOCK_N, WIDTH // 2, PARTS // 2,
                           INTERP_BF16)  # fmt: skip
    else:
        p = tl.exp2(tl.fma(z, scale, -row_max[:, None]) - log2_sum[:, None])
        # Column indices relative to the slice (int32 per thread, no 64-bit index math): the
        # target's column in this slice, out of range when it lies elsewhere or is ignored.
        lanes = tl.arange(0, WIDTH)
        target_lane = tl.where(
            (target >= col_start + col0) & (target < col_start + col0 + WIDTH), target - col_start - col0, -1
        ).to(tl.int32)
        onehot = lanes[None, :] == target_lane[:, None]
        grad = coef[:, None] * (tl.where(onehot, 1.0, 0.0) - p)
        out = gz_ptr + row0 * stride_gz + col0 + (tl.arange(0, BLOCK_N)[:, None] * stride_gz + lanes[None, :])
        tl.store(
            out,
            _round_bf16(grad, INTERP_BF16).to(gz_ptr.dtype.element_ty),
            mask=row_mask[:, None] & (lanes < width - col0)[None, :],
        )


@triton.jit
def grad_tile_origin(tile, N, width, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, GROUP_ROWS: tl.constexpr):
    """int64 first row and first chunk column of grad-logits tile number ``tile``: tiles are
    numbered in groups of ``GROUP_ROWS`` row blocks per column panel (the usual L2-friendly
    matmul order)."""
    n_row_blocks = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_ROWS * tl.cdiv(width, BLOCK_V)
    first_block = (tile // per_group) * GROUP_ROWS
    blocks_here = tl.minimum(n_row_blocks - first_block, GROUP_ROWS)
    local = tile % per_group
    return (
        (first_block + local % blocks_here).to(tl.int64) * BLOCK_N,
        (local // blocks_here).to(tl.int64) * BLOCK_V,
    )


@triton.jit
def grad_row_terms(rows, N, t_ptr, g_ptr, max_ptr, log2sum_ptr, stride_g, inv_temperature, ignore_index):
    """Per-row terms of the softmax gradient for ``rows [BLOCK_N]``: the in-range mask, the targets,
    ``coef = g / T`` (0 on ignored and out-of-range rows) and the forward's base-2 statistics."""
    row_mask = rows < N
    target = tl.load(t_ptr + rows, mask=row_mask, other=ignore_index)
    g = tl.load(g_ptr + rows * stride_g, mask=row_mask, other=0.0).to(tl.float32)
    coef = tl.where(row_mask & (target != ignore_index), g * inv_temperature, 0.0)
    row_max = tl.load(max_ptr + rows, mask=row_mask, other=0.0)
    log2_sum = tl.load(log2sum_ptr + rows, mask=row_mask, other=0.0)
    return row_mask, target, coef, row_max, log2_sum


@triton.jit
def _grad_logits_tile(tile, h_ptr, w_ptr, h_desc, w_desc, t_ptr, g_ptr, max_ptr, log2sum_ptr, gz_ptr,
                      N, V, D, col_start, width, stride_hn, stride_hd, stride_wv, stride_wd, stride_g,
                      stride_gz, scale, inv_temperature, ignore_index,
                      BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
                      GROUP_ROWS: tl.constexpr, EVEN_D: tl.constexpr, TMA: tl.constexpr,
                      EPILOGUE_PARTS: tl.constexpr, INTERP_BF16: tl.constexpr):  # fmt: skip
    """Output tile number ``tile`` of ``_grad_logits_kernel``."""
    row0, local_col0 = grad_tile_origin(tile, N, width, BLOCK_N, BLOCK_V, GROUP_ROWS)
    acc = _logit_tile(h_ptr, w_ptr, h_desc, w_desc, row0, col_start + local_col0, N, V, D,
                      stride_hn, stride_hd, stride_wv, stride_wd, BLOCK_N, BLOCK_V, BLOCK_D,
                      EVEN_D, TMA, INTERP_BF16)  # fmt: skip
    rows = row0 + tl.arange(0, BLOCK_N)
    row_mask, target, coef, row_max, log2_sum = grad_row_terms(
        rows, N, t_ptr, g_ptr, max_ptr, log2sum_ptr, stride_g, inv_temperature, ignore_index
    )
    _store_grad_logits(
        acc,
        gz_ptr,
        row0,
        local_col0,
        col_start,
        width,
        stride_gz,
        target,
        coef,
        row_max,
        log2_sum,
        scale,
        row_mask,
        BLOCK_N,
        BLOCK_V,
        EPILOGUE_PARTS,
        INTERP_BF16,
    )


@triton.jit
def _grad_logits_kernel(h_ptr, w_ptr, h_desc, w_desc, t_ptr, g_ptr, max_ptr, log2sum_ptr, gz_ptr,
                        N, V, D, col_start, width, stride_hn, stride_hd, stride_wv, stride_wd, stride_g,
                        stride_gz, scale, inv_temperature, ignore_index,
                        BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
                        GROUP_ROWS: tl.constexpr, EVEN_D: tl.constexpr, TMA: tl.constexpr,
                        EPILOGUE_PARTS: tl.constexpr, PERSISTENT_PROGRAMS: tl.constexpr,
                        INTERP_BF16: tl.constexpr):  # fmt: skip
    """``gz [N, width]`` (input dtype) = d loss / d logits for columns ``col_start:col_start+width``.

    ``gz[n, j] = g[n] / T * (onehot(target[n])[c] - softmax(z[n] / T)[c])`` with ``c = col_start + j``,
    0 on ignored rows. One program per output tile, or (``PERSISTENT_PROGRAMS`` > 0) that many
    programs, each looping over every ``PERSISTENT_PROGRAMS``-th tile in one flattened loop: the
    software pipeline then loads the next tile's operands while a tile's epilogue runs.
    """
    pid = tl.program_id(0)
    # The tile's 32 arguments stay on four lines in both branches.
    # fmt: off
    if PERSISTENT_PROGRAMS > 0:
        n_tiles = tl.cdiv(N, BLOCK_N) * tl.cdiv(width, BLOCK_V)
        for tile in tl.range(pid, n_tiles, PERSISTENT_PROGRAMS, flatten=True):
            _grad_logits_tile(tile, h_ptr, w_ptr, h_desc, w_desc, t_ptr, g_ptr, max_ptr, log2sum_ptr, gz_ptr,
                              N, V, D, col_start, width, stride_hn, stride_hd, stride_wv, stride_wd, stride_g,
                              stride_gz, scale, inv_temperature, ignore_index, BLOCK_N, BLOCK_V, BLOCK_D,
                              GROUP_ROWS, EVEN_D, TMA, EPILOGUE_PARTS, INTERP_BF16)
    else:
        _grad_logits_tile(pid, h_ptr, w_ptr, h_desc, w_desc, t_ptr, g_ptr, max_ptr, log2sum_ptr, gz_ptr,
                          N, V, D, col_start, width, stride_hn, stride_hd, stride_wv, stride_wd, stride_g,
                          stride_gz, scale, inv_temperature, ignore_index, BLOCK_N, BLOCK_V, BLOCK_D,
                          GROUP_ROWS, EVEN_D, TMA, EPILOGUE_PARTS, INTERP_BF16)
    # fmt: on


def _addressable(t: torch.Tensor, rows: int) -> torch.Tensor:
    """``t [R, d]`` as the kernels can address it with int32 offsets within a tile.

    A tile of ``rows`` rows reads up to ``(rows - 1) * stride(0) + d * stride(1)`` elements past
    its int64 base (``_logit_tile``; the combine kernel's column offsets reach ``d * stride(1)``),
    and those offsets are int32 whenever the strides fit int32. A view with huge strides (e.g.
    ``states[:, -1]`` of a long ``[B, T, d]`` batch) would wrap around and read out of bounds, so
    it is copied to a contiguous tensor, whose reach ``rows * d`` is always small.
    """
    reach = (rows - 1) * t.stride(0) + t.shape[1] * t.stride(1)
    return t if reach < 2**31 else t.contiguous()


def _tma_ready(t: torch.Tensor) -> bool:
    """Whether TMA can read ``t [R, d]``: a unit inner stride and a 16-byte aligned base and row
    stride (the copy engine's rules), on a Hopper-or-newer GPU or in the interpreter."""
    if t.stride(1) != 1 or (t.stride(0) * t.element_size()) % 16 or t.data_ptr() % 16:
        return False
    return not t.is_cuda or torch.cuda.get_device_capability(t.device)[0] >= 9


def _operand_descriptors(hidden: torch.Tensor, weight: torch.Tensor, config: TileConfig):
    """TMA descriptors of ``hidden`` / ``weight`` for ``config``'s tiles, or ``(None, None)``
    when the config does not ask for TMA or an input does not allow it (pointer loads then)."""
    if not (config.tma and _tma_ready(hidden) and _tma_ready(weight)):
        return None, None
    return (
        TensorDescriptor.from_tensor(hidden, [config.block_n, config.block_d]),
        TensorDescriptor.from_tensor(weight, [config.block_v, config.block_d]),
    )


def _interp_bf16(hidden: torch.Tensor) -> bool:
    """Whether the interpreter workarounds for bfloat16 apply (see ``dot`` and ``_round_bf16``)."""
    return INTERPRETED and hidden.dtype == torch.bfloat16


@functools.cache
def _sm_count_of(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _sm_count(device: torch.device) -> int:
    """Multiprocessors of CUDA ``device`` (the current device when it has no index)."""
    return _sm_count_of(device.index if device.index is not None else torch.cuda.current_device())


def _persistent_programs(config: TileConfig, device: torch.device) -> int:
    """Programs of a persistent launch for ``config`` (0: one program per tile)."""
    if not config.persistent:
        return 0
    if device.type != "cuda":
        return INTERPRETED_PERSISTENT_PROGRAMS
    return _sm_count(device) * config.programs_per_sm


def _tiles_per_split(n: int, n_tiles: int, planes: int, config: TileConfig, device: torch.device) -> int:
    """Vocabulary tiles per forward program.

    Enough programs that the last wave is short (each program at most 1/SPLITS_PER_SLOT of one
    SM slot's share of the work), few enough that the partial records ``[planes, splits, N]``
    fit in PARTIAL_BYTES.
    """
    if device.type != "cuda":
        tiles = INTERPRETED_TILES_PER_SPLIT
    else:
        slots = _sm_count(device) * config.programs_per_sm
        share = triton.cdiv(n, config.block_n) * n_tiles / slots
        tiles = max(1, int(share // SPLITS_PER_SLOT))
    max_splits = max(1, PARTIAL_BYTES // (planes * 4 * n))
    return min(n_tiles, max(tiles, triton.cdiv(n_tiles, max_splits)))


def forward(
    hidden,
    weight,
    targets,
    cu_seqlens=None,
    *,
    temperature=1.0,
    ignore_index=-100,
    return_entropy=False,
    config: TileConfig | None = None,
    logits_out: torch.Tensor | None = None,
):
    """Launch the forward kernels (no autograd, no validation; ``targets`` contiguous).

    Args:
        hidden: ``[N, d]``, weight: ``[V, d]`` (fp16/bf16/fp32, any strides), targets: ``[N]`` int64,
        cu_seqlens: ``[S+1]`` or None. ``config`` overrides :func:`forward_config` (for tile sweeps).
        logits_out: ``[N, V]`` in the inputs' dtype with a unit inner stride, or None: receives
            the raw logits ``hidden @ weight.T`` (the gradient-in-forward loss's chunk), and the
            statistics are then those of the logits as written.
    Returns:
        ``logp [N]``, ``entropy [N] | None``, ``segment_mean [S] | None`` (fp32) and the base-2 row
        statistics ``row_max [N]``, ``log2_sum [N]`` that the backward needs.
    """
    n, d = hidden.shape
    v = weight.shape[0]
    config = config or forward_config(hidden.dtype)
    hidden = _addressable(hidden, config.block_n)
    weight = _addressable(weight, config.block_v)
    f32 = dict(dtype=torch.float32, device=hidden.device)
    logp, row_max, log2_sum = torch.empty(n, **f32), torch.empty(n, **f32), torch.empty(n, **f32)
    entropy = torch.empty(n, **f32) if return_entropy else None
    scale = LOG2E / temperature
    strides = (hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1))
    if n:
        planes = 3 if return_entropy else 2
        n_tiles = triton.cdiv(v, config.block_v)
        tiles_per_split = _tiles_per_split(n, n_tiles, planes, config, hidden.device)
        n_splits = triton.cdiv(n_tiles, tiles_per_split)
        partials = torch.empty(planes, n_splits, n, **f32)
        grid = (triton.cdiv(n, config.block_n) * n_splits,)
        h_desc, w_desc = _operand_descriptors(hidden, weight, config)
        # The fused tile loop only pays with TMA loads: with pointer loads it ran 1.57x the matmul
        # at d=896 against 1.05x unfused.
        flatten_tiles = config.flatten_tiles and h_desc is not None
        _forward_partials_kernel[grid](
            hidden,
            weight,
            h_desc,
            w_desc,
            partials,
            partials if logits_out is None else logits_out,
            n,
            v,
            d,
            n_splits,
            tiles_per_split,
            *strides,
            0 if logits_out is None else logits_out.stride(0),
            scale,
            RETURN_ENTROPY=return_entropy,
            STORE_LOGITS=logits_out is not None,
            BLOCK_N=config.block_n,
            BLOCK_V=config.block_v,
            BLOCK_D=config.block_d,
            GROUP_ROWS=config.group_rows,
            EVEN_D=d % config.block_d == 0,
            TMA=h_desc is not None,
            FLATTEN_TILES=flatten_tiles,
            INTERP_BF16=_interp_bf16(hidden),
            **config.launch_options(),
        )
        _combine_kernel[(triton.cdiv(n, COMBINE_ROWS),)](
            partials,
            hidden,
            weight,
            targets,
            logp,
            row_max,
            log2_sum,
            entropy if return_entropy else logp,
            n,
            d,
            n_splits,
            *strides,
            scale,
            ignore_index,
            RETURN_ENTROPY=return_entropy,
            BLOCK_R=COMBINE_ROWS,
            BLOCK_S=COMBINE_SPLITS,
            BLOCK_D=COMBINE_D,
            num_warps=4,
        )
    means = None
    if cu_seqlens is not None:
        segments = cu_seqlens.numel() - 1
        means = torch.empty(segments, **f32)
        if segments:
            _segment_mean_kernel[(segments,)](
                logp, targets, cu_seqlens.contiguous(), means, ignore_index, BLOCK=BLOCK_SEG, num_warps=4
            )
    return logp, entropy, means, row_max, log2_sum


def _chunk_columns(n: int, v: int, element_size: int, budget: int | None = None) -> int:
    """Columns per backward chunk: ``[n, Vc]`` grad-logits within ``budget`` bytes (CHUNK_BYTES
    unless given), chunks of equal width."""
    chunks = triton.cdiv(n * v * element_size, budget or CHUNK_BYTES)
    width = triton.cdiv(triton.cdiv(v, chunks), CHUNK_ALIGN) * CHUNK_ALIGN
    return min(v, width)


def _accumulate_product(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``acc += a @ b`` with ``acc`` fp32, in a fixed order (cuBLAS is deterministic per shape)."""
    if a.dtype == acc.dtype:
        acc.addmm_(a, b)
    elif acc.is_cuda:
        # 16-bit operands, fp32 accumulate in cuBLAS's epilogue (torch >= 2.8): no 16-bit rounding
        # of each chunk's partial product and no temporary.
        torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
    else:
        # CPU (the interpreter tests) has no mixed-dtype GEMM.
        acc.add_(torch.mm(a, b))


def launch_grad_logits(
    grad_logits,
    col_start,
    grad_logp,
    hidden,
    weight,
    targets,
    row_max,
    log2_sum,
    descriptors,
    *,
    temperature,
    ignore_index,
    config: TileConfig,
):
    """Fill ``grad_logits [N, width]`` with d loss / d logits of vocabulary columns ``col_start:``.

    ``descriptors``: :func:`_operand_descriptors` of ``hidden`` / ``weight`` for ``config``.
    """
    (n, d), v = hidden.shape, weight.shape[0]
    width = grad_logits.shape[1]
    h_desc, w_desc = descriptors
    n_tiles = triton.cdiv(n, config.block_n) * triton.cdiv(width, config.block_v)
    programs = _persistent_programs(config, hidden.device)
    grid = (min(n_tiles, programs) if programs else n_tiles,)
    _grad_logits_kernel[grid](
        hidden,
        weight,
        h_desc,
        w_desc,
        targets,
        grad_logp,
        row_max,
        log2_sum,
        grad_logits,
        n,
        v,
        d,
        col_start,
        width,
        hidden.stride(0),
        hidden.stride(1),
        weight.stride(0),
        weight.stride(1),
        grad_logp.stride(0),
        grad_logits.stride(0),
        LOG2E / temperature,
        1.0 / temperature,
        ignore_index,
        BLOCK_N=config.block_n,
        BLOCK_V=config.block_v,
        BLOCK_D=config.block_d,
        GROUP_ROWS=config.group_rows,
        EVEN_D=d % config.block_d == 0,
        TMA=h_desc is not None,
        EPILOGUE_PARTS=config.epilogue_parts,
        PERSISTENT_PROGRAMS=programs,
        INTERP_BF16=_interp_bf16(hidden),
        **config.launch_options(),
    )


def backward(
    grad_logp,
    hidden,
    weight,
    targets,
    row_max,
    log2_sum,
    *,
    temperature,
    ignore_index,
    need_hidden=True,
    need_weight=True,
    config: TileConfig | None = None,
):
    """Gradients of ``sum(grad_logp * logp)`` by vocabulary chunks.

    Args:
        grad_logp: ``[N]`` fp32, any stride; hidden ``[N, d]``, weight ``[V, d]``, targets ``[N]``
        (contiguous); row_max, log2_sum: ``[N]`` from :func:`forward`.
    Returns:
        ``grad_hidden [N, d] | None`` and ``grad_weight [V, d] | None`` in the input dtype.

    Peak extra memory: the ``[N, Vc]`` chunk (<= CHUNK_BYTES) plus an ``[N, d]`` fp32 accumulator
    for 16-bit inputs.
    """
    n, d = hidden.shape
    v = weight.shape[0]
    dtype, device = hidden.dtype, hidden.device
    config = config or backward_config(dtype)
    hidden = _addressable(hidden, config.block_n)
    weight = _addressable(weight, config.block_v)
    grad_weight = torch.empty(v, d, dtype=dtype, device=device) if need_weight else None
    acc = None
    if need_hidden:
        acc = torch.zeros(n, d, dtype=torch.float32, device=device)
    if n == 0:
        if grad_weight is not None:
            grad_weight.zero_()
        return (acc.to(dtype) if acc is not None else None), grad_weight

    chunk = _chunk_columns(n, v, hidden.element_size())
    buffer = torch.empty(n, chunk, dtype=dtype, device=device)
    descriptors = _operand_descriptors(hidden, weight, config)
    for c0 in range(0, v, chunk):
        width = min(chunk, v - c0)
        grad_logits = buffer[:, :width]
        launch_grad_logits(
            grad_logits,
            c0,
            grad_logp,
            hidden,
            weight,
            targets,
            row_max,
            log2_sum,
            descriptors,
            temperature=temperature,
            ignore_index=ignore_index,
            config=config,
        )
        if need_hidden:
            _accumulate_product(acc, grad_logits, weight[c0 : c0 + width])
        if need_weight:
            torch.mm(grad_logits.t(), hidden, out=grad_weight[c0 : c0 + width])
    del buffer
    grad_hidden = None
    if need_hidden:
        grad_hidden = acc if dtype == torch.float32 else acc.to(dtype)
    return grad_hidden, grad_weight


class LogprobGatherFunction(torch.autograd.Function):
    """Differentiable in ``hidden`` and ``weight`` through ``token_logprobs`` only; the entropy and
    the segment means are statistics (non-differentiable outputs)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, cu_seqlens, temperature, ignore_index, return_entropy):
        targets = targets.contiguous()
        logp, entropy, means, row_max, log2_sum = forward(
            hidden,
            weight,
            targets,
            cu_seqlens,
            temperature=temperature,
            ignore_index=ignore_index,
            return_entropy=return_entropy,
        )
        ctx.save_for_backward(hidden, weight, targets, row_max, log2_sum)
        ctx.temperature = temperature
        ctx.ignore_index = ignore_index
        ctx.mark_non_differentiable(*[t for t in (entropy, means) if t is not None])
        return logp, entropy, means

    @staticmethod
    def backward(ctx, grad_logp, _grad_entropy, _grad_means):
        hidden, weight, targets, row_max, log2_sum = ctx.saved_tensors
        with device_guard(hidden):
            grad_hidden, grad_weight = backward(
                grad_logp,
                hidden,
                weight,
                targets,
                row_max,
                log2_sum,
                temperature=ctx.temperature,
                ignore_index=ctx.ignore_index,
                need_hidden=ctx.needs_input_grad[0],
                need_weight=ctx.needs_input_grad[1],
            )
        return grad_hidden, grad_weight, None, None, None, None, None


def logprob_gather(hidden, weight, targets, cu_seqlens, temperature, ignore_index, return_entropy):
    """See :func:`genssd_kernels.ops.logprob_gather`; arguments are already validated.

    Args:
        hidden: ``[N, d]`` fp16/bf16/fp32, any strides; weight: ``[V, d]`` same dtype, any strides.
        targets: ``[N]`` int64; cu_seqlens: ``[S+1]`` int32/int64 or None.
    Returns:
        ``token_logprobs [N]`` fp32, ``entropy [N]`` fp32 or None, ``segment_mean [S]`` fp32 or None.
    """
    check_kernel_dtype("hidden", hidden)
    with device_guard(hidden):
        return LogprobGatherFunction.apply(
            hidden, weight, targets, cu_seqlens, temperature, ignore_index, return_entropy
        )
