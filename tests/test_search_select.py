"""Selection follows docs/design.md §3 exactly, checked with scorers whose scores the test controls.

Designed cases pin each rule (margin, ``max_ppl``, top-``beam_width``, ties to the lower index,
early stop per prompt); a randomized case replays every round through a plain-Python statement of
the rules, including beams that finish (EOS or budget) and so leave fewer slots to fill.
"""

from __future__ import annotations

import math

import pytest
import torch
from genssd.config import SearchConfig
from genssd.search import Searcher
from search_fixtures import EOS, PROMPTS, bpe_tokenizer, tiny_lm  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

K = 4


class TableScorer:
    """Returns ``table[round]`` (its length must be the round's number of candidates); records batches."""

    def __init__(self, table):
        self.table = table
        self.batches = []

    def score(self, batch):
        self.batches.append(batch)
        scores = self.table[batch.round]
        assert len(scores) == batch.parent.numel()
        return torch.tensor(scores, dtype=torch.float32)


def _models(eos=None):
    tokenizer = bpe_tokenizer(300)
    teacher = tiny_lm("llama", len(tokenizer), seed=51, hidden=48, eos=eos)
    student = tiny_lm("qwen2", len(tokenizer), seed=52)
    return teacher, student, tokenizer


def _run(table, prompts, **config):
    teacher, student, tokenizer = _models()
    scorer = TableScorer(table)
    settings = dict(
        num_candidates=K, chunk_tokens=2, max_new_tokens=2 * len(table), temperature=0.0, batch_size=8
    )
    results = Searcher(
        teacher, student, tokenizer, config=SearchConfig(**{**settings, **config}), scorer=scorer
    ).run(prompts)
    sizes = [torch.diff(b.group_offsets).tolist() for b in scorer.batches]
    return results, sizes


def _lineages(result):
    return sorted([c.chosen for c in t.chunks] for t in result.trajectories)


def test_margin_drops_candidates_below_group_mean_minus_margin():
    # mean = -0.675: margin 0.5 keeps -0.8 (>= -1.175), margin 0.1 drops it (< -0.775).
    first = [0.0, -0.8, -2.0, 0.1]
    wide, wide_sizes = _run([first, [1.0, 0.0, 0.0, 0.0] * 3], PROMPTS[:1], beam_width=3, margin=0.5)
    narrow, narrow_sizes = _run([first, [1.0, 0.0, 0.0, 0.0] * 2], PROMPTS[:1], beam_width=3, margin=0.1)
    assert wide_sizes == [[K], [3 * K]] and narrow_sizes == [[K], [2 * K]]
    # Beams are ranked best first (3, 0, 1); in round 1 each beam's first candidate scores 1.
    assert _lineages(wide[0]) == [[0, 4], [1, 8], [3, 0]]
    # Round 1 mean 0.25, margin 0.1: the zeros fall below 0.15, so a slot stays empty.
    assert _lineages(narrow[0]) == [[0, 4], [3, 0]]


def test_top_beam_width_best_first_and_ties_to_lower_index():
    # Round 0: all tie -> candidates 0 and 1 survive, in that order (beam ranks 0 and 1).
    # Round 1 (8 candidates: beam 0's are 0-3, beam 1's are 4-7): best two are 6 and then the
    # tie 2 / 5, which goes to the lower index 2.
    table = [[0.5] * 4, [0.0, 0.1, 0.9, -0.2, 0.3, 0.9, 1.2, 0.0]]
    results, sizes = _run(table, PROMPTS[:1], beam_width=2, margin=10.0)
    assert sizes == [[4], [8]]
    assert _lineages(results[0]) == [[0, 2], [1, 6]]
    by_score = [[c.chosen for c in t.chunks] for t in results[0].trajectories]
    assert by_score[0][1] in (2, 6)


def test_max_ppl_prunes_and_a_prompt_without_survivors_stops_early():
    floor = -math.log(math.e)  # max_ppl = e -> min_score = -1
    # Prompt 0: round 0 keeps 0 and 2; round 1 everything is below the floor -> pruned early.
    # Prompt 1: nothing reaches the floor in round 0 -> pruned at once.
    # Prompt 2: always fine -> runs to the end.
    table = [
        [-0.5, -1.5, -0.9, -3.0] + [-1.1, -1.2, -5.0, -2.0] + [-0.1, -0.2, -0.3, -0.4],
        [-1.01, -2.0, -1.5, -1.3] * 2 + [-0.1, -0.2, -0.3, -0.4] * 2,
        [0.0] * 8,
    ]
    results, sizes = _run(table, PROMPTS[:3], beam_width=2, margin=1.0, max_ppl=math.e)
    assert sizes == [[4, 4, 4], [8, 8], [8]]
    pruned_at_1, pruned_at_0, kept = results
    assert pruned_at_1.pruned_early and pruned_at_1.trajectories == []
    assert pruned_at_0.pruned_early and pruned_at_0.trajectories == []
    assert not kept.pruned_early and len(kept.trajectories) == 2
    # Early stop saves teacher tokens: 1 round x 4 candidates x 2 tokens, 2 rounds, 3 rounds.
    assert pruned_at_0.teacher_tokens == 4 * 2
    assert pruned_at_1.teacher_tokens == 4 * 2 + 8 * 2
    assert kept.teacher_tokens == 4 * 2 + 8 * 2 + 8 * 2
    assert all(min(c.candidate_scores[c.chosen] for c in t.chunks) >= floor for t in kept.trajectories)


