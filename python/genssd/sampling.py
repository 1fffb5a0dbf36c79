"""Keyed sampling: every random draw is a pure function of a 64-bit key.

Each candidate continuation carries a key derived from (seed, prompt uid, round, beam rank,
candidate index). The noise for step ``t`` and token ``v`` is a hash of (key, t, v), so a
prompt's samples do not depend on which other prompts share its batch, on the batch size, on
sharding or on resuming an interrupted run. The hash is splitmix64's finalizer written with
int64 tensor ops (multiplication wraps modulo 2**64; logical shifts are arithmetic shifts plus a
mask), which gives the same bits on CPU and CUDA.
"""

from __future__ import annotations

import hashlib

import torch

_U64 = (1 << 64) - 1


def _signed(value: int) -> int:
    value &= _U64
    return value - (1 << 64) if value >= 1 << 63 else value


GOLDEN = _signed(0x9E3779B97F4A7C15)
_BELOW_ONE = 1.0 - 2.0**-24  # the largest float32 below 1
_M1 = _signed(0xBF58476D1CE4E5B9)
_M2 = _signed(0x94D049BB133111EB)


def _mix_int(value: int) -> int:
    z = value & _U64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _U64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _U64
    return z ^ (z >> 31)


def combine(*parts: int) -> int:
    """Host-side key derivation: a signed int64 hash of a tuple of integers."""
    state = 0
    for part in parts:
        state = _mix_int(state + GOLDEN + (part & _U64))
    return _signed(state)


def text_key(text: str) -> int:
    """A stable signed int64 of a string (Python's ``hash`` is salted per process)."""
    return _signed(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little"))


def _lsr(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 values."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def mix(x: torch.Tensor) -> torch.Tensor:
    """splitmix64 finalizer on an int64 tensor (elementwise)."""
    x = (x ^ _lsr(x, 30)) * _M1
    x = (x ^ _lsr(x, 27)) * _M2
    return x ^ _lsr(x, 31)


def uniform(keys: torch.Tensor, width: int | None = None) -> torch.Tensor:
    """Uniform floats in (0, 1) from int64 keys.

    Args:
        keys: ``[B]`` int64.
        width: None for one draw per key (``[B]``), or V for V draws per key (``[B, V]``).
    Returns:
        float32, ``[B]`` or ``[B, V]``; 24 random bits each, never exactly 0 or 1.
    """
    if width is None:
        bits = mix(keys + GOLDEN)
    else:
        offsets = torch.arange(1, width + 1, device=keys.device, dtype=torch.int64) * GOLDEN
        bits = mix(keys[:, None] + offsets[None, :])
    # (2**24 - 1) + 0.5 has no float32 representation and rounds up to 2**24, which would make
    # u exactly 1 (Gumbel noise +inf: one draw in 2**24, so about twice per decode step of 256
    # rows x 152k tokens, picking that token whatever its logit, even a banned one at -inf).
    return ((_lsr(bits, 40).to(torch.float32) + 0.5) * (1.0 / (1 << 24))).clamp_(max=_BELOW_ONE)


def step_keys(keys: torch.Tensor, step: int | torch.Tensor) -> torch.Tensor:
    """The keys of sampling step ``step``: ``[B]`` int64 -> ``[B]`` int64.

    ``step`` may be a device scalar (int64), so that a captured decode step can advance it
    without the host; int64 products wrap modulo 2**64 exactly as the host-side value does.
    """
    if isinstance(step, torch.Tensor):
        return mix(keys + (step + 1) * _M2)
    return mix(keys + _signed((step + 1) * _M2))


def top_p_mask(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """``[B, V]`` bool, True for the smallest set of tokens whose probability reaches ``top_p``."""
    probs = torch.softmax(logits, dim=-1)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the strictly better tokens
    keep_sorted = before < top_p
    keep_sorted[:, 0] = True
    return torch.zeros_like(keep_sorted).scatter(1, order, keep_sorted)


def sample(
    logits: torch.Tensor, keys: torch.Tensor, *, temperature: float, top_p: float = 1.0
) -> torch.Tensor:
    """Draw one token per row.

    Args:
        logits: ``[B, V]`` float32 next-token logits.
        keys: ``[B]`` int64, this step's keys (see ``step_keys``).
        temperature: 0 means greedy (argmax, first index on ties, as ``generate`` does).
        top_p: nucleus sampling mass (1 disables it).
    Returns:
        ``[B]`` int64 token ids.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    scaled = logits / temperature
    if top_p < 1.0:
        scaled = scaled.masked_fill(~top_p_mask(scaled, top_p), float("-inf"))
    # Gumbel-max: argmax(logit + Gumbel noise) is a draw from softmax(logit).
    gumbel = -torch.log(-torch.log(uniform(keys, scaled.shape[1])))
    return (scaled + gumbel).argmax(dim=-1)
