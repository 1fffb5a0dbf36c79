"""Keyed sampling draws from the right distribution and depends only on its keys."""

from __future__ import annotations

import torch
from genssd.sampling import GOLDEN, combine, mix, sample, step_keys, text_key, top_p_mask, uniform


def _keys(n: int, salt: int = 0) -> torch.Tensor:
    return torch.tensor([combine(salt, i) for i in range(n)], dtype=torch.long)


def test_uniform_is_in_the_open_interval_and_flat():
    u = uniform(_keys(4000), 50)
    assert u.min() > 0 and u.max() < 1
    counts = torch.histc(u.flatten(), bins=10, min=0, max=1)
    assert (counts / u.numel() - 0.1).abs().max() < 0.01
    # Neighbouring keys and neighbouring columns are not correlated.
    flat = u.flatten()
    assert abs(torch.corrcoef(torch.stack([flat[:-1], flat[1:]]))[0, 1]) < 0.02


def test_samples_follow_softmax_at_temperature():
    torch.manual_seed(0)
    logits = torch.randn(7) * 2
    n = 20000
    keys = _keys(n, salt=1)
    for temperature in (0.5, 1.0, 2.0):
        tokens = sample(logits.expand(n, -1), keys, temperature=temperature)
        freq = torch.bincount(tokens, minlength=7).double() / n
        expected = torch.softmax(logits.double() / temperature, -1)
        assert (freq - expected).abs().max() < 0.015


def test_top_p_keeps_the_smallest_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.05, 0.3, 0.15]]))
    assert top_p_mask(logits, 0.7).tolist() == [[True, False, True, False]]
    assert top_p_mask(logits, 0.81).tolist() == [[True, False, True, True]]
    assert top_p_mask(logits, 0.1).tolist() == [[True, False, False, False]]  # at least the best token
    n = 4000
    tokens = sample(logits.expand(n, -1), _keys(n, salt=2), temperature=1.0, top_p=0.7)
    assert set(tokens.tolist()) == {0, 2}
    share = (tokens == 0).double().mean().item()
    assert abs(share - 0.5 / 0.8) < 0.03


def test_greedy_is_argmax_with_first_index_on_ties():
    logits = torch.tensor([[0.1, 0.9, 0.9], [2.0, -1.0, 0.0]])
    assert sample(logits, _keys(2), temperature=0.0).tolist() == [1, 0]


def test_draws_depend_only_on_keys_and_step():
    torch.manual_seed(1)
    logits = torch.randn(6, 40)
    keys = _keys(6, salt=3)
    a = sample(logits, step_keys(keys, 0), temperature=1.0)
    rows = torch.cat(
        [sample(logits[i : i + 1], step_keys(keys[i : i + 1], 0), temperature=1.0) for i in range(6)]
    )
    assert torch.equal(a, rows)  # a row's draw does not depend on its batch
    later = torch.stack([sample(logits, step_keys(keys, t), temperature=1.0) for t in range(1, 9)])
    assert (later != a).any()  # and steps differ
    assert text_key("uid-1") == text_key("uid-1") != text_key("uid-2")


def test_uniform_is_never_one():
    """Key 68's 517,260th draw has all 24 bits set: (2**24 - 1 + 0.5) / 2**24 rounds to 1.0 in
    float32, and Gumbel noise of u = 1 is +inf (the token would win whatever its logit)."""
    from genssd.sampling import _lsr

    keys = torch.tensor([68])
    u = uniform(keys, 517_260)
    offsets = torch.arange(1, 517_261, dtype=torch.int64) * GOLDEN
    assert _lsr(mix(keys[:, None] + offsets[None, :]), 40)[0, 517_259] == (1 << 24) - 1
    assert u.max() < 1 and u.min() > 0
    assert torch.isfinite(-torch.log(-torch.log(u))).all()
