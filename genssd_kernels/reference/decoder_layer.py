"""Reference for the decoder layer's elementwise fusions: what the Hugging Face modules compute.

The static engine's decode step runs a Llama-shaped layer (RMSNorm, rotary embedding, gated
SiLU MLP) whose elementwise parts the Triton backend fuses. These functions state each fused op
in the modules' own operation order and roundings (transformers' ``LlamaRMSNorm``,
``apply_rotary_pos_emb``, ``LlamaMLP``), so the fused kernels are tested against them.
"""

from __future__ import annotations

import torch


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm of ``x + residual`` (``LlamaRMSNorm`` after the residual add).

    Args:
        x: ``[N, d]``.
        weight: ``[d]``, same dtype as ``x``.
        eps: added to the mean square.
        residual: ``[N, d]`` or None (then the sum is ``x`` itself).
    Returns:
        ``(normed [N, d], summed [N, d])``, both in ``x``'s dtype: ``summed = x + residual``
        rounded to that dtype (the next residual), ``normed`` its RMSNorm.
    """
    summed = x if residual is None else x + residual
    h = summed.to(torch.float32 if summed.dtype != torch.float64 else torch.float64)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(summed.dtype), summed


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` (``LlamaMLP``'s product before the down projection); ``[N, I]`` each."""
    return torch.nn.functional.silu(gate) * up


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotary_to_cache(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    lengths: torch.Tensor,
) -> torch.Tensor:
    """Rotate ``q`` and ``k`` and write ``k``, ``v`` into the cache at each row's length.

    Args:
        q: ``[B, L, Hq, D]`` queries; k, v: ``[B, L, Hkv, D]``.
        cos, sin: ``[B, L, D]`` the rotary embedding of each token's position.
        keys, values: ``[R, Hkv, C, D]`` cache buffers (R >= B), written in place: token ``l`` of
            row ``b`` goes to column ``lengths[b] + l``.
        lengths: ``[>= B]`` int64 cached tokens per row (rows ``0..B-1`` used).
    Returns:
        ``[B, L, Hq, D]`` rotated queries.
    """
    batch, length = q.shape[:2]
    cos, sin = cos[:, :, None], sin[:, :, None]
    q_rot = q * cos + rotate_half(q) * sin
    k_rot = k * cos + rotate_half(k) * sin
    rows = torch.arange(batch, device=q.device)[:, None]
    positions = lengths[:batch, None] + torch.arange(length, device=q.device)
    keys[rows, :, positions] = k_rot
    values[rows, :, positions] = v
    return q_rot
