"""Incremental student scores equal from-scratch Hugging Face forward passes (docs/design.md §3, step 2).

Every recorded score is recomputed by running the student on the whole text at once: the
trajectory's ``student_score`` and, chunk by chunk, the chosen candidate's score in the configured
scope. Runs use several prompts of different lengths (left padding), beam_width > 1 (cache forks
and selections), frequent end-of-sequence tokens and, in some cases, a step delimiter (ragged
chunks, so cache holes), on both decode engines.
"""

from __future__ import annotations

import pytest
from genssd.config import SearchConfig
from genssd.errors import UsageError
from genssd.search import Searcher
from search_fixtures import (  # noqa: F401
    EOS,
    PROMPTS,
    bpe_tokenizer,
    letters_tokenizer,
    tiny_lm,
    token_logprobs,
)

pytestmark = pytest.mark.usefixtures("one_thread")

TEACHER_EOS = [EOS, 40, 41, 42, 43, 44, 45, 46]  # frequent endings, so finished and live beams mix


def _chunk_bounds(trajectory):
    ends, start = [], 0
    for chunk in trajectory.chunks:
        ends.append((start, start + chunk.num_tokens))
        start += chunk.num_tokens
    return ends


ENGINES = pytest.mark.parametrize("engine", ["static", "hf"])


@ENGINES
@pytest.mark.parametrize(
    "kind, scope, beam_width, delimiter",
    [
        ("llama", "trajectory", 2, None),
        ("qwen2", "chunk", 2, " "),
        ("llama", "chunk", 1, None),
        ("qwen2", "trajectory", 3, "e"),
    ],
)
def test_shared_vocab_scores_match_from_scratch(kind, scope, beam_width, delimiter, engine):
    tokenizer = bpe_tokenizer(300)
    teacher = tiny_lm(kind, len(tokenizer), seed=11, hidden=48, eos=TEACHER_EOS)
    student = tiny_lm("qwen2" if kind == "llama" else "llama", len(tokenizer), seed=12)
    config = SearchConfig(
        num_candidates=3,
        beam_width=beam_width,
        chunk_tokens=4,
        step_delimiter=delimiter,
        max_new_tokens=14,
        temperature=1.0,
        margin=1.0,
        score_scope=scope,
        batch_size=3,
        seed=5,
        engine=engine,
    )
    results = Searcher(teacher, student, tokenizer, config=config).run(PROMPTS)

    checked_chunks = 0
    for prompt, result in zip(PROMPTS, results):
        prompt_ids = tokenizer(prompt)["input_ids"]
        assert 1 <= len(result.trajectories) <= beam_width and not result.pruned_early
        for trajectory in result.trajectories:
            logprobs = token_logprobs(student, prompt_ids, trajectory.token_ids)
            assert trajectory.student_score == pytest.approx(logprobs.mean().item(), abs=1e-4)
            bounds = _chunk_bounds(trajectory)
            assert bounds[-1][1] == len(trajectory.token_ids) == trajectory.num_tokens
            for (start, end), chunk in zip(bounds, trajectory.chunks):
                expected = logprobs[start:end] if scope == "chunk" else logprobs[:end]
                assert chunk.candidate_scores[chunk.chosen] == pytest.approx(expected.mean().item(), abs=1e-4)
                checked_chunks += 1

    trajectories = [t for r in results for t in r.trajectories]
    # The run exercised what the test is about: several rounds, several beams, EOS endings.
    assert checked_chunks > 2 * len(trajectories)
    if beam_width > 1:
        assert any(len(r.trajectories) > 1 for r in results)
    assert any(t.token_ids[-1] in TEACHER_EOS for t in trajectories)
    assert any(t.num_tokens == config.max_new_tokens for t in trajectories)
    if delimiter is not None:
        lengths = {c.num_tokens for t in trajectories for c in t.chunks[:-1]}
        assert len(lengths) > 1  # ragged chunks


def _student_ids(tokenizer, prompt: str, text: str, ended: bool) -> tuple[list[int], list[int]]:
    completion = tokenizer(text, add_special_tokens=False)["input_ids"] + ([EOS] if ended else [])
    return tokenizer(prompt)["input_ids"], completion


