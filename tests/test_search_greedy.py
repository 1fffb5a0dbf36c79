"""``standard`` at temperature 0 is plain greedy decoding: it reproduces HF ``generate`` token for
token, on both engines and every family the static engine supports."""

from __future__ import annotations

import pytest
import torch
from genssd.config import search_config_for
from genssd.search import Searcher
from search_fixtures import BOS, EOS, PAD, PROMPTS, bpe_tokenizer, tiny_lm  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

MAX_NEW = 20


def _generate(model, tokenizer, prompt: str) -> list[int]:
    """HF greedy decoding with the search's default: special tokens other than EOS never drawn."""
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=MAX_NEW,
        suppress_tokens=[PAD, BOS],
    )
    return out[0, ids.shape[1] :].tolist()


# Mistral with a sliding window shorter than prompt + answer, so the window mask is exercised.
FAMILY_OVERRIDES = {"llama": {}, "qwen2": {}, "qwen3": {}, "mistral": {"sliding_window": 7}}


@pytest.mark.parametrize("engine", ["static", "hf"])
@pytest.mark.parametrize("kind", sorted(FAMILY_OVERRIDES))
@pytest.mark.parametrize("chunk_tokens", [32, 3])
def test_standard_greedy_equals_generate(kind, chunk_tokens, engine):
    tokenizer = bpe_tokenizer(300)
    teacher = tiny_lm(kind, len(tokenizer), seed=41, hidden=64, **FAMILY_OVERRIDES[kind])
    # Make the greedy continuation of the first prompt end early: its 6th token becomes an EOS.
    teacher.generation_config.eos_token_id = None
    stop = _generate(teacher, tokenizer, PROMPTS[0])[5]
    teacher.generation_config.eos_token_id = [EOS, stop]
    student = tiny_lm("llama", len(tokenizer), seed=42)

    config = search_config_for(
        "standard",
        temperature=0.0,
        max_new_tokens=MAX_NEW,
        chunk_tokens=chunk_tokens,
        batch_size=4,
        engine=engine,
    )
    searcher = Searcher(teacher, student, tokenizer, config=config)
    assert searcher.engine_lines[0].startswith(f"teacher: {engine} engine")
    results = searcher.run(PROMPTS)

    lengths = set()
    for prompt, result in zip(PROMPTS, results):
        expected = _generate(teacher, tokenizer, prompt)
        (trajectory,) = result.trajectories
        assert trajectory.token_ids == expected
        assert [c.num_candidates for c in trajectory.chunks] == [1] * len(trajectory.chunks)
        assert not result.pruned_early and result.teacher_tokens == len(expected)
        lengths.add(len(expected))
    assert min(lengths) <= 6 and MAX_NEW in lengths  # one stopped at its EOS, others ran to the budget
