"""MoRSD-style post-hoc rationale selection: the correct rationales the student can follow best.

MoRSD (Model-Oriented Rationale Selection Distillation, EMNLP 2025 Findings, arXiv 2509.23574)
selects teacher rationales after sampling by correctness, diversity and a "rationale difficulty":
how well the student reaches the right answer given the rationale. The paper's exact formulas
were not reachable here; what this module does, where it had to choose:

- **Difficulty**: the student's mean log-probability of the answer given the prompt (its own,
  ``genssd.prompts``) and the rationale. The answer is the trajectory's last non-empty line (the
  ``#### n`` of GSM8K and ``arith``, the line holding MATH's ``\\boxed{}``); the rationale is
  everything before it. Higher means easier for the student.
- **Correctness**: only trajectories whose answer the task checks as right take part.
- **Diversity**: a rationale whose set of non-empty lines overlaps a kept one's by a Jaccard
  similarity of ``NEAR_DUPLICATE`` or more is skipped (same steps, maybe reordered); candidates
  are visited from the easiest down, so the kept one is the easier of the two.
- At most ``per_problem`` rationales per problem are kept (the equal-data protocol's m).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from genssd.models import decoder_and_head, input_device
from genssd.prompts import PromptFormat
from genssd.train import trajectory_row
from genssd_kernels import logprob_gather

# Two rationales sharing this share of their lines are the same rationale for the diversity rule.
NEAR_DUPLICATE = 0.8


def split_answer(text: str) -> tuple[str, str]:
    """``(rationale, answer)``: the text before its last non-empty line, and that line."""
    body = text.rstrip()
    cut = body.rfind("\n")
    return (body[: cut + 1], body[cut + 1 :]) if cut >= 0 else ("", body)


def _lines(text: str) -> set[str]:
    return {line.strip() for line in text.splitlines() if line.strip()}


def near_duplicate(a: str, b: str, threshold: float = NEAR_DUPLICATE) -> bool:
    """Whether rationales ``a`` and ``b`` share at least ``threshold`` of their lines (Jaccard)."""
    lines_a, lines_b = _lines(a), _lines(b)
    if not lines_a and not lines_b:
        return True
    return len(lines_a & lines_b) / len(lines_a | lines_b) >= threshold


@torch.no_grad()
def answer_logprobs(
    model, tokenizer, prompts: Sequence[list[int]], texts: Sequence[str], *, batch_size: int = 16
) -> list[float]:
    """The student's mean log-probability of each text's answer line after its prompt and rationale.

    Args:
        prompts: each item's prompt ids (as the student is prompted).
        texts: each item's trajectory text (``split_answer`` cuts it).
    Returns:
        one float per item (the mean over the answer's tokens).
    """
    decoder, weight = decoder_and_head(model)
    device = input_device(model)
    items = []
    for prompt, text in zip(prompts, texts):
        rationale, answer = split_answer(text)
        context = list(prompt) + tokenizer(rationale, add_special_tokens=False)["input_ids"]
        items.append((context, tokenizer(answer, add_special_tokens=False)["input_ids"]))
    scores = []
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        width = max(len(c) + len(a) for c, a in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        rows, columns, targets, bounds = [], [], [], [0]
        for b, (context, answer) in enumerate(batch):
            sequence = context + answer
            ids[b, : len(sequence)] = torch.tensor(sequence)
            mask[b, : len(sequence)] = 1
            # The hidden state at position p predicts token p + 1.
            rows += [b] * len(answer)
            columns += range(len(context) - 1, len(sequence) - 1)
            targets += answer
            bounds.append(len(targets))
        hidden = decoder(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
        picked = hidden[torch.tensor(rows, device=device), torch.tensor(columns, device=device)]
        _, _, means = logprob_gather(
            picked.to(weight.dtype),
            weight,
            torch.tensor(targets, device=device),
            cu_seqlens=torch.tensor(bounds, device=device),
        )
        scores += means.tolist()
    return scores


def select(candidates: Sequence[tuple[float, str]], per_problem: int) -> list[int]:
    """Indices of the kept candidates ``(score, rationale text)``: easiest first, near-duplicates
    of a kept one skipped, at most ``per_problem``."""
    kept: list[int] = []
    for index in sorted(range(len(candidates)), key=lambda i: -candidates[i][0]):
        if len(kept) == per_problem:
            break
        if any(near_duplicate(candidates[index][1], candidates[k][1]) for k in kept):
            continue
        kept.append(index)
    return kept


def morsd_rows(
    rows: Sequence[dict], task, model, tokenizer, prompt_format: PromptFormat, per_problem: int
) -> list[dict]:
    """One training row per kept rationale (the ``"morsd"`` rule of ``distill.training_rows``'s
    kind): each problem's correct trajectories ranked by ``answer_logprobs``, ``select``-ed."""
    candidates = []  # (row, trajectory index, text)
    for row in rows:
        for i, trajectory in enumerate(row.get("trajectories") or []):
            if task.is_correct(trajectory["text"], row):
                candidates.append((row, i, trajectory["text"]))
    prompts = [
        prompt_format.encode(tokenizer, task.prompt(row), task.user_message(row)) for row, _, _ in candidates
    ]
    scores = answer_logprobs(model, tokenizer, prompts, [text for _, _, text in candidates])
    by_problem: dict[int, list[int]] = {}
    for c, (row, _, _) in enumerate(candidates):
        by_problem.setdefault(id(row), []).append(c)
    kept_rows = []
    for row in rows:
        mine = by_problem.get(id(row), [])
        chosen = select([(scores[c], split_answer(candidates[c][2])[0]) for c in mine], per_problem)
        for k in chosen:
            _, i, _ = candidates[mine[k]]
            kept_rows.append({**trajectory_row(row, i, task), "rationale_score": scores[mine[k]]})
    return kept_rows
