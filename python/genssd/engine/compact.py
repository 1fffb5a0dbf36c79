"""A compact forward over a Hugging Face decoder's own modules, against a ``StaticKVCache``.

The families people distill with (Llama 2/3/3.x, Mistral, Qwen2/2.5, Qwen3) share one layer
shape: RMSNorm -> attention with rotary positions (Qwen3: RMSNorm on q and k per head) ->
residual -> RMSNorm -> gated MLP -> residual. This module calls the checkpoint's own embedding,
norms, projections, MLPs and rotary embedding (so every rope scaling the checkpoint's config
names is computed by transformers itself) and replaces only the cache and the attention: K/V
go into preallocated buffers at each row's own length, and attention reads a fixed number of
columns with a per-row mask, so every decode step has the same shapes and can be graph-captured.

Grouped-query attention without copying K/V per query head: the ``G`` query heads of a KV head
are laid out as ``G x L`` query rows of that head, so one SDPA call over ``[B, kv_heads, G*L, D]``
queries attends to the unexpanded ``[B, kv_heads, S, D]`` cache.

Two backends compute the same layer. ``torch`` calls the modules one by one (~45 kernels a
layer). ``triton`` (the default on CUDA) keeps the projections as the modules' own matmuls and
fuses the rest: the residual add with the RMSNorm after it, the rotary embedding with the cache
writes, attention over each row's own length, and the MLP's SiLU product (8 kernels a layer
besides the matmuls). The decode step is launch-bound at the batch sizes a search runs (256
rows): on an H200 the module-by-module step of the 1.1B benchmark model took 7.5 ms against a
1.4 ms matmul floor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from genssd.engine.static_cache import StaticKVCache
from genssd_kernels.dispatch import unavailable_reason

FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
BACKENDS = ("torch", "triton")
# Masked attention without cuDNN: its SDPA plans anew for every new key length (~2.5 ms of CPU a
# call in a profile of the search on an H200), which the chunk scoring's growing span would pay.
_BACKENDS = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
# rope types whose frequencies depend on the running sequence length (state a replayed graph
# cannot follow); everything else transformers computes from the position alone.
_STATEFUL_ROPE = ("dynamic", "longrope")


def static_support(model) -> str | None:
    """None when the static engine can run ``model``, else why it cannot (one line)."""
    config = getattr(model, "config", None)
    family = getattr(config, "model_type", None)
    if family not in FAMILIES:
        return f"model type {family!r} is not one of {', '.join(FAMILIES)}"
    base = getattr(model, "model", None)
    if base is None or not all(
        hasattr(base, name) for name in ("embed_tokens", "layers", "norm", "rotary_emb")
    ):
        return f"{type(model).__name__} does not have the decoder layout of its family"
    rope = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope in _STATEFUL_ROPE:
        return f"rope type {rope!r} depends on the sequence length"
    devices = {p.device for p in model.parameters()}
    if len(devices) > 1:
        return "the model is spread over several devices"
    return None


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float
) -> torch.Tensor:
    """Grouped-query attention over a cache.

    Args:
        q: ``[B, Hq, L, D]`` queries.
        k, v: ``[B, Hkv, S, D]`` cached keys and values (``Hq`` a multiple of ``Hkv``).
        mask: ``[B, L, S]`` bool, True where query ``l`` may attend to column ``s``.
    Returns:
        ``[B, Hq, L, D]``.
    """
    batch, q_heads, length, dim = q.shape
    kv_heads = k.shape[1]
    groups = q_heads // kv_heads
    q = q.reshape(batch, kv_heads, groups * length, dim)
    mask = mask[:, None].repeat(1, 1, groups, 1)
    with sdpa_kernel(_BACKENDS):
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return out.reshape(batch, q_heads, length, dim)


def fused_support(model) -> str | None:
    """None when the ``triton`` backend can run ``model``'s layers, else why it cannot."""
    config = model.config
    if getattr(config, "hidden_act", None) not in ("silu", "swish"):
        return f"hidden_act {getattr(config, 'hidden_act', None)!r} is not silu"
    for layer in model.model.layers:
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            if not hasattr(norm, "variance_epsilon"):
                return f"{type(norm).__name__} is not an RMSNorm of the Llama kind"
        if not all(hasattr(layer.mlp, name) for name in ("gate_proj", "up_proj", "down_proj")):
            return f"{type(layer.mlp).__name__} is not a gated MLP"
    return None


