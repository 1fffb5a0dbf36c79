"""The search on a GPU: exact scores with the CUDA kernels, greedy parity, and no host sync
between the student's forward pass and the selection (skipped without CUDA)."""

from __future__ import annotations

import genssd.search
import pytest
import torch
from genssd.config import SearchConfig, search_config_for
from genssd.errors import UsageError
from genssd.search import Searcher
from search_fixtures import EOS, PROMPTS, bpe_tokenizer, tiny_lm, token_logprobs

import genssd_kernels

pytestmark = pytest.mark.cuda


@pytest.fixture
def models():
    tokenizer = bpe_tokenizer(300)
    teacher = tiny_lm("llama", len(tokenizer), seed=81, hidden=64, eos=[EOS, 40, 41]).cuda()
    student = tiny_lm("qwen2", len(tokenizer), seed=82).cuda()
    return teacher, student, tokenizer


def test_scores_on_cuda_match_from_scratch(models):
    teacher, student, tokenizer = models
    config = SearchConfig(
        num_candidates=3,
        beam_width=2,
        chunk_tokens=4,
        step_delimiter=" ",
        max_new_tokens=16,
        temperature=1.0,
        batch_size=5,
    )
    results = Searcher(*models, config=config).run(PROMPTS)
    for prompt, result in zip(PROMPTS, results):
        for trajectory in result.trajectories:
            logprobs = token_logprobs(student, tokenizer(prompt)["input_ids"], trajectory.token_ids)
            assert trajectory.student_score == pytest.approx(logprobs.mean().item(), abs=1e-4)


def test_greedy_standard_on_cuda_equals_generate(models):
    teacher, student, tokenizer = models
    config = search_config_for("standard", temperature=0.0, max_new_tokens=12, chunk_tokens=5, batch_size=5)
    results = Searcher(*models, config=config).run(PROMPTS)
    for prompt, result in zip(PROMPTS, results):
        ids = torch.tensor([tokenizer(prompt)["input_ids"]], device="cuda")
        out = teacher.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12)
        assert result.trajectories[0].token_ids == out[0, ids.shape[1] :].tolist()


def test_no_host_sync_from_student_scores_to_selection(models, monkeypatch):
    """Sync debug mode raises on any host synchronization from the student's log-prob gather
    (right after its forward pass) until the round's one host read."""
    gather, fetch = genssd_kernels.logprob_gather, genssd.search._fetch
    rounds = []

    def strict_gather(*args, **kwargs):
        torch.cuda.set_sync_debug_mode("error")
        return gather(*args, **kwargs)

    def relaxed_fetch(*tensors):
        rounds.append(torch.cuda.get_sync_debug_mode())
        torch.cuda.set_sync_debug_mode("default")
        return fetch(*tensors)

    monkeypatch.setattr(genssd_kernels, "logprob_gather", strict_gather)
    monkeypatch.setattr(genssd.search, "_fetch", relaxed_fetch)
    try:
        config = SearchConfig(
            num_candidates=4, beam_width=2, chunk_tokens=4, max_new_tokens=12, temperature=1.0
        )
        Searcher(*models, config=config).run(PROMPTS)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(rounds) >= 3 and set(rounds) == {2}  # every round went through in "error" mode


def test_bf16_search_runs(models):
    teacher, student, tokenizer = models
    config = SearchConfig(num_candidates=4, chunk_tokens=4, max_new_tokens=12, temperature=0.8)
    results = Searcher(teacher.bfloat16(), student.bfloat16(), tokenizer, config=config).run(PROMPTS)
    assert all(r.trajectories or r.pruned_early for r in results)
    assert all(-20 < t.student_score < 0 for r in results for t in r.trajectories)


def _sampler_run(teacher, tokenizer, graphs: bool, drop_graphs: bool = False):
    """Three chunks of 3 candidates per prompt; ``drop_graphs`` frees every captured graph
    between chunks (as a cache reallocation or a new generation does), so each chunk captures
    anew into the sampler's pool."""
    from genssd.engine.decode import StaticTeacherSampler

    prompts = [tokenizer(p)["input_ids"] for p in PROMPTS]
    sampler = StaticTeacherSampler(
        teacher, tokenizer, temperature=1.0, top_p=1.0, step_delimiter=" ", graphs=graphs
    )
    sampler.start(prompts, rows=3 * len(prompts), columns=8)  # small: the cache grows mid-run
    parent = torch.arange(len(prompts), device="cuda").repeat_interleave(3)
    keys = torch.arange(parent.numel(), device="cuda") * 7919
    chunks = []
    for round_index in range(3):
        chunk = sampler.propose(parent, keys + round_index, [6] * parent.numel(), [False] * parent.numel())
        chunks.append((chunk.ids.tolist(), chunk.mask.tolist(), chunk.ended.tolist()))
        parent = torch.arange(parent.numel(), device="cuda")
        sampler.select(parent)
        if drop_graphs:
            for state in sampler._states.values():
                state.graphs.clear()
            torch.cuda.empty_cache()  # erases a pool nobody references, as a capture does first
            assert sampler._pool.use_count() >= 1  # the sampler's own reference keeps it
    return chunks


