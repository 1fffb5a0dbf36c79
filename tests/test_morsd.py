"""MoRSD-style selection (``genssd.morsd``): the answer split, the diversity rule, the ranking
against a plain statement, and the student's answer log-probs against a from-scratch forward."""

from __future__ import annotations

import random

import pytest
import torch
from genssd.morsd import answer_logprobs, morsd_rows, near_duplicate, select, split_answer
from genssd.prompts import PromptFormat
from genssd.tasks import get_task
from genssd.tasks.arith import generate_problems
from search_fixtures import bpe_tokenizer, tiny_lm, token_logprobs

pytestmark = pytest.mark.usefixtures("one_thread")
TASK = get_task("arith")


def test_split_answer_and_near_duplicates():
    assert split_answer("a = 1\nb = 2\n#### 3\n") == ("a = 1\nb = 2\n", "#### 3")
    assert split_answer("#### 3") == ("", "#### 3")
    assert near_duplicate("x\ny\nz\nw\nv\n", "y\nx\nz\nw\nv\n")  # same lines, reordered
    assert not near_duplicate("x\ny\n", "x\nq\n")  # 1 of 3 lines shared
    assert near_duplicate("", "")


def test_select_matches_a_plain_statement():
    rng = random.Random(0)
    for _ in range(200):
        lines = [f"s{i}" for i in range(4)]
        candidates = [
            (rng.uniform(-3, 0), "\n".join(rng.sample(lines, rng.randint(1, 4))))
            for _ in range(rng.randint(0, 6))
        ]
        m = rng.randint(1, 3)
        # Plain statement: walk from the best score down, keep what is no near-copy of a kept one.
        expected = []
        for i in sorted(range(len(candidates)), key=lambda i: -candidates[i][0]):
            if len(expected) < m and all(
                not near_duplicate(candidates[i][1], candidates[k][1]) for k in expected
            ):
                expected.append(i)
        assert select(candidates, m) == expected


def test_answer_logprobs_equal_a_from_scratch_forward():
    tokenizer = bpe_tokenizer(300)
    model = tiny_lm("qwen2", len(tokenizer), seed=51)
    prompts = [tokenizer(p)["input_ids"] for p in ("the cat", "a hat is on", "sea")]
    texts = ["it sat\non the mat\n#### 12", "#### 7", "so the sea\nis blue\n#### 401\n"]
    scores = answer_logprobs(model, tokenizer, prompts, texts, batch_size=2)
    for prompt, text, score in zip(prompts, texts, scores):
        rationale, answer = split_answer(text)
        context = prompt + tokenizer(rationale, add_special_tokens=False)["input_ids"]
        expected = token_logprobs(model, context, tokenizer(answer, add_special_tokens=False)["input_ids"])
        assert score == pytest.approx(expected.mean().item(), abs=1e-4)


def test_morsd_rows_keep_the_easiest_distinct_correct_rationales():
    tokenizer = bpe_tokenizer(300)
    model = tiny_lm("llama", len(tokenizer), seed=52)
    rows = generate_problems(6, 9)
    for row in rows:
        gold = int(TASK.gold_answer(row))
        row["trajectories"] = [
            {"text": row["answer"]},  # right
            {"text": row["answer"].replace(f"#### {gold}", f"#### {gold + 1}")},  # wrong
            {"text": f"we add\nthen we carry\n#### {gold}"},  # right, a different rationale
            {"text": row["answer"]},  # right, a copy of the first
        ]
    kept = morsd_rows(rows, TASK, model, tokenizer, PromptFormat(), per_problem=3)
    by_problem: dict[str, list[dict]] = {}
    for r in kept:
        by_problem.setdefault(r["uid"].rsplit("/", 1)[0], []).append(r)
    for row in rows:
        mine = by_problem[str(row["uid"])]
        indices = {int(r["uid"].rsplit("/", 1)[1]) for r in mine}
        # The wrong one never; of the two copies only one; both distinct right rationales.
        assert 1 not in indices and len(indices & {0, 3}) == 1 and 2 in indices and len(mine) == 2
        scores = [r["rationale_score"] for r in mine]
        assert scores == sorted(scores, reverse=True) and all(r["correct"] for r in mine)
    one = morsd_rows(rows, TASK, model, tokenizer, PromptFormat(), per_problem=1)
    assert len(one) == len(rows)
    assert [r["uid"] for r in one] == [by_problem[str(row["uid"])][0]["uid"] for row in rows]
    assert torch.is_grad_enabled()  # the scoring's no_grad did not leak
