"""Accuracy of a model on a task split: batched generation, answer extraction, scoring.

``evaluate`` generates (greedy for pass@1, or ``num_samples`` samples per problem at a
temperature) and scores with the task's checker; ``score_predictions`` scores given texts the
same way, so a file of predictions (or a search output) can be rescored without a model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from genssd.config import EvalConfig
from genssd.engine import resolve_engine
from genssd.engine.decode import StaticTeacherSampler
from genssd.engine.runners import left_pad
from genssd.errors import UsageError
from genssd.models import eos_token_ids, pad_token_id
from genssd.prompts import PromptFormat
from genssd.sampling import combine, text_key
from genssd.tasks import read_rows


def _until_eos(ids: list[int], eos_ids: set[int]) -> list[int]:
    for i, token in enumerate(ids):
        if token in eos_ids:
            return ids[:i]
    return ids


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    config: EvalConfig,
    *,
    messages: Sequence[str] | None = None,
    prompt_format: PromptFormat | None = None,
    progress: bool = False,
) -> list[list[str]]:
    """``config.num_samples`` completions of each prompt (greedy when ``temperature == 0``).

    A model whose tokenizer has a chat template is prompted with the user turn ``messages[i]``
    (default: the prompt) under it, unless ``config.chat_template == "none"`` (``genssd.prompts``);
    ``prompt_format`` (default ``config.prompt_format``) renders them, e.g. with a task's few-shot
    examples (``config.prompt_format_for(task)``).
    Prompts are batched ``config.batch_size`` at a time, longest first so a batch holds similar
    lengths. Returns, per prompt in the given order, the decoded texts of the new tokens up to
    (not including) the first EOS. ``config.engine`` picks how (see ``EvalConfig``).
    """
    eos_ids = set(eos_token_ids(model, tokenizer, required=True))
    engine, _ = resolve_engine(model, config.engine, "model")
    messages = prompts if messages is None else messages
    fmt = prompt_format if prompt_format is not None else config.prompt_format
    encoded = [fmt.encode(tokenizer, p, m) for p, m in zip(prompts, messages)]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    batches = [order[start : start + config.batch_size] for start in range(0, len(order), config.batch_size)]
    results: list[list[str]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    run_batch = (
        _static_batches(model, tokenizer, prompts, encoded, config)
        if engine == "static"
        else (_hf_batches(model, tokenizer, encoded, config, sorted(eos_ids)))
    )
    with tqdm(
        total=len(prompts), desc="eval", unit="problem", dynamic_ncols=True, disable=not progress
    ) as bar:
        for batch in batches:
            for j, ids in enumerate(run_batch(batch)):
                text = tokenizer.decode(_until_eos(ids, eos_ids), skip_special_tokens=True)
                results[batch[j // config.num_samples]].append(text)
            bar.update(len(batch))
    model.train(was_training)
    return results


def _static_batches(model, tokenizer, prompts, encoded, config: EvalConfig):
    """Generation of a batch through the static engine: ``[B * num_samples]`` lists of new ids."""
    sampler = StaticTeacherSampler(
        model, tokenizer, temperature=config.temperature, top_p=config.top_p, step_delimiter=None
    )
    samples = config.num_samples

    def run(batch: list[int]) -> list[list[int]]:
        ids = [encoded[i] for i in batch]
        rows = len(batch) * samples
        sampler.start(ids, rows=rows, columns=max(map(len, ids)) + config.max_new_tokens + 1)
        parent = torch.arange(len(batch), device=sampler.device).repeat_interleave(samples)
        keys = torch.tensor(
            [combine(config.seed, text_key(prompts[i]), j) for i in batch for j in range(samples)],
            dtype=torch.long,
            device=sampler.device,
        )
        chunk = sampler.propose(parent, keys, [config.max_new_tokens] * rows, [True] * rows)
        lengths = chunk.lengths.tolist()
        return [row[:n] for row, n in zip(chunk.ids.tolist(), lengths)]

    return run


def _hf_batches(model, tokenizer, encoded, config: EvalConfig, eos_ids: list[int]):
    """Generation of a batch with ``model.generate`` (left-padded): ``[B * num_samples]`` id lists."""
    from transformers import GenerationConfig  # heavy: imported on first use (genssd.models)

    pad_id = pad_token_id(tokenizer, eos_ids)
    sampling = config.temperature > 0
    generation_config = GenerationConfig(
        max_new_tokens=config.max_new_tokens,
        do_sample=sampling,
        temperature=config.temperature if sampling else None,
        top_p=config.top_p if sampling else None,
        top_k=None,
        num_return_sequences=config.num_samples,
        pad_token_id=pad_id,
        eos_token_id=eos_ids,
    )
    device = next(model.parameters()).device
    torch.manual_seed(config.seed)

    def run(batch: list[int]) -> list[list[int]]:
        # Left padding: every prompt ends at the last column, where generation continues.
        input_ids, valid = left_pad([encoded[i] for i in batch], pad_id, device)
        out = model.generate(
            input_ids=input_ids, attention_mask=valid.long(), generation_config=generation_config
        )
        return out[:, input_ids.shape[1] :].tolist()

    return run


def score_predictions(task, rows: Sequence[dict], predictions: Sequence[str | Sequence[str]]) -> dict:
    """Score prediction texts against the rows' gold answers.

    Args:
        task: a task from ``genssd.tasks.get_task``.
        rows: the problems (as ``task.load`` returns them).
        predictions: per row, one text or a list of sampled texts (the same count for every row).

    Returns:
        ``{"task", "problems", "num_samples", "accuracy", "pass@<n>", "correct", "records"}``:
        ``accuracy`` is the mean over all samples (pass@1 for one sample per problem),
        ``pass@<n>`` the share of problems with at least one correct sample, ``correct`` the
        number of correct samples, and ``records`` one dict per problem (``uid``,
        ``question``, ``gold_answer``, ``predictions``, ``predicted_answers``, ``correct``).
    """
    if len(predictions) != len(rows):
        raise UsageError(f"{len(predictions)} predictions for {len(rows)} problems")
    if not rows:
        raise UsageError("no problems to score")
    samples = [[p] if isinstance(p, str) else list(p) for p in predictions]
    num_samples = len(samples[0])
    if num_samples == 0 or any(len(s) != num_samples for s in samples):
        raise UsageError("every problem needs the same number (>= 1) of predictions")
    records, correct, solved = [], 0, 0
    for row, texts in zip(rows, samples):
        verdicts = [bool(task.is_correct(text, row)) for text in texts]
        correct += sum(verdicts)
        solved += any(verdicts)
        records.append(
            {
                "uid": row.get("uid"),
                "question": row.get("question"),
                "gold_answer": task.gold_answer(row),
                "predictions": texts,
                "predicted_answers": [task.extract_answer(text) for text in texts],
                "correct": verdicts,
            }
        )
    return {
        "task": task.name,
        "problems": len(rows),
        "num_samples": num_samples,
        "accuracy": correct / (len(rows) * num_samples),
        f"pass@{num_samples}": solved / len(rows),
        "correct": correct,
        "records": records,
    }


def evaluate(
    model, tokenizer, task, rows: Sequence[dict], config: EvalConfig | None = None, *, progress: bool = True
) -> dict:
    """Generate answers to ``rows`` with ``model`` and score them; see :func:`score_predictions`."""
    config = config or EvalConfig()
    if not rows:
        raise UsageError("no problems to evaluate")
    prompts, messages = [task.prompt(row) for row in rows], [task.user_message(row) for row in rows]
    fmt = config.prompt_format_for(task)
    texts = generate(
        model, tokenizer, prompts, config, messages=messages, prompt_format=fmt, progress=progress
    )
    return score_predictions(task, rows, texts)


def read_predictions(path: str | Path, rows: Sequence[dict]) -> list[list[str]]:
    """Prediction texts for ``rows`` from a JSONL file, matched by ``uid`` (else by line order).

    A line may hold ``predictions`` (list of texts, as ``genssd eval --out`` writes),
    ``prediction`` (one text), or ``trajectories`` (a ``genssd search`` output row).
    """

    def texts_of(line: dict, where: str) -> list[str]:
        if isinstance(line.get("predictions"), list):
            texts = line["predictions"]
        elif isinstance(line.get("prediction"), str):
            texts = [line["prediction"]]
        elif isinstance(line.get("trajectories"), list) and line["trajectories"]:
            texts = [t.get("text") if isinstance(t, dict) else None for t in line["trajectories"]]
        else:
            raise UsageError(f"{where}: needs 'predictions', 'prediction' or 'trajectories'")
        if not texts or not all(isinstance(t, str) for t in texts):
            raise UsageError(f"{where}: predictions must be strings")
        return texts

    lines = read_rows(path)
    if all("uid" in line for _, line in lines) and all("uid" in row for row in rows):
        by_uid = {str(line["uid"]): texts_of(line, f"{path}:{n}") for n, line in lines}
        missing = [str(row["uid"]) for row in rows if str(row["uid"]) not in by_uid]
        if missing:
            raise UsageError(
                f"{path} has no prediction for {len(missing)} problem(s), e.g. uid {missing[0]!r}"
            )
        return [by_uid[str(row["uid"])] for row in rows]
    if len(lines) < len(rows):
        raise UsageError(
            f"{path} has {len(lines)} predictions for {len(rows)} problems (and no uids to match them)"
        )
    return [texts_of(line, f"{path}:{n}") for n, line in lines[: len(rows)]]


def write_records(path: str | Path, records: Sequence[dict]) -> None:
    """Write per-problem records as JSONL (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def summary_line(result: dict) -> str:
    """One printable line: accuracy, and pass@n with several samples."""
    n = result["num_samples"]
    total = result["problems"] * n
    if n == 1:
        return f"{result['task']}: accuracy {result['accuracy']:.4f} ({result['correct']}/{total}) pass@1"
    return (
        f"{result['task']}: mean accuracy {result['accuracy']:.4f} over {n} samples "
        f"({result['correct']}/{total}), "
        f"pass@{n} {result[f'pass@{n}']:.4f} ({result['problems']} problems)"
    )


__all__ = ["evaluate", "generate", "read_predictions", "score_predictions", "summary_line", "write_records"]