@ENGINES
@pytest.mark.parametrize("beam_width", [1, 2])
def test_different_tokenizers_score_the_students_own_tokens(beam_width, engine):
    teacher_tokenizer, student_tokenizer = letters_tokenizer(), bpe_tokenizer(420)
    teacher = tiny_lm("llama", len(teacher_tokenizer), seed=21, hidden=48)
    student = tiny_lm("qwen2", len(student_tokenizer), seed=22)
    config = SearchConfig(
        num_candidates=3,
        beam_width=beam_width,
        chunk_tokens=3,
        max_new_tokens=20,
        temperature=1.0,
        margin=1.0,
        batch_size=5,
        seed=9,
        engine=engine,
    )
    searcher = Searcher(teacher, student, teacher_tokenizer, student_tokenizer, config=config)
    assert not searcher.tracker.shared_vocab
    results = searcher.run(PROMPTS)

    rollbacks = 0
    for prompt, result in zip(PROMPTS, results):
        for trajectory in result.trajectories:
            ended = trajectory.token_ids[-1] == EOS
            assert trajectory.text == teacher_tokenizer.decode(trajectory.token_ids, skip_special_tokens=True)
            prompt_ids, completion = _student_ids(student_tokenizer, prompt, trajectory.text, ended)
            logprobs = token_logprobs(student, prompt_ids, completion)
            assert trajectory.student_score == pytest.approx(logprobs.mean().item(), abs=1e-4)
            # Every round's trajectory score is the from-scratch score of the text so far.
            previous: list[int] = []
            for (_, end), chunk in zip(_chunk_bounds(trajectory), trajectory.chunks):
                text = teacher_tokenizer.decode(trajectory.token_ids[:end], skip_special_tokens=True)
                last = end == len(trajectory.token_ids)
                prompt_ids, completion = _student_ids(student_tokenizer, prompt, text, ended and last)
                expected = token_logprobs(student, prompt_ids, completion).mean().item()
                assert chunk.candidate_scores[chunk.chosen] == pytest.approx(expected, abs=1e-4)
                rollbacks += completion[: len(previous)] != previous
                previous = completion
    # Chunk boundaries did split student tokens, so the rollback path ran and stayed exact.
    assert rollbacks > 0


@ENGINES
def test_student_with_smaller_vocabulary_on_shared_tokens_never_sees_unknown_ids(engine):
    """With ids passing straight through, the teacher samples only ids the student can score
    (the 7B-shaped pair of bench_search: a 152,064-row teacher head over a 151,936-row student)."""
    tokenizer = bpe_tokenizer(300)
    teacher = tiny_lm("llama", len(tokenizer) + 37, seed=31)  # padded embedding rows beyond the tokenizer
    student = tiny_lm("qwen2", len(tokenizer), seed=32)
    config = SearchConfig(
        num_candidates=2, chunk_tokens=4, max_new_tokens=12, temperature=2.0, batch_size=5, engine=engine
    )
    results = Searcher(teacher, student, tokenizer, config=config).run(PROMPTS)
    for prompt, result in zip(PROMPTS, results):
        for trajectory in result.trajectories:
            assert max(trajectory.token_ids) < len(tokenizer)
            logprobs = token_logprobs(student, tokenizer(prompt)["input_ids"], trajectory.token_ids)
            assert trajectory.student_score == pytest.approx(logprobs.mean().item(), abs=1e-4)


def test_text_path_refuses_student_ids_beyond_the_lm_head():
    """Token ids the student's LM head cannot score are refused, never read out of bounds."""
    teacher_tokenizer, student_tokenizer = letters_tokenizer(), bpe_tokenizer(420)
    teacher = tiny_lm("llama", len(teacher_tokenizer), seed=23)
    student = tiny_lm("qwen2", len(student_tokenizer) - 100, seed=24)  # fewer rows than the tokenizer
    config = SearchConfig(num_candidates=2, chunk_tokens=3, max_new_tokens=6, batch_size=5)
    searcher = Searcher(teacher, student, teacher_tokenizer, student_tokenizer, config=config)
    assert not searcher.tracker.shared_vocab
    with pytest.raises(UsageError, match="LM head has only"):
        searcher.run(PROMPTS)
