"""Search outputs as training datasets other tools read: ``datasets.load_dataset("json", ...)`` and
TRL's ``SFTTrainer`` (prompt-completion rows train on the completion only; conversational
``messages`` rows go through the tokenizer's chat template).

One record per kept trajectory. Rows keep their provenance as columns: ``uid``, ``method``,
``config_hash``, the trajectory's ``rank`` (0 = the student's likeliest), ``student_score`` and
whether its answer is ``correct``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from genssd.data import write_jsonl
from genssd.errors import UsageError

FORMATS = ("prompt-completion", "messages")


@dataclass
class ExportConfig:
    """``genssd export``'s settings (its ``--config`` / ``--set`` keys): the record ``format`` and
    which trajectories are kept (``export_records``' arguments)."""

    format: str = "prompt-completion"
    only_correct: bool = False
    top_m: int | None = None

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise UsageError(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if not isinstance(self.only_correct, bool):
            raise UsageError(f"only_correct takes true or false, got {self.only_correct!r}")
        if self.top_m is not None and (isinstance(self.top_m, bool) or not isinstance(self.top_m, int)):
            raise UsageError(f"top_m must be an integer or null, got {self.top_m!r}")
        if self.top_m is not None and self.top_m < 1:
            raise UsageError(f"top_m must be >= 1, got {self.top_m}")


def export_records(
    rows: Iterable[dict], task, *, format: str = "prompt-completion", only_correct: bool = False, top_m=None
) -> list[dict]:
    """Dataset records of search output rows.

    Args:
        rows: search output rows (``genssd search`` / ``distill``), trajectories best first.
        task: the task the rows were searched on (prompts and answer checking).
        format: ``"prompt-completion"`` (``prompt``/``completion`` text) or ``"messages"``
            (a user turn with the question, an assistant turn with the trajectory).
        only_correct: keep only trajectories whose answer the task grades correct.
        top_m: keep at most this many trajectories a problem (after the correctness filter).
    """
    if format not in FORMATS:
        raise UsageError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if top_m is not None and top_m < 1:
        raise UsageError(f"top_m must be >= 1, got {top_m}")
    records = []
    for row in rows:
        kept = 0
        for rank, trajectory in enumerate(row.get("trajectories") or []):
            text = trajectory["text"]
            correct = bool(task.is_correct(text, row))
            if (only_correct and not correct) or (top_m is not None and kept >= top_m):
                continue
            kept += 1
            if format == "prompt-completion":
                body = {"prompt": task.prompt(row), "completion": text}
            else:
                body = {
                    "messages": [
                        {"role": "user", "content": row["question"]},
                        {"role": "assistant", "content": text},
                    ]
                }
            records.append(
                {
                    **body,
                    "uid": str(row["uid"]),
                    "method": row.get("method"),
                    "config_hash": row.get("config_hash"),
                    "rank": rank,
                    "student_score": trajectory.get("student_score"),
                    "correct": correct,
                }
            )
    return records


def write_dataset(out_dir: str | Path, records: list[dict]) -> Path:
    """Write ``records`` as ``out_dir/train.jsonl`` (complete or not at all); its path."""
    return write_jsonl(Path(out_dir) / "train.jsonl", records)


__all__ = ["ExportConfig", "FORMATS", "export_records", "write_dataset"]
