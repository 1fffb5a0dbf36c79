"""The compact forward's two backends: the fused Triton layer (in the interpreter on CPU) computes
what the module-by-module torch layer computes, for every supported family, on prefill, chunk and
decode shapes, and writes the same K/V into the cache."""

from __future__ import annotations

import pytest
import torch
from genssd.engine.compact import CompactDecoder, fused_support
from genssd.engine.decode import StaticTeacherSampler
from genssd.engine.runners import right_pad
from search_fixtures import bpe_tokenizer
from tiny_models import tiny_lm

pytest.importorskip("triton")
pytestmark = pytest.mark.usefixtures("one_thread")

FAMILY_SETTINGS = {
    "llama": {},
    "qwen2": {},
    "qwen3": {"head_dim": 8},
    # a window shorter than prompt + new tokens, so the windowed mask matters
    "mistral": {"sliding_window": 5},
}
# The triton backend runs on CUDA where there is one, else in the interpreter on CPU (conftest).
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
PROMPTS = [[5, 9, 3, 7, 11, 2, 8], [4, 6], [12, 13, 14, 15]]


def _run(decoder: CompactDecoder, steps: list[torch.Tensor]) -> tuple[list[torch.Tensor], object]:
    """Prefill ``PROMPTS``, then run each ``[B, L]`` of ``steps`` after every row; the hidden
    states of each call and the cache."""
    ids, lengths = right_pad(PROMPTS, 0, decoder.device)
    cache = decoder.new_cache(4, 32)
    outputs = [decoder.forward(ids, cache, span=ids.shape[1])]
    cache.length[: len(PROMPTS)] = lengths
    for chunk in steps:
        outputs.append(decoder.forward(chunk, cache, span=32))
        cache.length[: chunk.shape[0]] += chunk.shape[1]
    return outputs, cache


@pytest.mark.parametrize("fuse_qkv", [False, True])
@pytest.mark.parametrize("family", sorted(FAMILY_SETTINGS))
def test_triton_layer_equals_the_module_layer(family, fuse_qkv):
    model = tiny_lm(family, 40, seed=3, hidden=32, layers=2, **FAMILY_SETTINGS[family]).to(DEVICE)
    assert fused_support(model) is None
    gen = torch.Generator().manual_seed(0)
    steps = [torch.randint(1, 40, (3, 3), generator=gen)] + [torch.randint(1, 40, (3, 1), generator=gen)] * 3
    steps = [chunk.to(DEVICE) for chunk in steps]
    expected, expected_cache = _run(CompactDecoder(model, backend="torch"), steps)
    actual, actual_cache = _run(CompactDecoder(model, backend="triton", fuse_qkv=fuse_qkv), steps)
    for got, want in zip(actual, expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(actual_cache.length, expected_cache.length, rtol=0, atol=0)
    for got, want in zip(
        actual_cache.keys + actual_cache.values, expected_cache.keys + expected_cache.values
    ):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_backend_choice_and_refusal():
    model = tiny_lm("llama", 40, hidden=16, layers=1)
    assert CompactDecoder(model).backend == "torch"  # CPU tensors: no fused kernels by default
    with pytest.raises(ValueError, match="backend must be one of"):
        CompactDecoder(model, backend="cuda")
    gelu = tiny_lm("llama", 40, hidden=16, layers=1, hidden_act="gelu")
    assert "not silu" in fused_support(gelu)
    with pytest.raises(ValueError, match="triton backend cannot run this model: hidden_act 'gelu'"):
        CompactDecoder(gelu, backend="triton")


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_sampler_on_the_triton_backend_draws_the_same_chunks(temperature):
    """The fused draw (one kernel over the raw logits) and the torch draw give the same tokens."""
    tokenizer = bpe_tokenizer(120)
    model = tiny_lm("llama", len(tokenizer), seed=5, hidden=32, layers=2).to(DEVICE)
    prompts = [tokenizer(text)["input_ids"] for text in ("the cat sat", "a b", "one two three four")]
    chunks = []
    for backend in ("torch", "triton"):
        sampler = StaticTeacherSampler(
            model,
            tokenizer,
            graphs=False,
            backend=backend,
            temperature=temperature,
            top_p=1.0,
            step_delimiter=None,
        )
        assert sampler.fused_draw == (backend == "triton")
        sampler.start(prompts, rows=6, columns=40)
        parent = torch.tensor([0, 0, 1, 2, 2, 2], device=DEVICE)
        keys = torch.arange(6, device=DEVICE) * 7919 + 11
        first = sampler.propose(parent, keys, [6] * 6, [False] * 6)
        sampler.select(torch.tensor([1, 3, 5], device=DEVICE))
        second = sampler.propose(torch.tensor([0, 1, 2], device=DEVICE), keys[:3] + 1, [5] * 3, [True] * 3)
        chunks.append([first.ids.cpu(), first.mask.cpu(), second.ids.cpu(), second.ended.cpu()])
    for torch_part, triton_part in zip(*chunks):
        assert torch.equal(torch_part, triton_part)
    assert chunks[0][0].unique().numel() > 3  # the draws vary (no constant chunk)