def test_without_selection_the_first_round_draws_the_beams_and_each_goes_on_alone():
    table = [[-9.0, 5.0, 5.0, 5.0], [-9.0, -9.0], [-9.0, -9.0]]
    results, sizes = _run(table, PROMPTS[:1], beam_width=2, select=False, max_ppl=2.0)
    assert sizes == [[4], [2], [2]]  # one candidate per beam after the first round
    assert _lineages(results[0]) == [[0, 0, 0], [1, 1, 1]]  # no scores used, nothing pruned


class RandomTableScorer:
    """Seeded random scores; records each round's scores, group sizes, chunk lengths and endings."""

    def __init__(self, eos_ids, seed=0):
        self.eos = torch.tensor(eos_ids)
        self.gen = torch.Generator().manual_seed(seed)
        self.rounds = []

    def score(self, batch):
        count = batch.parent.numel()
        scores = (torch.randn(count, generator=self.gen) * 0.6).round(decimals=3)
        lengths = batch.chunk_mask.sum(1)
        last = batch.chunk_ids.gather(1, (lengths - 1)[:, None]).squeeze(1)
        self.rounds.append(
            {
                "scores": scores.tolist(),
                "sizes": torch.diff(batch.group_offsets).tolist(),
                "lengths": lengths.tolist(),
                "ended": torch.isin(last, self.eos).tolist(),
            }
        )
        return scores


def _reference(rounds, prompts, *, k, beam_width, margin, min_score, max_new):
    """docs/design.md §3 selection in plain Python: each prompt's finished lineages and pruned flag."""
    beams = {p: [([], 0)] for p in range(prompts)}  # lineage (chosen indices), tokens so far
    finished = {p: [] for p in range(prompts)}
    pruned = dict.fromkeys(range(prompts), False)
    for record in rounds:
        live = [p for p in range(prompts) if beams[p]]
        assert record["sizes"] == [len(beams[p]) * k for p in live]
        offset = 0
        for p in live:
            size = len(beams[p]) * k
            scores = record["scores"][offset : offset + size]
            mean = sum(scores) / size
            survivors = [i for i, s in enumerate(scores) if s >= mean - margin and s >= min_score]
            survivors.sort(key=lambda i: (-scores[i], i))
            kept = survivors[: beam_width - len(finished[p])]
            if not kept:
                pruned[p] = True
            next_beams = []
            for i in kept:
                lineage, tokens = beams[p][i // k]
                tokens += record["lengths"][offset + i]
                entry = (lineage + [i], tokens)
                if record["ended"][offset + i] or tokens >= max_new:
                    finished[p].append(entry[0])
                else:
                    next_beams.append(entry)
            beams[p] = next_beams
            offset += size
    return {p: sorted(finished[p]) for p in range(prompts)}, pruned


@pytest.mark.parametrize(
    "beam_width, margin, max_ppl, seed", [(2, 0.3, None, 0), (3, 0.6, 3.0, 1), (1, 0.2, None, 2)]
)
def test_selection_matches_plain_python_statement_of_the_rules(beam_width, margin, max_ppl, seed):
    eos = [EOS, 60, 61, 62, 63, 64, 65]
    teacher, student, tokenizer = _models(eos=eos)
    scorer = RandomTableScorer(eos, seed=seed)
    config = SearchConfig(
        num_candidates=3,
        beam_width=beam_width,
        chunk_tokens=3,
        step_delimiter="e",
        max_new_tokens=15,
        temperature=1.0,
        margin=margin,
        max_ppl=max_ppl,
        batch_size=5,
        seed=seed,
    )
    results = Searcher(teacher, student, tokenizer, config=config, scorer=scorer).run(PROMPTS)
    expected, pruned = _reference(
        scorer.rounds,
        len(PROMPTS),
        k=3,
        beam_width=beam_width,
        margin=margin,
        min_score=-math.log(max_ppl) if max_ppl else -math.inf,
        max_new=15,
    )
    for p, result in enumerate(results):
        assert _lineages(result) == expected[p]
        assert result.pruned_early == pruned[p]
    assert len(scorer.rounds) >= 3


def test_paper_preset_keeps_the_likeliest_chunk_and_stops_above_the_perplexity_ceiling():
    from genssd.config import METHOD_PRESETS

    paper = METHOD_PRESETS["gen-ssd-paper"]
    ceiling = -math.log(paper["max_ppl"])  # chunk mean log-prob below which a candidate is too unlikely
    results, sizes = _run([[-1.0, -0.5, -3.0, -2.0], [ceiling - 0.1] * K], PROMPTS[:1], **paper)
    assert sizes == [[K], [K]]
    # Round 0 keeps candidate 1 (the likeliest); in round 1 every candidate is past the ceiling.
    assert results[0].pruned_early and results[0].trajectories == []
    kept, _ = _run(
        [[-1.0, -0.5, -3.0, -2.0], [ceiling - 0.1, ceiling + 0.1, -9.0, ceiling]], PROMPTS[:1], **paper
    )
    assert _lineages(kept[0]) == [[1, 1]]