def test_graph_replay_gives_the_eager_tokens(models):
    teacher, _, tokenizer = models
    assert _sampler_run(teacher, tokenizer, graphs=True) == _sampler_run(teacher, tokenizer, graphs=False)


def test_graphs_capture_again_after_every_graph_was_freed(models):
    """The pool outlives its graphs: with a bare graph_pool_handle() id, the capture after the
    last graph's release failed the allocator's ``use_count > 0`` assert (seen in the demo)."""
    teacher, _, tokenizer = models
    eager = _sampler_run(teacher, tokenizer, graphs=False)
    assert _sampler_run(teacher, tokenizer, graphs=True, drop_graphs=True) == eager


@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_no_host_sync_inside_a_chunk(models, monkeypatch, cuda_graphs):
    """Sync debug mode "error" around every chunk's decode loop (graph replays and polls)."""
    from genssd.engine.decode import StaticTeacherSampler

    run_steps = StaticTeacherSampler._run_steps
    loops = []

    def strict(self, *args):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return run_steps(self, *args)
        finally:
            torch.cuda.set_sync_debug_mode("default")
            loops.append(1)

    monkeypatch.setattr(StaticTeacherSampler, "_run_steps", strict)
    config = SearchConfig(
        num_candidates=4,
        beam_width=2,
        chunk_tokens=8,
        max_new_tokens=24,
        temperature=1.0,
        cuda_graphs=cuda_graphs,
    )
    searcher = Searcher(*models, config=config)
    assert searcher.engine_lines[0] == "teacher: static engine (llama)"
    assert searcher.sampler.graphs == cuda_graphs
    searcher.run(PROMPTS)
    assert len(loops) >= 3


def test_engines_give_the_same_rows_on_cuda(models):
    teacher, student, tokenizer = models
    rows = {}
    for engine in ("static", "hf"):
        config = SearchConfig(
            num_candidates=3,
            beam_width=2,
            chunk_tokens=4,
            max_new_tokens=16,
            temperature=1.0,
            batch_size=5,
            engine=engine,
        )
        results = Searcher(teacher, student, tokenizer, config=config).run(PROMPTS)
        rows[engine] = [[(t.token_ids, round(t.student_score, 3)) for t in r.trajectories] for r in results]
    assert rows["static"] == rows["hf"]


def test_a_searcher_runs_twice_alike(models):
    """A second run allocates new caches: graphs captured on the first run's buffers are not reused."""
    config = SearchConfig(
        num_candidates=3, beam_width=2, chunk_tokens=4, max_new_tokens=16, temperature=1.0, cuda_graphs=True
    )
    searcher = Searcher(*models, config=config)
    first, second = searcher.run(PROMPTS), searcher.run(PROMPTS)
    assert [r.to_dict() for r in first] == [r.to_dict() for r in second]


def test_caches_past_free_memory_are_refused_before_any_model_runs():
    tokenizer = bpe_tokenizer(300)
    # 2 layers x K and V x 2 KV heads x 128 dims x fp32 = 4 KiB a token; 5 prompts x 4 candidates
    # x ~2M columns = ~160 GB, past an H200's memory.
    teacher = tiny_lm("llama", 300, seed=1, hidden=512, max_position_embeddings=4_000_000).cuda()
    student = tiny_lm("qwen2", 300, seed=2, max_position_embeddings=4_000_000).cuda()
    config = SearchConfig(num_candidates=4, max_new_tokens=2_000_000, batch_size=8)
    refused = r"the KV caches of a batch need [\d.]+ GiB \(20 rows x \d+ columns\)"
    with pytest.raises(UsageError, match=refused):
        Searcher(teacher, student, tokenizer, config=config).run(PROMPTS)
    assert torch.cuda.memory_allocated() < 2**30
