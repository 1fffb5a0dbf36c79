"""The Searcher's interface: presets, scorers, reproducibility, progress bar, input checks."""

from __future__ import annotations

import pytest
import torch
from genssd import RandomScorer, SearchConfig, Searcher, StudentLikelihoodScorer
from genssd.config import search_config_for
from genssd.errors import UsageError
from genssd.search import default_scorer
from search_fixtures import PROMPTS, bpe_tokenizer, tiny_lm, token_logprobs  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models():
    tokenizer = bpe_tokenizer(300)
    teacher = tiny_lm("llama", len(tokenizer), seed=61, hidden=48, eos=[2, 50, 51, 52])
    student = tiny_lm("qwen2", len(tokenizer), seed=62)
    return teacher, student, tokenizer


def _texts(results):
    return [[t.text for t in r.trajectories] for r in results]


@pytest.mark.parametrize("engine", ["hf", "static"])  # static: later batches reuse the first's cache
def test_results_do_not_depend_on_the_batch(models, engine):
    config = SearchConfig(
        num_candidates=3,
        beam_width=2,
        chunk_tokens=3,
        max_new_tokens=12,
        temperature=1.0,
        seed=3,
        engine=engine,
    )
    one_by_one = Searcher(*models, config=SearchConfig(**{**config.__dict__, "batch_size": 1})).run(PROMPTS)
    together = Searcher(*models, config=SearchConfig(**{**config.__dict__, "batch_size": 5})).run(PROMPTS)
    reversed_ = Searcher(*models, config=config).run(PROMPTS[::-1])[::-1]
    assert _texts(one_by_one) == _texts(together) == _texts(reversed_)
    for a, b in zip(one_by_one, together):
        for ta, tb in zip(a.trajectories, b.trajectories):
            assert ta.student_score == pytest.approx(tb.student_score, abs=1e-5)
    other_seed = Searcher(*models, config=SearchConfig(**{**config.__dict__, "seed": 4})).run(PROMPTS)
    assert _texts(other_seed) != _texts(together)


def test_uids_key_the_samples(models):
    config = SearchConfig(num_candidates=2, chunk_tokens=4, max_new_tokens=8, temperature=1.0)
    searcher = Searcher(*models, config=config)
    same = [PROMPTS[0]] * 2
    assert len(set(map(tuple, _texts(searcher.run(same))))) == 1
    assert len(set(map(tuple, _texts(searcher.run(same, uids=["a", "b"]))))) == 2


def test_presets_configure_the_engine(models):
    teacher, student, tokenizer = models
    best_of = search_config_for("best-of-n", num_candidates=5, max_new_tokens=10, temperature=1.0)
    for result in Searcher(*models, config=best_of).run(PROMPTS):
        (trajectory,) = result.trajectories
        (chunk,) = trajectory.chunks  # one chunk: the whole answer
        assert chunk.num_candidates == 5
        assert chunk.chosen == max(range(5), key=lambda i: (chunk.candidate_scores[i], -i))
        assert result.teacher_tokens >= trajectory.num_tokens

    token_level = search_config_for("token-level", max_new_tokens=6, temperature=1.0)
    for result in Searcher(*models, config=token_level).run(PROMPTS[:2]):
        assert all(c.num_tokens == 1 for t in result.trajectories for c in t.chunks)

    standard = search_config_for("standard")
    assert (standard.num_candidates, standard.beam_width, standard.select) == (1, 1, False)
    # Standard KD with n samples (for rejection sampling): n independent trajectories, no waste.
    n_samples = search_config_for(
        "standard", num_candidates=3, beam_width=3, chunk_tokens=3, max_new_tokens=8, temperature=1.0
    )
    results = Searcher(*models, config=n_samples).run(PROMPTS)
    for result in results:
        assert len(result.trajectories) == 3 and not result.pruned_early
        assert result.teacher_tokens == sum(t.num_tokens for t in result.trajectories)
    assert any(len({tuple(t.token_ids) for t in r.trajectories}) == 3 for r in results)
    assert isinstance(default_scorer(search_config_for("random")), RandomScorer)
    scorer = default_scorer(search_config_for("gen-ssd", score_scope="chunk"))
    assert isinstance(scorer, StudentLikelihoodScorer) and scorer.scope == "chunk"


