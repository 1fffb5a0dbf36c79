"""Searching a task's problems into a resumable JSONL file: the one loop under ``genssd search``
and the pipeline's search stage (docs/design.md §4).

Rows are written one at a time and flushed, keyed by ``uid``; a rerun with the same file and
config skips the problems already there. An optional teacher-token budget stops the loop once
the file holds that many.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from genssd.config import SearchConfig, config_hash
from genssd.data import RowWriter, read_output, resume_state
from genssd.search import Searcher, SearchResult


def output_row(row: dict, result: SearchResult, task, config: SearchConfig, hash_: str) -> dict:
    """One output row: the input fields, the run's identity, the search result, the grade."""
    best = result.best
    predicted = task.extract_answer(best.text) if best is not None else None
    correct = bool(best is not None and task.is_correct(best.text, row))
    head = {"uid": row["uid"], "question": row["question"], "answer": row["answer"]}
    return {
        **head,
        **{k: v for k, v in row.items() if k not in head},
        "method": config.method,
        "config_hash": hash_,
        "seed": config.seed,
        **result.to_dict(),
        "predicted_answer": predicted,
        "correct": correct,
    }


def search_to_file(
    path: str | Path,
    make_searcher: Callable[[SearchConfig], Searcher],
    task,
    rows: Sequence[dict],
    config: SearchConfig,
    *,
    budget: int | None = None,
    progress: bool = True,
) -> tuple[int, int]:
    """Search the problems of ``rows`` not yet in ``path``; the rows written, and the rows of
    ``rows`` that were already there.

    Args:
        make_searcher: builds the searcher for the final config (called only when there is work,
            so models are not loaded for a finished file).
        config: the search settings; the task's stop strings fill in ``stop_strings`` when unset.
        budget: stop once the file's rows hold this many teacher tokens (None: every row).
    """
    config = config.for_task(task)
    hash_ = config_hash(config)
    done = resume_state(path, hash_)
    spent = sum(int(r["teacher_tokens"]) for r in read_output(path))
    todo = [row for row in rows if str(row["uid"]) not in done]
    already = len(rows) - len(todo)
    if not todo or (budget is not None and spent >= budget):
        return 0, already
    # Before any model loads: a task or file with too few few-shot examples fails here.
    prompt_format = config.prompt_format_for(task)
    searcher = make_searcher(config)
    if progress:
        print(f"engines: {searcher.engine_line}", file=sys.stderr)
    results = searcher.iter_results(
        [task.prompt(row) for row in todo],
        uids=[str(row["uid"]) for row in todo],
        messages=[task.user_message(row) for row in todo],
        prompt_format=prompt_format,
        progress=progress,
    )
    written = 0
    with RowWriter(path) as writer:
        for row, result in zip(todo, results):
            writer.write(output_row(row, result, task, config, hash_))
            written += 1
            spent += result.teacher_tokens
            if budget is not None and spent >= budget:
                break
    return written, already


__all__ = ["output_row", "search_to_file"]
