"""Reference ``cache_attention``: grouped-query attention of new tokens over a static KV cache.

The static engine (``genssd.engine.compact``) keeps K/V in per-layer buffers ``[R, Hkv, C, D]``;
row ``b`` holds ``lengths[b]`` tokens, and the K/V of its ``L`` new tokens are already written at
columns ``lengths[b] .. lengths[b] + L - 1`` when attention runs. This module states what the
fused kernel (``genssd_kernels.triton.cache_attention``) computes, in plain PyTorch: the scores,
softmax and weighted sum run in the input dtype (the "same-dtype reference" of the tolerance
rule, docs/design.md §2.3), and float64 inputs give the truth. It also holds the argument checks
that both implementations run.
"""

from __future__ import annotations

import math

import torch

INDEX_DTYPES = (torch.int32, torch.int64)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def check_cache_attention_args(q, keys, values, lengths, span, scale, window) -> None:
    """Raise ``ValueError`` naming the argument unless the arguments meet ``cache_attention``'s contract.

    Only shapes, dtypes, devices and Python scalars are checked; no tensor value is read, so the
    check costs no host synchronization (the caller guarantees ``0 <= lengths[b]`` and
    ``lengths[b] + L <= span``).
    """
    for name, t in (("q", q), ("keys", keys), ("values", values), ("lengths", lengths)):
        _check(isinstance(t, torch.Tensor), f"{name} must be a tensor, got {type(t).__name__}")
    _check(q.dim() == 4, f"q must be 4-D [B, L, Hq, D], got shape {tuple(q.shape)}")
    _check(keys.dim() == 4, f"keys must be 4-D [R, Hkv, C, D], got shape {tuple(keys.shape)}")
    _check(
        values.shape == keys.shape,
        f"values must have the shape of keys {tuple(keys.shape)}, got {tuple(values.shape)}",
    )
    batch, length, q_heads, dim = q.shape
    rows, kv_heads, capacity, key_dim = keys.shape
    _check(dim >= 1, f"q must have D >= 1, got shape {tuple(q.shape)}")
    _check(key_dim == dim, f"keys have D={key_dim} but q has D={dim}")
    _check(kv_heads >= 1, f"keys must have at least one head, got shape {tuple(keys.shape)}")
    _check(
        q_heads % kv_heads == 0,
        f"q's {q_heads} heads must be a multiple of the {kv_heads} heads of keys (Hq % Hkv == 0)",
    )
    _check(batch <= rows, f"q has B={batch} rows but keys hold only R={rows}")
    _check(keys.dtype == q.dtype, f"keys dtype {keys.dtype} differs from q dtype {q.dtype}")
    _check(values.dtype == q.dtype, f"values dtype {values.dtype} differs from q dtype {q.dtype}")
    _check(lengths.dim() == 1, f"lengths must be 1-D [>= B], got shape {tuple(lengths.shape)}")
    _check(lengths.numel() >= batch, f"lengths has {lengths.numel()} entries but q has B={batch} rows")
    _check(lengths.dtype in INDEX_DTYPES, f"lengths must be int64 or int32, got {lengths.dtype}")
    for name, t in (("keys", keys), ("values", values), ("lengths", lengths)):
        _check(t.device == q.device, f"{name} is on {t.device} but q is on {q.device}")
    _check(
        isinstance(span, int) and not isinstance(span, bool),
        f"span must be an int, got {type(span).__name__}",
    )
    _check(
        length <= span <= capacity,
        f"span must satisfy L={length} <= span <= C={capacity}, got {span}",
    )
    _check(
        isinstance(scale, (int, float)) and not isinstance(scale, bool) and math.isfinite(scale),
        f"scale must be a finite float, got {scale!r}",
    )
    _check(
        window is None or (isinstance(window, int) and not isinstance(window, bool) and window >= 1),
        f"window must be None or an int >= 1, got {window!r}",
    )


def visible_columns(lengths: torch.Tensor, length: int, span: int, window: int | None) -> torch.Tensor:
    """``[B, L, span]`` bool: True where query ``l`` of row ``b`` may attend to column ``s``.

    ``lengths``: ``[B]``. Query ``l`` sits at position ``p = lengths[b] + l`` and sees ``s <= p``,
    and with a window also ``s > p - window`` (the mask ``CompactDecoder.forward`` builds).
    """
    positions = lengths.long()[:, None] + torch.arange(length, device=lengths.device)  # [B, L]
    columns = torch.arange(span, device=lengths.device)
    visible = columns[None, None, :] <= positions[:, :, None]
    if window is not None:
        visible = visible & (columns[None, None, :] > positions[:, :, None] - window)
    return visible


def cache_attention(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    lengths: torch.Tensor,
    *,
    span: int,
    scale: float,
    window: int | None = None,
) -> torch.Tensor:
    """Attention of ``L`` new tokens per row over a static KV cache, grouped-query.

    Args:
        q: ``[B, L, Hq, D]`` queries (rotary embedding applied), any strides; fp16/bf16/fp32/fp64.
        keys, values: ``[R, Hkv, C, D]``, ``R >= B``, q's dtype; only rows ``0 .. B-1`` and columns
            ``0 .. span-1`` are read. Query head ``h`` reads KV head ``h // (Hq // Hkv)``.
        lengths: ``[>= B]`` int64 (or int32); entry ``b`` is the number of tokens row ``b`` held
            before these ``L``, whose K/V are already at columns ``lengths[b] .. lengths[b]+L-1``.
        span: columns ``0 .. span-1`` are the most any row reads (``L <= span <= C``); the caller
            guarantees ``lengths[b] + L <= span``.
        scale: softmax scale (e.g. ``D ** -0.5``).
        window: None, or an int >= 1: query at position ``p`` then sees only ``s > p - window``.
    Returns:
        ``[B, L, Hq, D]`` contiguous, q's dtype: for query ``l`` of row ``b`` at position
        ``p = lengths[b] + l``, ``softmax(scale * q k^T)`` over the columns ``s <= p``, ``s < span``
        (and ``s > p - window``) of that row's KV head, times their values.
    """
    check_cache_attention_args(q, keys, values, lengths, span, scale, window)
    batch, length, q_heads, dim = q.shape
    kv_heads = keys.shape[1]
    groups = q_heads // kv_heads
    visible = visible_columns(lengths[:batch], length, span, window)  # [B, L, S]
    # Columns no query of a row sees may hold anything (stale or unwritten cache), even NaN: a
    # zero probability times NaN would still be NaN, so they are zeroed rather than relied on.
    seen = visible.any(dim=1)[:, None, :, None]  # [B, 1, S, 1]
    k = keys[:batch, :, :span].masked_fill(~seen, 0)  # [B, Hkv, S, D]
    v = values[:batch, :, :span].masked_fill(~seen, 0)
    # Query rows (g, l) of each KV head: the G heads that share it attend to it without copying it.
    qg = q.reshape(batch, length, kv_heads, groups, dim).permute(0, 2, 3, 1, 4)  # [B, Hkv, G, L, D]
    qg = qg.reshape(batch, kv_heads, groups * length, dim)
    scores = (qg @ k.transpose(-1, -2)) * scale  # [B, Hkv, G*L, S]
    mask = visible[:, None].repeat(1, 1, groups, 1)  # [B, 1, G*L, S], rows (g, l)
    probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    out = probs @ v  # [B, Hkv, G*L, D]
    out = out.reshape(batch, kv_heads, groups, length, dim).permute(0, 3, 1, 2, 4)  # [B, L, Hkv, G, D]
    return out.reshape(batch, length, q_heads, dim).contiguous()
