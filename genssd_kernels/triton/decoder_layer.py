"""Triton fusions of a Llama-shaped decoder layer's elementwise work, for the static engine.

The engine's decode step at 256 rows is launch-bound: in the module-by-module forward an
RMSNorm is 7 kernels, the rotary embedding of q and k plus the cache writes 16, the MLP's
SiLU product 2, each taking a few microseconds on a tensor of 256 x 2048. These three kernels do
each of those in one launch, with the modules' own roundings (``reference.decoder_layer``):

- ``rms_norm``: the residual add and the RMSNorm after it (one program per row);
- ``rotary_to_cache``: rotary embedding of q and k, and the K/V writes into the static cache at
  each row's length (one program per token, all heads at once);
- ``silu_mul``: ``silu(gate) * up``.

Inference only: no autograd (the engine runs under ``torch.no_grad``). Nothing is read back
to the host, so every op can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from genssd_kernels.triton import check_kernel_dtype, device_guard, round_to


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@triton.jit
def _rms_norm_kernel(
    x_ptr,
    residual_ptr,
    weight_ptr,
    out_ptr,
    summed_ptr,
    d,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    inside = cols < d
    dtype = out_ptr.dtype.element_ty
    x = tl.load(x_ptr + row * d + cols, mask=inside, other=0.0)
    if HAS_RESIDUAL:
        residual = tl.load(residual_ptr + row * d + cols, mask=inside, other=0.0)
        x = round_to(x.to(tl.float32) + residual.to(tl.float32), dtype)  # rounded, as ``x + residual``
        tl.store(summed_ptr + row * d + cols, x, mask=inside)
    h = x.to(tl.float32)
    inverse_rms = 1.0 / tl.sqrt(tl.sum(h * h, axis=0) / d + eps)
    normed = round_to(h * inverse_rms, dtype)  # the module casts back before scaling by the weight
    weight = tl.load(weight_ptr + cols, mask=inside, other=0.0)
    tl.store(
        out_ptr + row * d + cols, round_to(normed.to(tl.float32) * weight.to(tl.float32), dtype), mask=inside
    )


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm of ``x + residual`` in one launch (contract: ``reference.decoder_layer.rms_norm``).

    Args:
        x: ``[..., d]`` contiguous, fp16/bf16/fp32.
        weight: ``[d]``, same dtype.
        eps: added to the mean square.
        residual: ``[..., d]`` like ``x``, or None.
    Returns:
        ``(normed, summed)``, both shaped like ``x``; ``summed`` is ``x`` itself without a residual.
    """
    check_kernel_dtype("x", x)
    d = x.shape[-1]
    _check(weight.shape == (d,), f"weight must be [{d}], got {tuple(weight.shape)}")
    _check(weight.dtype == x.dtype, f"weight dtype {weight.dtype} differs from x dtype {x.dtype}")
    _check(x.is_contiguous(), "x must be contiguous")
    if residual is not None:
        _check(residual.shape == x.shape, f"residual {tuple(residual.shape)} differs from x {tuple(x.shape)}")
        _check(
            residual.dtype == x.dtype and residual.is_contiguous(), "residual must be contiguous, x's dtype"
        )
    out = torch.empty_like(x)
    summed = x if residual is None else torch.empty_like(x)
    rows = x.numel() // max(d, 1)
    if rows:
        with device_guard(x):
            _rms_norm_kernel[(rows,)](
                x,
                x if residual is None else residual,
                weight,
                out,
                summed,
                d,
                float(eps),
                HAS_RESIDUAL=residual is not None,
                BLOCK=triton.next_power_of_2(d),
                num_warps=4 if d <= 4096 else 8,
            )
    return out, summed