def _default_backend(model, device: torch.device) -> str:
    fused = device.type == "cuda" and fused_support(model) is None
    return "triton" if fused and unavailable_reason("triton", device) is None else "torch"


class CompactDecoder:
    """The forward of a supported causal LM over a ``StaticKVCache`` (module docstring).

    Args:
        model: a ``*ForCausalLM`` of a family in ``FAMILIES`` (``static_support`` is None).
        backend: ``"torch"`` or ``"triton"``; None: triton on CUDA where ``fused_support``
            allows (and triton imports), torch elsewhere.
        fuse_qkv: on the triton backend, run the q, k and v projections as one matmul over a
            copy of their weights concatenated (the teacher's decode step: at 256 rows the k and
            v matmuls of the 1.1B benchmark model took 5.5 us each, 0.24 ms of a 2.1 ms step, for
            ~1% of the FLOPs). The copy costs ``(Hq + 2 Hkv) D d`` weights a layer (6% of a
            Qwen2.5-7B) and is taken once: weights changed later are not seen, so a model that
            is trained (the student) must not use it.
    """

    def __init__(self, model, backend: str | None = None, *, fuse_qkv: bool = False):
        reason = static_support(model)
        if reason is not None:
            raise ValueError(f"the static engine cannot run this model: {reason}")
        if backend not in (None, *BACKENDS):
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)} or None, got {backend!r}")
        if backend == "triton" and fused_support(model) is not None:
            raise ValueError(f"the triton backend cannot run this model: {fused_support(model)}")
        self.model = model
        base = model.model
        self.embed, self.layers, self.norm, self.rotary = (
            base.embed_tokens,
            base.layers,
            base.norm,
            base.rotary_emb,
        )
        self.head = model.get_output_embeddings()
        config = model.config
        attention = self.layers[0].self_attn
        self.head_dim = attention.head_dim
        self.q_heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.scale = attention.scaling
        self.windows = [self._window(layer.self_attn, config) for layer in self.layers]
        self.dtype = self.embed.weight.dtype
        self.device = self.embed.weight.device
        self.backend = backend or _default_backend(model, self.device)
        if self.backend == "triton":
            from genssd_kernels.triton import cache_attention, decoder_layer  # triton: optional

            self._fused = decoder_layer
            self._attention = cache_attention.cache_attention
        fused_qkv = fuse_qkv and self.backend == "triton"
        self._qkv = [self._concatenated_qkv(layer.self_attn) for layer in self.layers] if fused_qkv else None

    @staticmethod
    @torch.no_grad()
    def _concatenated_qkv(attention) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``[(Hq + 2 Hkv) D, d]`` weight and bias (None without biases) of q, k, v as one linear."""
        projections = (attention.q_proj, attention.k_proj, attention.v_proj)
        weight = torch.cat([p.weight for p in projections])
        biases = [p.bias for p in projections]
        bias = None if any(b is None for b in biases) else torch.cat(biases)
        return weight, bias

    @staticmethod
    def _window(attention, config) -> int | None:
        """The layer's sliding window (Qwen2/3 set it per layer; Mistral for every layer)."""
        if hasattr(attention, "sliding_window"):
            return attention.sliding_window
        return getattr(config, "sliding_window", None)

    def new_cache(self, rows: int, capacity: int) -> StaticKVCache:
        return StaticKVCache(
            layers=len(self.layers),
            kv_heads=self.kv_heads,
            head_dim=self.head_dim,
            dtype=self.dtype,
            device=self.device,
            rows=rows,
            capacity=capacity,
        )

    def forward(self, ids: torch.Tensor, cache: StaticKVCache, span: int) -> torch.Tensor:
        """Run ``ids`` after each row's cached tokens; write their K/V (lengths are not advanced).

        Args:
            ids: ``[B, L]`` int64, rows ``0 .. B-1`` of the cache.
            cache: holds at least ``B`` rows and ``length + L <= capacity`` columns.
            span: columns attention reads (a bound on ``length + L``; fixed per captured graph).
        Returns:
            ``[B, L, d]`` final hidden states (after the last norm).
        """
        batch, length = ids.shape
        positions = cache.length[:batch, None] + torch.arange(length, device=ids.device)  # [B, L]
        if self.backend == "triton":
            return self._forward_fused(ids, positions, cache, span)
        columns = torch.arange(span, device=ids.device)
        causal = columns[None, None, :] <= positions[:, :, None]  # [B, L, S]
        rows = torch.arange(batch, device=ids.device)[:, None]
        hidden = self.embed(ids)
        cos, sin = self.rotary(hidden, positions)
        cos, sin = cos[:, None], sin[:, None]  # [B, 1, L, D]
        for layer, window, keys, values in zip(self.layers, self.windows, cache.keys, cache.values):
            mask = (
                causal
                if window is None
                else causal & (columns[None, None, :] > positions[:, :, None] - window)
            )
            attention = layer.self_attn
            x = layer.input_layernorm(hidden)
            q = attention.q_proj(x).view(batch, length, self.q_heads, self.head_dim)
            k = attention.k_proj(x).view(batch, length, self.kv_heads, self.head_dim)
            v = attention.v_proj(x).view(batch, length, self.kv_heads, self.head_dim)
            if hasattr(attention, "q_norm"):  # Qwen3
                q, k = attention.q_norm(q), attention.k_norm(k)
            q, k = q.transpose(1, 2), k.transpose(1, 2)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            keys[rows, :, positions] = k.transpose(1, 2)
            values[rows, :, positions] = v
            out = attend(q, keys[:batch, :, :span], values[:batch, :, :span], mask, self.scale)
            hidden = hidden + attention.o_proj(out.transpose(1, 2).reshape(batch, length, -1))
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return self.norm(hidden)

    def _forward_fused(
        self, ids: torch.Tensor, positions: torch.Tensor, cache: StaticKVCache, span: int
    ) -> torch.Tensor:
        """``forward`` on the triton backend (same arguments and result)."""
        fused, batch, length = self._fused, *ids.shape
        hidden = self.embed(ids)
        cos, sin = self.rotary(hidden, positions)  # [B, L, D]
        residual, update = None, hidden  # the residual stream, and what the next add brings to it
        for index, (layer, window) in enumerate(zip(self.layers, self.windows)):
            keys, values = cache.keys[index], cache.values[index]
            attention, norm = layer.self_attn, layer.input_layernorm
            x, residual = fused.rms_norm(update, norm.weight, norm.variance_epsilon, residual)
            q, k, v = self._project_qkv(attention, x, index)
            if hasattr(attention, "q_norm"):  # Qwen3
                q = fused.rms_norm(
                    q.contiguous(), attention.q_norm.weight, attention.q_norm.variance_epsilon
                )[0]
                k = fused.rms_norm(
                    k.contiguous(), attention.k_norm.weight, attention.k_norm.variance_epsilon
                )[0]
            q = fused.rotary_to_cache(q, k, v, cos, sin, keys, values, cache.length)
            out = self._attention(q, keys, values, cache.length, span=span, scale=self.scale, window=window)
            update = attention.o_proj(out.view(batch, length, -1))
            norm, mlp = layer.post_attention_layernorm, layer.mlp
            x, residual = fused.rms_norm(update, norm.weight, norm.variance_epsilon, residual)
            update = mlp.down_proj(fused.silu_mul(mlp.gate_proj(x), mlp.up_proj(x)))
        return fused.rms_norm(update, self.norm.weight, self.norm.variance_epsilon, residual)[0]

    def _project_qkv(self, attention, x: torch.Tensor, index: int):
        """``[B, L, Hq, D]`` q and ``[B, L, Hkv, D]`` k, v of ``x [B, L, d]`` (views of one matmul's
        output when ``fuse_qkv``)."""
        batch, length = x.shape[:2]
        q_width, kv_width = self.q_heads * self.head_dim, self.kv_heads * self.head_dim
        if self._qkv is None:
            q, k, v = attention.q_proj(x), attention.k_proj(x), attention.v_proj(x)
        else:
            q, k, v = F.linear(x, *self._qkv[index]).split([q_width, kv_width, kv_width], dim=-1)
        return (
            q.view(batch, length, self.q_heads, self.head_dim),
            k.view(batch, length, self.kv_heads, self.head_dim),
            v.view(batch, length, self.kv_heads, self.head_dim),
        )

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[..., V]`` logits of ``[..., d]`` hidden states (in the model's dtype)."""
        return self.head(hidden)
