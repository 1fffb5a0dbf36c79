"""``ledger``: short word problems about a running count, with several valid solution paths.

A problem is a story: someone starts with a number of things, then events change the count (a
purchase of ``a`` bags of ``b``, getting, giving away or losing some), and the question asks for
the count at the end::

    Q: Ann has 7 pens. Ann buys 3 bags of 4. Ann gives away 5. Ann gets 2. How many pens now?

Unlike ``arith``, the numbers must be read out of sentences, a purchase is a product, and the
steps can come in different orders. Solutions end in ``#### <n>`` like GSM8K. Three ways to
solve, the styles:

- ``fine``: in story order, one operation a line (a purchase takes two: the product, then the
  sum)::

      3 * 4 = 12
      7 + 12 = 19
      19 - 5 = 14
      14 + 2 = 16
      #### 16

- ``leap``: in story order, every line carries out two or more operations
  (``7 + 3 * 4 - 5 = 14`` / ``14 + 2 = 16``), up to ``max_leap`` of them;
- ``grouped``: one operation a line, but gains first, then losses (``3 * 4 = 12``,
  ``12 + 2 = 14``, ``7 + 14 = 21``, ``21 - 5 = 16``): as fine-grained as ``fine``, yet the
  student must collect the numbers from across the story;

and ``mixed``, which draws the grouped path for a third of the problems and otherwise decides
line by line between a fine step and a leap. A teacher trained on the mixed style samples all
three; a tiny student learns the one-operation lines, not the leaps.

Rows are dicts with ``uid``, ``question``, ``answer`` (the fine-style gold solution), ``name``,
``item``, ``start``, ``events`` (``[kind, a, b]``; ``b`` is the bag size of a ``buy``, else 0)
and the story as one expression, ``numbers`` and ``ops`` (``"+"``, ``"-"``, ``"*"``), so that
``len(row["ops"])`` counts its operations as in ``arith``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence

from genssd.errors import UsageError
from genssd.tasks import Task
from genssd.tasks.arith import SPLITS, problem_split, write_problems
from genssd.tasks.gsm8k import extract_strict

STYLES = ("fine", "leap", "grouped", "mixed")
NAMES = ("Ann", "Ben", "Cal", "Dot")
ITEMS = ("pens", "cards", "eggs", "coins")
KINDS = ("buy", "get", "give", "lose")
GAINS = ("buy", "get")

_OPERATOR_RE = re.compile(r" [+*-] ")


def event_change(kind: str, a: int, b: int) -> int:
    """The change an event makes to the count."""
    if kind == "buy":
        return a * b
    return a if kind == "get" else -a


def _sentence(name: str, kind: str, a: int, b: int) -> str:
    return {
        "buy": f"{name} buys {a} bags of {b}.",
        "get": f"{name} gets {a}.",
        "give": f"{name} gives away {a}.",
        "lose": f"{name} loses {a}.",
    }[kind]


def _expression(start: int, events: Sequence[Sequence[int]]) -> tuple[list[int], list[str]]:
    """The story as ``numbers`` and ``ops`` of one expression (``7 + 3 * 4 - 5``)."""
    numbers, ops = [start], []
    for kind, a, b in events:
        if kind == "buy":
            numbers += [a, b]
            ops += ["+", "*"]
        else:
            numbers.append(a)
            ops.append("+" if kind == "get" else "-")
    return numbers, ops


def generate_problems(
    n: int,
    seed: int,
    *,
    num_events: tuple[int, int] = (2, 4),
    max_value: int = 40,
    uid_prefix: str = "ledger",
    split: str | None = None,
    exclude: Iterable[str] = (),
) -> list[dict]:
    """``n`` distinct problems, the same for the same arguments.

    Args:
        n: number of problems.
        seed: seed of the generator (``random.Random``, identical across platforms).
        num_events: inclusive range of the number of events per story (>= 1).
        max_value: the count stays in ``0..max_value``: an event that would leave the range is
            redrawn as a ``get`` or a ``give`` of a size that keeps it inside.
        uid_prefix: uids are ``f"{uid_prefix}-{seed}-{i}"``.
        split: ``"train"`` or ``"test"`` keeps only problems of that partition (the same fixed
            hash of the question as ``arith``); None draws from both.
        exclude: questions never to return (another split's).
    """
    lo, hi = num_events
    if not 1 <= lo <= hi:
        raise UsageError(f"num_events must be a range (lo, hi) with 1 <= lo <= hi, got {num_events}")
    if max_value < 20:
        raise UsageError(f"max_value must be >= 20 (a purchase adds up to 15), got {max_value}")
    if split not in (None, *SPLITS):
        raise UsageError(f"split must be one of {SPLITS} or None, got {split!r}")
    rng = random.Random(seed)
    rows, seen = [], set(exclude)
    attempts_left = 100 * n + 1000
    while len(rows) < n:
        attempts_left -= 1
        if attempts_left < 0:
            raise UsageError(f"could not draw {n} distinct problems with these settings; widen the ranges")
        name, item = rng.choice(NAMES), rng.choice(ITEMS)
        start = rng.randint(2, 9)  # "has 1 coins" would be bad grammar
        value, events = start, []
        for _ in range(rng.randint(lo, hi)):
            kind = rng.choice(KINDS)
            a, b = (rng.randint(2, 3), rng.randint(2, 5)) if kind == "buy" else (rng.randint(1, 9), 0)
            if not 0 <= value + event_change(kind, a, b) <= max_value:
                kind, b = ("give", 0) if value > max_value // 2 else ("get", 0)
                a = rng.randint(1, min(9, value)) if kind == "give" else rng.randint(1, 9)
            value += event_change(kind, a, b)
            events.append([kind, a, b])
        story = " ".join(_sentence(name, *event) for event in events)
        question = f"{name} has {start} {item}. {story} How many {item} now?"
        if question in seen or (split is not None and problem_split(question) != split):
            continue
        seen.add(question)
        numbers, ops = _expression(start, events)
        row = {"uid": f"{uid_prefix}-{seed}-{len(rows)}", "question": question, "name": name, "item": item}
        row.update(start=start, events=events, numbers=numbers, ops=ops)
        row["answer"] = render_solution(row, "fine")
        rows.append(row)
    return rows


def event_term(kind: str, a: int, b: int) -> str:
    """An event as it stands in a line: ``+ 3 * 4``, ``+ 2``, ``- 5``."""
    if kind == "buy":
        return f"+ {a} * {b}"
    return f"+ {a}" if kind == "get" else f"- {a}"


def _story_lines(row: dict, rng: random.Random, leap_prob: float, max_leap: int) -> list[str]:
    """Story order; each line one event (a purchase: two lines) or, with ``leap_prob``, a leap
    over 2..``max_leap`` operations (whole events)."""
    events, lines, value, i = row["events"], [], row["start"], 0
    while i < len(events):
        left = events[i:]
        if rng.random() < leap_prob:
            # A leap: as many whole events as fit in 2..max_leap operations (at least one).
            take, ops = 0, 0
            for kind, _, _ in left:
                cost = 2 if kind == "buy" else 1
                if take and ops + cost > max_leap:
                    break
                take, ops = take + 1, ops + cost
            if ops >= 2:
                group = left[:take]
                total = value + sum(event_change(*event) for event in group)
                lines.append(f"{value} {' '.join(event_term(*event) for event in group)} = {total}")
                value, i = total, i + take
                continue
        kind, a, b = events[i]
        change = event_change(kind, a, b)
        if kind == "buy":
            lines.append(f"{a} * {b} = {change}")
        sign = "-" if change < 0 else "+"
        lines.append(f"{value} {sign} {abs(change)} = {value + change}")
        value, i = value + change, i + 1
    return lines


def _grouped_lines(row: dict) -> list[str]:
    """Gains first (products, then their sum, then onto the start), then losses likewise."""
    lines, gains, losses = [], [], []
    for kind, a, b in row["events"]:
        if kind == "buy":
            lines.append(f"{a} * {b} = {a * b}")
        (gains if kind in GAINS else losses).append(abs(event_change(kind, a, b)))
    value = row["start"]
    for amounts, sign in ((gains, "+"), (losses, "-")):
        if not amounts:
            continue
        total = amounts[0]
        for amount in amounts[1:]:
            lines.append(f"{total} + {amount} = {total + amount}")
            total += amount
        new = value + total if sign == "+" else value - total
        lines.append(f"{value} {sign} {total} = {new}")
        value = new
    return lines


def render_solution(
    row: dict,
    style: str = "fine",
    rng: random.Random | None = None,
    leap_prob: float = 0.5,
    max_leap: int = 3,
    grouped_prob: float = 1 / 3,
) -> str:
    """A solution of ``row`` in ``style`` (see the module docstring), ending in ``#### <n>``.

    Args:
        rng: draws the mixed style's choices (``random.Random(0)`` when omitted).
        leap_prob: in ``mixed``, the chance that a line is a leap where one fits.
        max_leap: the most operations a leap line carries out (>= 2).
        grouped_prob: in ``mixed``, the share of problems solved by the grouped path.
    """
    if style not in STYLES:
        raise UsageError(f"unknown solution style {style!r}; expected one of {STYLES}")
    if max_leap < 2:
        raise UsageError(f"max_leap must be >= 2, got {max_leap}")
    rng = rng if rng is not None else random.Random(0)
    if style == "grouped" or (style == "mixed" and rng.random() < grouped_prob):
        lines = _grouped_lines(row)
    else:
        lines = _story_lines(row, rng, {"fine": 0.0, "leap": 1.0}.get(style, leap_prob), max_leap)
    answer = evaluate_row(row)
    # The answer line repeats the last result on its own line (its own search chunk), as in arith.
    return "\n".join([*lines, f"#### {answer}"])


def evaluate_row(row: dict) -> int:
    """The count at the end of the story."""
    return row["start"] + sum(event_change(*event) for event in row["events"])


def line_operation_counts(solution: str, num_ops: int) -> list[int]:
    """How many operations each step line of a solution carries out (the operators left of its
    ``=``). A ``#### n`` line counts only when fewer than ``num_ops`` operations came before it
    (a model that jumped to the answer): it carries out the rest. Lines after it are ignored."""
    counts = []
    for line in solution.splitlines():
        if line.startswith("####"):
            left = num_ops - sum(counts)
            if left > 0:
                counts.append(left)
            break
        if " = " in line:
            counts.append(len(_OPERATOR_RE.findall(line.split(" = ")[0])))
    return counts


# Few-shot examples: fine-style solutions of four fixed stories of the train partition.
_SHOT_ROWS = (
    {"name": "Ann", "item": "pens", "start": 5, "events": [["get", 3, 0], ["give", 2, 0]]},
    {"name": "Ben", "item": "eggs", "start": 4, "events": [["buy", 2, 3], ["lose", 5, 0]]},
    {"name": "Cal", "item": "cards", "start": 9, "events": [["give", 4, 0], ["buy", 3, 2], ["get", 1, 0]]},
    {"name": "Dot", "item": "coins", "start": 2, "events": [["get", 6, 0], ["lose", 3, 0], ["get", 7, 0]]},
)


def _shot(row: dict) -> dict:
    story = " ".join(_sentence(row["name"], *event) for event in row["events"])
    question = f"{row['name']} has {row['start']} {row['item']}. {story} How many {row['item']} now?"
    return {"question": question, "answer": render_solution(row, "fine")}


FEW_SHOT_EXAMPLES = tuple(_shot(row) for row in _SHOT_ROWS)


class LedgerTask(Task):
    """The ``ledger`` task: the final answer is the integer after ``####``, checked exactly."""

    name = "ledger"
    stop_strings = ("\nQ:",)
    few_shot_examples = FEW_SHOT_EXAMPLES

    def prompt(self, row: dict) -> str:
        """``Q: <question>`` / ``A:``; the solution starts on the next line (as ``arith``)."""
        return f"Q: {row['question']}\nA:\n"

    def extract_answer(self, text: str) -> str | None:
        """The number after the first ``####`` (no last-number fallback: the format is exact)."""
        return extract_strict(text)


__all__ = [
    "STYLES",
    "LedgerTask",
    "evaluate_row",
    "event_change",
    "event_term",
    "generate_problems",
    "line_operation_counts",
    "render_solution",
    "write_problems",
]
