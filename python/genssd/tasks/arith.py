"""``arith``: synthetic multi-step arithmetic with step-by-step solutions (docs/design.md §5).

A problem is a chain of additions and subtractions evaluated left to right,
``What is 7 - 1 + 6 - 5 - 3?``. A solution rewrites the expression line by line, carrying out
one or more operations per line, and ends in ``#### <n>`` like GSM8K, so the same strict
extraction checks it exactly. Two styles:

- ``fine``: one operation per line::

      = 6 + 6 - 5 - 3
      = 12 - 5 - 3
      = 7 - 3
      = 4
      #### 4

- ``leap``: every line carries out two or more operations (``= 12 - 5 - 3`` / ``= 4``), up
  to ``max_leap`` of them (with no cap, up to jumping straight to the answer, ``= 4``);

and ``mixed``, which decides line by line. A teacher trained on both styles samples both; a
tiny student learns the one-operation lines (copying the rest of the line and one small sum)
but not the multi-operation ones (mental arithmetic over several operands), which is what
makes student-likelihood selection worth something on this task.

Rows are dicts with ``uid``, ``question``, ``answer`` (the fine-style gold solution) and the
structured problem, ``numbers`` and ``ops``, from which any style can be re-rendered.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from genssd.errors import UsageError
from genssd.tasks import Task
from genssd.tasks.gsm8k import extract_strict

STYLES = ("fine", "leap", "mixed")
SPLITS = ("train", "test")
OPS = ("+", "-")

_OPERATOR_RE = re.compile(r" [+-] ")


def _apply(value: int, op: str, operand: int) -> int:
    return value + operand if op == "+" else value - operand


def evaluate(numbers: Sequence[int], ops: Sequence[str]) -> int:
    """The value of ``numbers[0] ops[0] numbers[1] ...`` evaluated left to right."""
    value = numbers[0]
    for op, operand in zip(ops, numbers[1:]):
        value = _apply(value, op, operand)
    return value


def _expression(numbers: Sequence[int], ops: Sequence[str]) -> str:
    parts = [str(numbers[0])]
    for op, operand in zip(ops, numbers[1:]):
        parts += [op, str(operand)]
    return " ".join(parts)


def problem_split(question: str) -> str:
    """``"test"`` for one question in ten (a fixed hash, the same on every machine), else ``"train"``."""
    return (
        "test"
        if int.from_bytes(hashlib.sha256(question.encode("utf-8")).digest()[:8], "big") % 10 == 0
        else "train"
    )


def generate_problems(
    n: int,
    seed: int,
    *,
    num_operands: tuple[int, int] = (3, 5),
    max_operand: int = 9,
    max_value: int = 30,
    uid_prefix: str = "arith",
    split: str | None = None,
    exclude: Iterable[str] = (),
) -> list[dict]:
    """``n`` distinct problems, the same for the same arguments.

    The defaults are the embedded demo's setting, sized so that a tiny student learns the
    one-operation steps but not the leaps.

    Args:
        n: number of problems.
        seed: seed of the generator (``random.Random``, so identical across platforms).
        num_operands: inclusive range of the number of operands per problem (>= 2).
        max_operand: operands are drawn from ``1..max_operand``.
        max_value: every running total stays in ``0..max_value`` (an operation that would
            leave it is flipped to the other one), so no step needs negative numbers.
        uid_prefix: uids are ``f"{uid_prefix}-{seed}-{i}"``.
        split: ``"train"`` or ``"test"`` keeps only problems of that partition (a fixed hash
            of the question puts one problem in ten in ``test``), so a model trained on
            ``train`` problems is evaluated on problems it never saw, whatever the seeds and
            sizes, with the same mix of lengths; None draws from both.
        exclude: questions never to return (another split's), for splits of a given size.
    """
    lo, hi = num_operands
    if not 2 <= lo <= hi:
        raise UsageError(f"num_operands must be a range (lo, hi) with 2 <= lo <= hi, got {num_operands}")
    if max_operand < 1 or max_value < 2 * max_operand:
        # With max_value >= 2 * max_operand, + or - always keeps the running total in range.
        raise UsageError(
            f"need max_operand >= 1 and max_value >= 2 * max_operand, got {max_operand} and {max_value}"
        )
    if split not in (None, *SPLITS):
        raise UsageError(f"split must be one of {SPLITS} or None, got {split!r}")

    rng = random.Random(seed)
    rows, seen = [], set(exclude)
    attempts_left = 100 * n + 1000  # duplicates are redrawn; a space too small must not hang
    while len(rows) < n:
        attempts_left -= 1
        if attempts_left < 0:
            raise UsageError(f"could not draw {n} distinct problems with these settings; widen the ranges")
        numbers = [rng.randint(1, max_operand)]
        ops: list[str] = []
        value = numbers[0]
        for _ in range(rng.randint(lo, hi) - 1):
            operand = rng.randint(1, max_operand)
            op = rng.choice(OPS)
            if not 0 <= _apply(value, op, operand) <= max_value:
                op = "-" if op == "+" else "+"
            value = _apply(value, op, operand)
            numbers.append(operand)
            ops.append(op)
        question = f"What is {_expression(numbers, ops)}?"
        if question in seen or (split is not None and problem_split(question) != split):
            continue
        seen.add(question)
        rows.append(
            {
                "uid": f"{uid_prefix}-{seed}-{len(rows)}",
                "question": question,
                "answer": render_solution(numbers, ops, "fine"),
                "numbers": numbers,
                "ops": ops,
            }
        )
    return rows


def _line_sizes(
    num_ops: int, style: str, rng: random.Random, leap_prob: float, max_leap: int | None
) -> list[int]:
    """How many operations each solution line carries out; the sizes sum to ``num_ops``."""
    if style not in STYLES:
        raise UsageError(f"unknown solution style {style!r}; expected one of {STYLES}")
    cap = num_ops if max_leap is None else max_leap
    sizes, left = [], num_ops
    while left:
        leap = left >= 2 and (style == "leap" or (style == "mixed" and rng.random() < leap_prob))
        size = rng.randint(2, min(left, cap)) if leap else 1
        if style == "leap" and left - size == 1 and size < cap:
            size += 1  # never strand a lone last operation when the leap can take it
        sizes.append(size)
        left -= size
    return sizes


def render_solution(
    numbers: Sequence[int],
    ops: Sequence[str],
    style: str = "fine",
    rng: random.Random | None = None,
    leap_prob: float = 0.5,
    max_leap: int | None = 2,
) -> str:
    """A step-by-step solution: one ``= <the rest of the expression>`` line per step, then
    ``#### <answer>``.

    Args:
        numbers, ops: the problem (``len(numbers) == len(ops) + 1``).
        style: ``fine`` (one operation a line), ``leap`` (every line 2..``max_leap``
            operations; a lone last operation, when the cap leaves one, stands on its own line)
            or ``mixed`` (each line a leap with probability ``leap_prob`` where 2+ operations
            remain, else one operation).
        rng: draws the leap sizes and mixed choices (``random.Random(0)`` when omitted);
            ``fine`` uses none.
        max_leap: the most operations one line may carry out (None: up to all that remain,
            i.e. jumping straight to the answer). Small caps keep leaps learnable for a
            teacher while still beyond a tiny student.
    """
    if len(numbers) != len(ops) + 1 or not ops:
        raise UsageError(
            f"a problem needs len(numbers) == len(ops) + 1 >= 2, got {len(numbers)} and {len(ops)}"
        )
    if max_leap is not None and max_leap < 2:
        raise UsageError(f"max_leap must be >= 2 or None, got {max_leap}")
    rng = rng if rng is not None else random.Random(0)
    lines, value, done = [], numbers[0], 0
    for size in _line_sizes(len(ops), style, rng, leap_prob, max_leap):
        value = evaluate([value, *numbers[done + 1 : done + 1 + size]], ops[done : done + size])
        done += size
        lines.append(f"= {_expression([value, *numbers[done + 1 :]], ops[done:])}")
    # The answer line repeats the last result. It is its own line (its own search chunk) on
    # purpose: were "#### n" the last step itself, a leap to the answer would be scored mostly
    # on the four predictable "#" and so look likelier to the student than a fine step.
    lines.append(f"#### {value}")
    return "\n".join(lines)


def line_operation_counts(solution: str, num_ops: int) -> list[int]:
    """How many operations each step line of a solution carries out.

    ``num_ops`` is the problem's operation count. A ``= ...`` line's count is the drop in the
    number of operators from the line before (the question's expression for the first line). A
    ``#### n`` line counts only when operations remain (a model that jumped to the answer): it
    carries out all of them. Lines after it are ignored.
    """
    counts, left = [], num_ops
    for line in solution.splitlines():
        if line.startswith("####"):
            if left:
                counts.append(left)
            break
        if line.startswith("= "):
            now = len(_OPERATOR_RE.findall(line))
            counts.append(left - now)
            left = now
    return counts


def write_problems(path: str | Path, rows: Iterable[dict]) -> None:
    """Write rows as JSONL, one per line (parent directories are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


# Few-shot examples: fine-style solutions of four fixed problems, all of the train partition
# (``problem_split``), so none is ever a held-out question.
_SHOT_PROBLEMS = (
    ([5, 3, 2], ["+", "-"]),
    ([9, 4, 6, 1], ["-", "+", "+"]),
    ([2, 7, 3, 5], ["+", "+", "-"]),
    ([8, 6, 9, 2, 4], ["+", "-", "+", "-"]),
)
FEW_SHOT_EXAMPLES = tuple(
    {"question": f"What is {_expression(numbers, ops)}?", "answer": render_solution(numbers, ops, "fine")}
    for numbers, ops in _SHOT_PROBLEMS
)


class ArithTask(Task):
    """The ``arith`` task: the final answer is the integer after ``####``, checked exactly."""

    name = "arith"
    stop_strings = ("\nQ:",)
    few_shot_examples = FEW_SHOT_EXAMPLES

    def prompt(self, row: dict) -> str:
        """``Q: <question>`` / ``A:``; the solution starts on the next line. Shorter than the
        default prompt because on CPU every prompt token costs the small demo models time."""
        return f"Q: {row['question']}\nA:\n"

    def extract_answer(self, text: str) -> str | None:
        """The number after the first ``####`` (no last-number fallback: the format is exact)."""
        return extract_strict(text)
