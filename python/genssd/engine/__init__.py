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
        engine: ``"auto"`` (static where supported, on CUDA), ``"static"`` (an error where not
            supported) or ``"hf"``.
        role: ``"teacher"`` or ``"student"``, for messages.

    ``auto`` keeps CPU models on the hf engine: with the demo's small models on this project's
    2-core CPU machine a 128-prompt Gen-SSD search took 2.4 s on hf and 3.4 s on static (the
    static step computes every row and a span rounded up to 128 columns; nothing is launch-bound
    on a CPU for graphs to win back).
    """
    if engine not in ENGINES:
        raise UsageError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "hf":
        return "hf", f"{role}: hf engine (asked for)"
    reason = static_support(model)
    if reason is None and engine == "auto" and next(model.parameters()).device.type != "cuda":
        return "hf", f"{role}: hf engine (auto picks static on CUDA; --engine static runs it here)"
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
