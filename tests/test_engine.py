"""The static decode engine: its cache's row operations, the engine choice, identical search rows
on both engines, stop strings, banned special tokens and the up-front checks (CPU)."""

from __future__ import annotations

import json

import pytest
import torch
from genssd.config import SearchConfig
from genssd.engine import kv_cache_bytes, resolve_engine
from genssd.engine.static_cache import StaticKVCache
from genssd.errors import UsageError
from genssd.search import Searcher, _stop_prefix
from genssd.teacher import TokenRules
from search_fixtures import (  # noqa: F401
    BOS,
    EOS,
    PAD,
    PROMPTS,
    bpe_tokenizer,
    letters_tokenizer,
    tiny_lm,
    token_logprobs,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _filled_cache(rows=3, capacity=5, seed=0) -> StaticKVCache:
    cache = StaticKVCache(
        layers=2, kv_heads=2, head_dim=4, dtype=torch.float64, device="cpu", rows=rows, capacity=capacity
    )
    gen = torch.Generator().manual_seed(seed)
    for buffer in cache.keys + cache.values:
        buffer.copy_(torch.randn(buffer.shape, generator=gen, dtype=torch.float64))
    cache.length[:] = torch.tensor([5, 2, 4])[:rows]
    cache.columns_bound = 5
    return cache


def test_reindex_forks_and_selects_rows_with_their_lengths():
    cache = _filled_cache()
    before = [b.clone() for b in cache.keys + cache.values]
    index = torch.tensor([2, 0, 2, 1, 0])  # five rows from three: the buffers double
    cache.reindex(index)
    assert cache.rows == 6 and cache.length.tolist() == [4, 5, 4, 2, 5, 0]
    for old, new in zip(before, cache.keys + cache.values):
        torch.testing.assert_close(new[:5], old[index], rtol=0, atol=0)


def test_reserve_doubles_and_keeps_contents_truncate_shortens_rows():
    cache = _filled_cache()
    before = [b.clone() for b in cache.keys + cache.values]
    cache.reserve(3, 11)
    assert cache.capacity == 20 and cache.rows == 3  # 5 -> 10 -> 20 columns, rows untouched
    for old, new in zip(before, cache.keys + cache.values):
        torch.testing.assert_close(new[:, :, :5], old, rtol=0, atol=0)
    cache.truncate(3, torch.tensor([2, 0, 1]))
    assert cache.length.tolist() == [3, 2, 3]
    assert (
        cache.nbytes
        == 2 * 2 * 3 * 2 * 20 * 4 * 8
        == StaticKVCache.bytes_for(layers=2, kv_heads=2, head_dim=4, dtype=torch.float64, rows=3, capacity=20)
    )


def test_engine_choice_falls_back_to_hf_and_static_refuses_unsupported_models():
    tokenizer = bpe_tokenizer(300)
    qwen3 = tiny_lm("qwen3", 300, seed=1)
    assert resolve_engine(qwen3, "static", "teacher") == ("static", "teacher: static engine (qwen3)")
    assert resolve_engine(qwen3, "auto", "teacher") == (  # on CPU
        "hf",
        "teacher: hf engine (auto picks static on CUDA; --engine static runs it here)",
    )
    gpt2 = tiny_lm("gpt2", len(tokenizer), seed=3, tie=True, max_position_embeddings=256)
    engine, line = resolve_engine(gpt2, "auto", "teacher")
    assert (
        engine == "hf"
        and line == "teacher: hf engine (model type 'gpt2' is not one of llama, mistral, qwen2, qwen3)"
    )
    with pytest.raises(UsageError, match="the static engine cannot run the teacher: model type 'gpt2'"):
        resolve_engine(gpt2, "static", "teacher")
    # Any other causal LM still searches, through the hf engine.
    student = tiny_lm("llama", len(tokenizer), seed=2)
    config = SearchConfig(num_candidates=2, chunk_tokens=3, max_new_tokens=6, batch_size=2)
    searcher = Searcher(gpt2, student, tokenizer, config=config)
    assert searcher.engine_lines == [
        "teacher: hf engine (model type 'gpt2' is not one of llama, mistral, qwen2, qwen3)",
        "student: hf engine (auto picks static on CUDA; --engine static runs it here)",
    ]
    results = searcher.run(PROMPTS[:2])
    assert all(r.trajectories for r in results)


def _rows(results):
    return [
        [(t.token_ids, t.student_score, [c.chosen for c in t.chunks]) for t in r.trajectories]
        for r in results
    ]


@pytest.mark.parametrize("teacher_tokenizer", ["shared", "letters"])
def test_both_engines_give_the_same_rows(teacher_tokenizer):
    student_tokenizer = bpe_tokenizer(300)
    tokenizer = student_tokenizer if teacher_tokenizer == "shared" else letters_tokenizer()
    teacher = tiny_lm("qwen3", len(tokenizer), seed=61, hidden=48, eos=[EOS, 40, 41])
    student = tiny_lm("llama", len(student_tokenizer), seed=62)
    runs = {}
    for engine in ("static", "hf"):
        config = SearchConfig(
            num_candidates=3,
            beam_width=2,
            chunk_tokens=4,
            step_delimiter=" ",
            max_new_tokens=16,
            temperature=1.0,
            margin=1.0,
            batch_size=3,
            seed=4,
            engine=engine,
        )
        runs[engine] = _rows(
            Searcher(teacher, student, tokenizer, student_tokenizer, config=config).run(PROMPTS)
        )
    for static_row, hf_row in zip(runs["static"], runs["hf"]):
        assert [t[0] for t in static_row] == [t[0] for t in hf_row]
        assert [t[2] for t in static_row] == [t[2] for t in hf_row]
        assert [t[1] for t in static_row] == pytest.approx([t[1] for t in hf_row], abs=1e-5)


def test_stop_prefix_keeps_the_tokens_before_the_stop_string():
    tokenizer = letters_tokenizer()
    ids = tokenizer("the sea", add_special_tokens=False)["input_ids"]
    assert _stop_prefix(tokenizer, ids[:2], ids[2:], [" s"]) == 1  # "th" + "e| sea": keep "e"
    assert _stop_prefix(tokenizer, ids[:2], ids[2:], ["x"]) is None
    assert _stop_prefix(tokenizer, ids[:4], ids[4:], ["he"]) is None  # in the text before the chunk


@pytest.mark.parametrize("engine", ["static", "hf"])
def test_stop_strings_end_trajectories_and_the_student_scores_what_is_kept(engine):
    tokenizer = letters_tokenizer()
    teacher = tiny_lm("llama", len(tokenizer), seed=21, hidden=48)
    student = tiny_lm("qwen2", len(tokenizer), seed=22)
    config = SearchConfig(
        num_candidates=2,
        chunk_tokens=4,
        max_new_tokens=24,
        temperature=1.0,
        margin=2.0,
        batch_size=5,
        seed=1,
        stop_strings=["h", "ts"],
        engine=engine,
    )
    results = Searcher(teacher, student, tokenizer, config=config).run(PROMPTS)
    trajectories = [(p, t) for p, r in zip(PROMPTS, results) for t in r.trajectories]
    stopped = 0
    for prompt, trajectory in trajectories:
        assert "h" not in trajectory.text and "ts" not in trajectory.text
        assert trajectory.text == tokenizer.decode(trajectory.token_ids, skip_special_tokens=True)
        stopped += len(trajectory.token_ids) < config.max_new_tokens and trajectory.token_ids[-1:] != [EOS]
        if trajectory.token_ids:
            expected = token_logprobs(student, tokenizer(prompt)["input_ids"], trajectory.token_ids).mean()
            assert trajectory.student_score == pytest.approx(expected.item(), abs=1e-4)
    assert stopped > 0


def test_special_tokens_other_than_eos_are_never_drawn():
    tokenizer = bpe_tokenizer(300)
    teacher = tiny_lm("llama", len(tokenizer), seed=5)
    rules = TokenRules(teacher, tokenizer, step_delimiter=None, vocab_limit=290, device="cpu")
    assert rules.banned[[PAD, BOS]].all() and not rules.banned[EOS] and rules.banned[290:].all()
    assert rules.banned.sum() == 2 + 10
    logits = rules.logits(torch.randn(3, 300))
    assert torch.isneginf(logits[:, [PAD, BOS]]).all() and torch.isfinite(logits[:, EOS]).all()
    # Make BOS the teacher's favourite token: it is still never sampled.
    with torch.no_grad():
        teacher.lm_head.weight[BOS] = (
            teacher.lm_head.weight[BOS] * 0 + 5.0 * teacher.lm_head.weight.abs().max()
        )
    config = SearchConfig(num_candidates=4, chunk_tokens=4, max_new_tokens=12, temperature=1.0, batch_size=5)
    results = Searcher(teacher, tiny_lm("qwen2", 300, seed=6), tokenizer, config=config).run(PROMPTS)
    ids = [i for r in results for t in r.trajectories for i in t.token_ids]
    assert ids and PAD not in ids and BOS not in ids


def test_prompt_past_the_context_is_refused_before_any_model_runs():
    tokenizer = bpe_tokenizer(300)
    teacher = tiny_lm("llama", len(tokenizer), seed=5, max_position_embeddings=40)
    student = tiny_lm("qwen2", len(tokenizer), seed=6)
    searcher = Searcher(teacher, student, tokenizer, config=SearchConfig(max_new_tokens=30))
    calls = []
    teacher.register_forward_pre_hook(lambda *args: calls.append(1))
    with pytest.raises(
        UsageError, match=r"with max_new_tokens=30 it needs \d+ positions, past the teacher's context of 40"
    ):
        searcher.run(PROMPTS)
    assert not calls


def test_kv_cache_bytes_from_the_config():
    model = tiny_lm("llama", 300, seed=1)  # 2 layers, 2 KV heads of 8 dims, fp32
    assert kv_cache_bytes(model, 3, 10) == 2 * 2 * 3 * 2 * 10 * 8 * 4


@pytest.mark.parametrize("engine", ["static", "hf"])
def test_a_stop_string_at_the_start_never_wins_and_rows_stay_json(engine):
    """A candidate cut to nothing has no score (-inf in the selection, null in the row) and is no
    trajectory; before, its mean over no tokens read 0.0 and beat every real candidate."""
    tokenizer = letters_tokenizer()
    teacher = tiny_lm("llama", len(tokenizer), seed=21, hidden=48)
    student = tiny_lm("qwen2", len(tokenizer), seed=22)
    config = SearchConfig(num_candidates=4, chunk_tokens=4, max_new_tokens=24, temperature=1.0, margin=0.5,
                          batch_size=5, seed=3, stop_strings=["e"], engine=engine)  # fmt: skip
    results = Searcher(teacher, student, tokenizer, config=config).run(PROMPTS)
    scores = [s for r in results for t in r.trajectories for c in t.chunks for s in c.candidate_scores]
    assert float("-inf") in scores  # the case happened
    for result in results:
        assert all(t.token_ids and t.student_score < 0 for t in result.trajectories)
        json.dumps(result.to_dict(), allow_nan=False)


@pytest.mark.parametrize("engine", ["static", "hf"])
def test_text_path_scores_a_stopped_trajectory_without_an_eos(engine):
    teacher_tokenizer, student_tokenizer = letters_tokenizer(), bpe_tokenizer(420)
    teacher = tiny_lm("llama", len(teacher_tokenizer), seed=21, hidden=48)
    student = tiny_lm("qwen2", len(student_tokenizer), seed=22)
    config = SearchConfig(num_candidates=2, chunk_tokens=4, max_new_tokens=24, temperature=1.0, margin=2.0,
                          batch_size=5, seed=1, stop_strings=["h", "ts"], engine=engine)  # fmt: skip
    results = Searcher(teacher, student, teacher_tokenizer, student_tokenizer, config=config).run(PROMPTS)
    stopped = 0
    for prompt, result in zip(PROMPTS, results):
        for trajectory in result.trajectories:
            ended = trajectory.token_ids[-1] == EOS
            completion = student_tokenizer(trajectory.text, add_special_tokens=False)["input_ids"]
            completion += [EOS] if ended else []
            expected = token_logprobs(student, student_tokenizer(prompt)["input_ids"], completion).mean()
            assert trajectory.student_score == pytest.approx(expected.item(), abs=1e-4)
            stopped += not ended and len(trajectory.token_ids) < config.max_new_tokens
    assert stopped > 0


def test_ragged_chunks_never_grow_the_static_caches():
    """Rows advance unevenly with a step delimiter; the caches keep the size planned up front
    (before, the column bound ran ahead of the rows and doubled them)."""
    tokenizer = bpe_tokenizer(300)
    teacher = tiny_lm("llama", len(tokenizer), seed=11, hidden=48)
    student = tiny_lm("qwen2", len(tokenizer), seed=12)
    config = SearchConfig(num_candidates=3, beam_width=2, chunk_tokens=16, step_delimiter=" ",
                          max_new_tokens=120, temperature=1.0, margin=5.0, batch_size=10, seed=5,
                          engine="static")  # fmt: skip
    searcher = Searcher(teacher, student, tokenizer, config=config)
    searcher.run(PROMPTS * 2)
    planned = max(len(tokenizer(p)["input_ids"]) for p in PROMPTS) + 120 + 16 + 1
    assert searcher.sampler.runner.cache.capacity == planned
    assert searcher.tracker.runner.cache.capacity == planned


def test_a_relative_path_under_a_local_folder_is_no_hub_id(tmp_path, monkeypatch):
    from genssd.models import check_source

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    with pytest.raises(UsageError, match="no such folder: models/student"):
        check_source("models/student")
    assert check_source("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"  # could be a Hub id


def test_a_missing_student_folder_is_refused_before_the_teacher_loads(tmp_path, monkeypatch):
    loaded = []
    monkeypatch.setattr("genssd.search.load_model", lambda source, **_: loaded.append(source))
    teacher = tmp_path / "teacher"
    bpe_tokenizer(300).save_pretrained(teacher)
    with pytest.raises(UsageError, match="no such folder: ./nope"):
        Searcher(str(teacher), "./nope")
    assert loaded == []
