"""Reasoning tasks: loading, prompts, answer extraction and checking.

``get_task(name)`` returns an object with

- ``name``;
- ``load(path) -> list[dict]``: rows with a non-empty ``question``, the gold solution text in
  ``answer`` and a stable ``uid`` (the file's own, else one derived from the question);
- ``prompt(row) -> str``: the text the model continues;
- ``user_message(row) -> str``: the user's turn under a chat template;
- ``few_shot_examples``: worked examples (``question``, ``answer`` in the task's format) that
  ``few_shot: k`` puts before a question (``genssd.prompts``);
- ``extract_answer(text) -> str | None``: the final answer a solution text states;
- ``gold_answer(row) -> str``: the final answer of the row's gold solution;
- ``is_correct(text, row) -> bool``.

Task modules are imported on first use, so one task's dependencies (math-verify for ``math``)
are only needed by those who use it.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path

from genssd.errors import UsageError

# name -> (module, class, constructor keyword arguments)
_TASKS: dict[str, tuple[str, str, dict]] = {
    "gsm8k": ("genssd.tasks.gsm8k", "GSM8KTask", {}),
    "gsm8k-strict": ("genssd.tasks.gsm8k", "GSM8KTask", {"strict": True}),
    "math": ("genssd.tasks.math", "MathTask", {}),
    "arith": ("genssd.tasks.arith", "ArithTask", {}),
    "ledger": ("genssd.tasks.ledger", "LedgerTask", {}),
}

TASK_NAMES = tuple(_TASKS)


def get_task(name: str):
    """The task called ``name`` (one of ``TASK_NAMES``)."""
    if name not in _TASKS:
        raise UsageError(f"unknown task {name!r}; choose one of {', '.join(TASK_NAMES)}")
    module, cls, kwargs = _TASKS[name]
    return getattr(importlib.import_module(module), cls)(**kwargs)


def question_uid(question: str) -> str:
    """A uid derived from the question text alone, so it survives reordering and sharding."""
    return hashlib.sha256(question.encode("utf-8")).hexdigest()[:16]


def read_rows(path: str | Path) -> list[tuple[int, dict]]:
    """``(line number, row)`` for each JSON object of a JSONL file (blank lines skipped).

    Raises ``UsageError`` for a missing file, a line that is not a JSON object, or no rows.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"data file not found: {path}")
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UsageError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise UsageError(
                    f"{path}:{lineno}: each line must be a JSON object, got {type(row).__name__}"
                )
            rows.append((lineno, row))
    if not rows:
        raise UsageError(f"{path}: no rows (the file is empty)")
    return rows


class Task:
    """Shared loading and checking; subclasses define prompts and answer extraction.

    Subclasses may list field aliases: the first of ``question_fields`` present becomes
    ``question`` and the first of ``answer_fields`` becomes ``answer``.
    """

    name = ""
    # A base model that goes on past its answer starts the next few-shot item; the search cuts
    # its text there (as lm-eval's "until" does).
    stop_strings: tuple[str, ...] = ("\nQuestion:",)
    question_fields: tuple[str, ...] = ("question",)
    answer_fields: tuple[str, ...] = ("answer",)
    # Solved problems for few-shot prompts, in the order ``few_shot: k`` takes them.
    few_shot_examples: tuple[dict, ...] = ()

    def load(self, path: str | Path) -> list[dict]:
        """Rows of a JSONL file with ``question``, ``answer`` (gold solution text) and ``uid``.

        A row without a ``uid`` gets :func:`question_uid`; a repeated question gets ``-1``,
        ``-2``, ... appended in file order so every uid is unique.
        """
        rows, seen = [], set()
        for lineno, raw in read_rows(path):
            row = self.normalize(raw, where=f"{path}:{lineno}")
            if "uid" not in row:
                base = uid = question_uid(row["question"])
                copies = 0
                while uid in seen:
                    copies += 1
                    uid = f"{base}-{copies}"
                row["uid"] = uid
            row["uid"] = str(row["uid"])
            if row["uid"] in seen:
                raise UsageError(f"{path}:{lineno}: duplicate uid {row['uid']!r}")
            seen.add(row["uid"])
            rows.append(row)
        return rows

    def normalize(self, raw: dict, where: str = "row") -> dict:
        """A copy of ``raw`` with ``question`` and ``answer`` filled from their aliases and checked."""
        row = dict(raw)
        for key, aliases in (("question", self.question_fields), ("answer", self.answer_fields)):
            value = next((row[f] for f in aliases if f in row), None)
            if not isinstance(value, str) or not value.strip():
                names = " or ".join(repr(f) for f in aliases)
                raise UsageError(f"{where}: a {self.name} row needs a non-empty string {names}")
            row[key] = value
        if self.gold_answer(row) is None:
            raise UsageError(f"{where}: no final answer found in the gold solution {row['answer'][-80:]!r}")
        return row

    def prompt(self, row: dict) -> str:
        """The text the model continues; the solution starts on the line after it."""
        return f"Question: {row['question']}\nAnswer:\n"

    def user_message(self, row: dict) -> str:
        """The user's turn when the model is prompted through its chat template (``genssd.prompts``)."""
        return row["question"]

    def extract_answer(self, text: str) -> str | None:
        raise NotImplementedError

    def gold_answer(self, row: dict) -> str | None:
        """The final answer stated by the row's gold solution."""
        return self.extract_answer(row["answer"])

    def answers_match(self, predicted: str, gold: str) -> bool:
        """Whether two extracted answers are the same (exact string match unless overridden)."""
        return predicted == gold

    def is_correct(self, text: str, row: dict) -> bool:
        """Whether the answer ``text`` states matches the row's gold answer."""
        predicted = self.extract_answer(text)
        gold = self.gold_answer(row)
        return predicted is not None and gold is not None and self.answers_match(predicted, gold)


__all__ = ["TASK_NAMES", "Task", "get_task", "question_uid", "read_rows"]