def test_random_scorer_is_seeded_and_ignores_the_student(models):
    teacher, student, tokenizer = models
    config = search_config_for("random", num_candidates=4, chunk_tokens=3, max_new_tokens=9, temperature=1.0)
    first = Searcher(*models, config=config).run(PROMPTS)
    again = Searcher(*models, config=config).run(PROMPTS)
    other = Searcher(*models, config=config, scorer=RandomScorer(seed=99)).run(PROMPTS)
    assert _texts(first) == _texts(again) != _texts(other)
    for prompt, result in zip(PROMPTS, first):
        for trajectory in result.trajectories:
            for chunk in trajectory.chunks:  # selection by random score, in (0, 1)
                assert all(0 < s < 1 for s in chunk.candidate_scores)
                assert chunk.chosen == max(range(4), key=lambda i: chunk.candidate_scores[i])
            # ... while the recorded student score is still the student's likelihood
            logprobs = token_logprobs(student, tokenizer(prompt)["input_ids"], trajectory.token_ids)
            assert trajectory.student_score == pytest.approx(logprobs.mean().item(), abs=1e-4)


def test_record_candidates_keeps_every_candidates_text(models):
    config = SearchConfig(
        num_candidates=3, chunk_tokens=3, max_new_tokens=6, temperature=1.0, record_candidates=True
    )
    (result,) = Searcher(*models, config=config).run(PROMPTS[:1])
    trajectory = result.trajectories[0]
    chosen = "".join(c.candidates[c.chosen] for c in trajectory.chunks)
    assert all(len(c.candidates) == 3 for c in trajectory.chunks)
    assert chosen == trajectory.text


def test_progress_bar_reports_prompts_beams_pruning_and_speed(models, capsys):
    config = SearchConfig(num_candidates=2, beam_width=2, chunk_tokens=3, max_new_tokens=6, batch_size=2)
    Searcher(*models, config=config).run(PROMPTS, progress=True)
    err = capsys.readouterr().err
    assert "5/5" in err and "live=" in err and "pruned=" in err and "teacher tok/s=" in err


def test_models_and_tokenizers_load_from_paths(models, tmp_path):
    teacher, student, tokenizer = models
    teacher.save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    student.save_pretrained(tmp_path / "student")
    config = SearchConfig(num_candidates=2, chunk_tokens=3, max_new_tokens=6, temperature=1.0)
    from_paths = Searcher(str(tmp_path / "teacher"), str(tmp_path / "student"), config=config).run(PROMPTS)
    from_objects = Searcher(*models, config=config).run(PROMPTS)
    assert _texts(from_paths) == _texts(from_objects)
    pretrained = Searcher.from_pretrained(
        tmp_path / "teacher",
        tmp_path / "student",
        num_candidates=2,
        chunk_tokens=3,
        max_new_tokens=6,
        temperature=1.0,
    )
    assert pretrained.config.method == "gen-ssd" and _texts(pretrained.run(PROMPTS)) == _texts(from_objects)


def test_bad_inputs_raise_usage_errors(models):
    teacher, student, tokenizer = models
    with pytest.raises(UsageError, match="same device"):
        Searcher(teacher, tiny_lm("qwen2", len(tokenizer), seed=1).to("meta"), tokenizer)
    with pytest.raises(UsageError, match="empty"):
        Searcher(*models).run(["fine", "  "])
    with pytest.raises(UsageError, match="num_candidates"):
        SearchConfig(num_candidates=0)
    with pytest.raises(UsageError, match="student model is required"):
        Searcher(teacher, None, tokenizer)

    class WrongShape:
        def score(self, batch):
            return torch.zeros(batch.parent.numel() + 1)

    with pytest.raises(ValueError, match="expected a tensor of shape"):
        Searcher(*models, scorer=WrongShape(), config=SearchConfig(max_new_tokens=4)).run(PROMPTS[:1])
