"""Decode engines: ``static`` (preallocated per-row KV cache, graph-captured decode step) for the
families in ``compact.FAMILIES``, ``hf`` (the model's own forward over a ``DynamicCache``) for
any other causal LM. ``resolve_engine`` picks one per model and says why."""

from __future__ import annotations

from genssd.engine.compact import FAMILIES, static_support
from genssd.engine.static_cache import StaticKVCache
from genssd.errors import UsageError

ENGINES = ("auto", "static", "hf")


def resolve_engine(model, engine: str, role: str) -> tuple[str, str]:
    """The engine that runs ``model`` and a one-line reason.

    Args:
        engine: ``"auto"`` (static where supported), ``"static"`` (an error where not) or ``"hf"``.
        role: ``"teacher"`` or ``"student"``, for messages.
    """
    if engine not in ENGINES:
        raise UsageError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "hf":
        return "hf", f"{role}: hf engine (asked for)"
    reason = static_support(model)
    if reason is None:
        return "static", f"{role}: static engine ({model.config.model_type})"
    if engine == "static":
        raise UsageError(f"the static engine cannot run the {role}: {reason}")
    return "hf", f"{role}: hf engine ({reason})"


def kv_cache_bytes(model, rows: int, columns: int) -> int:
    """Bytes of K/V for ``rows`` sequences of ``columns`` tokens of ``model`` (0 when its config
    does not say its attention shape)."""
    config = model.config
    layers = getattr(config, "num_hidden_layers", None)
    heads = getattr(config, "num_attention_heads", None)
    if not layers or not heads:
        return 0
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    dtype = next(model.parameters()).dtype
    return StaticKVCache.bytes_for(
        layers=layers, kv_heads=kv_heads, head_dim=head_dim, dtype=dtype, rows=rows, capacity=columns
    )


__all__ = ["ENGINES", "FAMILIES", "kv_cache_bytes", "resolve_engine", "static_support"]