@triton.jit
def _silu_mul_kernel(gate_ptr, up_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offsets < n
    dtype = out_ptr.dtype.element_ty
    gate = tl.load(gate_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
    up = tl.load(up_ptr + offsets, mask=inside, other=0.0)
    activated = round_to(gate / (1.0 + tl.exp(-gate)), dtype)  # ``silu`` rounds before the product
    tl.store(out_ptr + offsets, round_to(activated.to(tl.float32) * up.to(tl.float32), dtype), mask=inside)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` in one launch; ``gate``, ``up``: same shape, contiguous; result alike."""
    check_kernel_dtype("gate", gate)
    _check(gate.shape == up.shape, f"gate {tuple(gate.shape)} and up {tuple(up.shape)} differ")
    _check(gate.dtype == up.dtype, f"gate dtype {gate.dtype} differs from up dtype {up.dtype}")
    _check(gate.is_contiguous() and up.is_contiguous(), "gate and up must be contiguous")
    out = torch.empty_like(gate)
    n = gate.numel()
    block = 1024
    if n:
        with device_guard(gate):
            _silu_mul_kernel[(triton.cdiv(n, block),)](gate, up, out, n, BLOCK=block)
    return out


@triton.jit
def _rotate_heads(base, d, partner, sign, cos, sin, mask):
    """``x * cos + rotate_half(x) * sin`` of the ``[H, D]`` heads at ``base + d`` (fp32 result),
    each product rounded to the model's dtype first, as the module computes it."""
    dtype = base.dtype.element_ty
    x = tl.load(base + d[None, :], mask=mask, other=0.0).to(tl.float32)
    rotated = tl.load(base + partner[None, :], mask=mask, other=0.0).to(tl.float32) * sign[None, :]
    return round_to(x * cos[None, :], dtype).to(tl.float32) + round_to(rotated * sin[None, :], dtype).to(
        tl.float32
    )


@triton.jit
def _rotary_to_cache_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    cos_ptr,
    sin_ptr,
    keys_ptr,
    values_ptr,
    lengths_ptr,
    q_out_ptr,
    length,
    q_heads,
    kv_heads,
    dim,
    stride_qb,
    stride_ql,
    stride_qh,
    stride_kb,
    stride_kl,
    stride_kh,
    stride_vb,
    stride_vl,
    stride_vh,
    stride_cb,
    stride_cl,
    stride_row,
    stride_head,
    stride_col,
    BLOCK_HQ: tl.constexpr,
    BLOCK_HKV: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    token = tl.program_id(0)
    b = (token // length).to(tl.int64)
    t = token % length
    dtype = q_out_ptr.dtype.element_ty
    half = dim // 2
    d = tl.arange(0, BLOCK_D)
    in_d = d < dim
    # rotate_half(x)[d] = -x[d + D/2] for the first half, x[d - D/2] for the second.
    partner = tl.where(d < half, d + half, d - half)
    sign = tl.where(d < half, -1.0, 1.0)
    cos = tl.load(cos_ptr + b * stride_cb + t * stride_cl + d, mask=in_d, other=0.0).to(tl.float32)
    sin = tl.load(sin_ptr + b * stride_cb + t * stride_cl + d, mask=in_d, other=0.0).to(tl.float32)

    hq = tl.arange(0, BLOCK_HQ)[:, None]
    q_mask = (hq < q_heads) & in_d[None, :]
    q_rot = _rotate_heads(
        q_ptr + b * stride_qb + t * stride_ql + hq * stride_qh, d, partner, sign, cos, sin, q_mask
    )
    q_out = q_out_ptr + ((b * length + t) * q_heads + hq) * dim + d[None, :]
    tl.store(q_out, round_to(q_rot, dtype), mask=q_mask)

    hk = tl.arange(0, BLOCK_HKV)[:, None]
    k_mask = (hk < kv_heads) & in_d[None, :]
    k_rot = _rotate_heads(
        k_ptr + b * stride_kb + t * stride_kl + hk * stride_kh, d, partner, sign, cos, sin, k_mask
    )
    v = tl.load(v_ptr + b * stride_vb + t * stride_vl + hk * stride_vh + d[None, :], mask=k_mask, other=0.0)
    column = tl.load(lengths_ptr + b) + t
    slot = b * stride_row + hk * stride_head + column * stride_col + d[None, :]
    tl.store(keys_ptr + slot, round_to(k_rot, dtype), mask=k_mask)
    tl.store(values_ptr + slot, v, mask=k_mask)


def rotary_to_cache(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                    keys: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor):  # fmt: skip
    """Rotary embedding of q and k, and the K/V cache writes, in one launch.

    Contract and shapes: ``reference.decoder_layer.rotary_to_cache`` (q ``[B, L, Hq, D]``, k/v
    ``[B, L, Hkv, D]``, cos/sin ``[B, L, D]``, keys/values ``[R, Hkv, C, D]``, lengths ``[>= B]``
    int64; callers guarantee ``lengths[b] + L <= C``). q, k, v may be strided views of the
    projections (their last dimension contiguous). Returns ``[B, L, Hq, D]`` contiguous.
    """
    check_kernel_dtype("q", q)
    _check(q.dim() == 4 and k.dim() == 4 and v.dim() == 4, "q, k, v must be 4-D [B, L, heads, D]")
    batch, length, q_heads, dim = q.shape
    kv_heads = k.shape[2]
    _check(
        k.shape == v.shape == (batch, length, kv_heads, dim), f"k/v shapes {tuple(k.shape)}, {tuple(v.shape)}"
    )
    _check(dim % 2 == 0, f"head dim must be even, got {dim}")
    _check(cos.shape == sin.shape == (batch, length, dim), f"cos/sin must be [{batch}, {length}, {dim}]")
    _check(keys.dim() == 4 and keys.shape == values.shape, "keys and values must be [R, Hkv, C, D] alike")
    _check(
        keys.shape[0] >= batch and keys.shape[1] == kv_heads and keys.shape[3] == dim, "cache shape mismatch"
    )
    _check(keys.is_contiguous() and values.is_contiguous(), "the cache buffers must be contiguous")
    for name, t in (("k", k), ("v", v), ("cos", cos), ("sin", sin), ("keys", keys), ("values", values)):
        _check(t.dtype == q.dtype, f"{name} dtype {t.dtype} differs from q dtype {q.dtype}")
    for name, t in (("q", q), ("k", k), ("v", v), ("cos", cos), ("sin", sin)):
        _check(t.stride(-1) == 1, f"{name}'s last dimension must be contiguous")
    _check(cos.stride() == sin.stride(), "cos and sin must have the same strides")
    _check(lengths.dtype == torch.int64 and lengths.shape[0] >= batch, "lengths must be int64 [>= B]")
    q_out = torch.empty(batch, length, q_heads, dim, dtype=q.dtype, device=q.device)
    if batch * length:
        with device_guard(q):
            _rotary_to_cache_kernel[(batch * length,)](
                q,
                k,
                v,
                cos,
                sin,
                keys,
                values,
                lengths,
                q_out,
                length,
                q_heads,
                kv_heads,
                dim,
                *q.stride()[:3],
                *k.stride()[:3],
                *v.stride()[:3],
                *cos.stride()[:2],
                *keys.stride()[:3],
                BLOCK_HQ=triton.next_power_of_2(q_heads),
                BLOCK_HKV=triton.next_power_of_2(kv_heads),
                BLOCK_D=triton.next_power_of_2(dim),
                num_warps=4,
            )
    return q_out
