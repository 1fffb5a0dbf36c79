"""Triton ``cache_attention``: grouped-query attention of new tokens over a static KV cache, one launch.

The static engine's decode step (``genssd.engine.compact``) is launch-bound on an H200: its
attention was a boolean ``[B, L, S]`` mask expanded per layer and an SDPA call, dozens of small
kernels a layer. This op is one kernel and builds no mask: each program derives its rows'
positions from ``lengths`` and masks its score tiles itself.

``_cache_attention_kernel``, grid = ``(B, Hkv, cdiv(L * G, BLOCK_M))`` with ``G = Hq // Hkv``.
The ``G`` query heads that share a KV head and the ``L`` new tokens are packed into the M
dimension of one tile (row ``m = l * G + g``), so a program reads its KV head's columns once for
all of its query heads: GQA without repeating K/V, and at decode (``L = 1``, ``G = 7 or 8``) one
16-row tile per (row, KV head). Each program loops over ``BLOCK_N`` columns at a time, only over
the columns its rows can see: from the window's first column of its first position (0 without a
window) to its last position (never past ``span``), so a row of 80 tokens in a 512-column span
reads 80 columns. Scores ``q k^T`` and the update ``p v`` are ``tl.dot`` tiles (``M, N, D`` padded
up to 16 and masked), fp32 accumulation, online softmax in base 2.

Inference only: no autograd (the engine runs under ``torch.no_grad``). No tensor value is read on
the host, so a call can be captured in a CUDA graph.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from genssd_kernels.reference.cache_attention import check_cache_attention_args
from genssd_kernels.triton import INTERPRETED, check_kernel_dtype, device_guard, dot, round_to

LOG2E = 1.0 / math.log(2.0)

# Tile sizes (no autotuning: a fixed choice per shape, so every process computes the same bits).
# tl.dot needs M, N and K >= 16, so every block is at least 16. On a GPU a decode tile is 16 rows
# (G <= 16 query heads of one token) and a prefill tile up to 64 rows (8 warps: two warpgroups'
# wgmma, ~130-140 registers at D = 128 in the sm_90a compile); 64 columns a step keep a 64 x 128
# tile of 16-bit K and of V (16 KiB each) per pipeline stage. fp32 runs the exact ("ieee") dot on
# CUDA cores, whose 64 x 64 tiles spill: 32 x 32 there. The interpreter pays per operation: small
# column steps, so that the tests' short spans still take several steps and several row tiles.
if INTERPRETED:
    TILES = {"16-bit": (32, 16), "fp32": (32, 16)}
    NUM_STAGES = 1
else:
    TILES = {"16-bit": (64, 64), "fp32": (32, 32)}
    NUM_STAGES = 2
MIN_BLOCK = 16


@triton.jit
def _cache_attention_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    len_ptr,
    out_ptr,
    L,
    G,
    D,
    span,
    qk_scale,
    window,
    stride_qb,
    stride_ql,
    stride_qh,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kc,
    stride_kd,
    stride_vb,
    stride_vh,
    stride_vc,
    stride_vd,
    WINDOWED: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    INTERP_BF16: tl.constexpr,
):
    """Program ``(b, kv_head, tile)``: rows ``m = tile * BLOCK_M + i`` (query ``l = m // G`` of
    head ``kv_head * G + m % G``) of cache row ``b``; writes ``out [B, L, Hq, D]`` for them.

    ``qk_scale`` is the softmax scale times log2(e) (scores in base 2 feed ``exp2``); ``window``
    is read only when ``WINDOWED``.
    """
    b = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1)
    m0 = tl.program_id(2) * BLOCK_M
    m = m0 + tl.arange(0, BLOCK_M)
    m_in = m < L * G
    # Rows past the last query repeat it (same position, in-bounds loads, finite softmax) and are
    # not stored, so no row of a tile is ever without a visible column.
    query = tl.minimum(m // G, L - 1)
    head = kv_head * G + m % G
    length = tl.load(len_ptr + b).to(tl.int32)
    position = length + query  # [BLOCK_M]
    # The columns the tile's rows see lie in [lo, hi): every query sees its own column, which the
    # caller wrote before this call, so the columns in between are written cache entries too.
    hi = tl.minimum(length + tl.minimum((m0 + BLOCK_M - 1) // G, L - 1) + 1, span)
    lo = 0
    if WINDOWED:
        lo = tl.maximum(length + m0 // G - window + 1, 0)

    d = tl.arange(0, BLOCK_D)
    d_in = d < D
    # int64 bases per program, int32 offsets within it (a row's slice of the cache is small).
    q_rows = q_ptr + b * stride_qb + query[:, None] * stride_ql + head[:, None] * stride_qh
    q = tl.load(q_rows + d[None, :] * stride_qd, mask=d_in[None, :], other=0.0)  # [BLOCK_M, BLOCK_D]
    k_base = k_ptr + b * stride_kb + kv_head.to(tl.int64) * stride_kh
    v_base = v_ptr + b * stride_vb + kv_head.to(tl.int64) * stride_vh

    run_max = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    run_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    n = tl.arange(0, BLOCK_N)
    for n0 in range(lo, hi, BLOCK_N):
        columns = n0 + n
        c_in = columns < hi
        # Masked loads: columns outside [lo, hi) may be unwritten (NaN, stale), and a NaN value
        # times a zero probability would still poison the row.
        load_mask = c_in[:, None] & d_in[None, :]
        k = tl.load(k_base + columns[:, None] * stride_kc + d[None, :] * stride_kd, mask=load_mask, other=0.0)
        scores = dot(q, tl.trans(k), tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), INTERP_BF16)
        visible = (columns[None, :] <= position[:, None]) & c_in[None, :]
        if WINDOWED:
            visible = visible & (columns[None, :] > position[:, None] - window)
        scores = tl.where(visible, scores * qk_scale, float("-inf"))
        new_max = tl.maximum(run_max, tl.max(scores, axis=1))
        # A windowed row may see nothing in the tile's first steps (its window starts later than
        # the tile's first row's): its max stays -inf, and -inf - -inf would be NaN.
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        p = tl.exp2(scores - shift[:, None])
        alpha = tl.exp2(run_max - shift)  # 0 on a row's first visible step
        run_sum = run_sum * alpha + tl.sum(p, axis=1)
        v = tl.load(v_base + columns[:, None] * stride_vc + d[None, :] * stride_vd, mask=load_mask, other=0.0)
        if not INTERP_BF16:
            # The 16-bit tensor-core dot, as flash attention does it; fp32 stays fp32.
            p = p.to(v.dtype)
        acc = dot(p, v, acc * alpha[:, None], INTERP_BF16)
        run_max = new_max

    out = acc / run_sum[:, None]
    # out is [B, L, Hq, D] contiguous: the rows of one query are consecutive heads.
    Hq = tl.num_programs(1) * G
    out_rows = out_ptr + (b * L + query[:, None]) * Hq * D + head[:, None] * D
    tl.store(
        out_rows + d[None, :], round_to(out, out_ptr.dtype.element_ty), mask=m_in[:, None] & d_in[None, :]
    )


def launch_config(rows: int, dim: int, dtype: torch.dtype) -> dict:
    """Block sizes and launch options for ``rows = L * G`` query rows per KV head of head size ``dim``."""
    max_block_m, block_n = TILES["fp32" if dtype == torch.float32 else "16-bit"]
    block_m = min(max_block_m, max(MIN_BLOCK, triton.next_power_of_2(rows)))
    return dict(
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_D=max(MIN_BLOCK, triton.next_power_of_2(dim)),
        num_warps=8 if block_m >= 64 else 4,
        num_stages=NUM_STAGES,
    )


def cache_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor, *,
                    span: int, scale: float, window: int | None = None) -> torch.Tensor:  # fmt: skip
    """Attention of ``L`` new tokens per row over a static KV cache, grouped-query, in one launch.

    The contract, every tensor's shape and the errors: ``reference.cache_attention`` (q
    ``[B, L, Hq, D]`` fp16/bf16/fp32 with any strides, keys/values ``[R, Hkv, C, D]``, lengths
    ``[>= B]`` never read on the host; returns ``[B, L, Hq, D]`` contiguous in q's dtype).
    """
    check_cache_attention_args(q, keys, values, lengths, span, scale, window)
    check_kernel_dtype("q", q)
    batch, length, q_heads, dim = q.shape
    kv_heads = keys.shape[1]
    groups = q_heads // kv_heads
    out = torch.empty(batch, length, q_heads, dim, dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    # A window as wide as the span hides nothing: the query at p < span sees every s >= 0 > p - window.
    windowed = window is not None and window < span
    config = launch_config(length * groups, dim, q.dtype)
    grid = (batch, kv_heads, triton.cdiv(length * groups, config["BLOCK_M"]))
    with device_guard(q):
        _cache_attention_kernel[grid](
            q,
            keys,
            values,
            lengths,
            out,
            length,
            groups,
            dim,
            span,
            scale * LOG2E,
            window if windowed else 0,
            *q.stride(),
            *keys.stride(),
            *values.stride(),
            WINDOWED=windowed,
            INTERP_BF16=INTERPRETED and q.dtype == torch.bfloat16,
            **config,
        )
    return out
