"""The embedded tasks the demo-model scripts work on: for each, its problems, its solutions in
each style and its leap counter, behind one interface (``DEMO_TASKS[name]``)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from genssd.tasks import arith, get_task, ledger


@dataclass(frozen=True)
class DemoTask:
    """``render(row, style, rng)``: a row's solution text; ``corpus(seed)``: prompts and
    solutions holding every character the task can produce (the tokenizer's training text);
    ``max_new_tokens``: room for the longest solution; ``decision_points(row)``: along the row's
    fine solution, wherever two or more steps remain, ``(prefix, next fine line, next leap line)``
    (the leap carrying out the next two steps at once), each line ending in its newline."""

    name: str
    generate: Callable[..., list[dict]]
    render: Callable[[dict, str, random.Random], str]
    styles: tuple[str, ...]
    line_operation_counts: Callable[[str, int], list[int]]
    corpus: Callable[[int], list[str]]
    max_new_tokens: int
    decision_points: Callable[[dict], list[tuple[str, str, str]]]

    @property
    def task(self):
        return get_task(self.name)


def _arith_corpus(seed: int) -> list[str]:
    # Wider numbers than the demo's problems, solutions with the default leap cap: the text the
    # shipped tokenizer was made from (its token ids follow the characters' frequencies).
    task, rng = get_task("arith"), random.Random(seed)
    rows = arith.generate_problems(2000, seed, num_operands=(2, 6), max_operand=50, max_value=200)
    return [
        task.prompt(r) + arith.render_solution(r["numbers"], r["ops"], style, rng)
        for r in rows
        for style in arith.STYLES
    ]


def _ledger_corpus(seed: int) -> list[str]:
    task, rng = get_task("ledger"), random.Random(seed)
    rows = ledger.generate_problems(2000, seed, num_events=(1, 4))
    return [task.prompt(r) + ledger.render_solution(r, style, rng) for r in rows for style in ledger.STYLES]


def _arith_decisions(row: dict) -> list[tuple[str, str, str]]:
    # A fine line rewrites the rest of the expression, so the fine line after next is the leap of two.
    lines = row["answer"].split("\n")
    return [
        ("".join(line + "\n" for line in lines[:done]), lines[done] + "\n", lines[done + 1] + "\n")
        for done in range(len(row["ops"]) - 1)
    ]


def _ledger_decisions(row: dict) -> list[tuple[str, str, str]]:
    # Story order: the next event's first fine line (a purchase's product) against one line over
    # the next two events.
    points, prefix, value, events = [], "", row["start"], row["events"]
    for i, (kind, a, b) in enumerate(events[:-1]):
        change = ledger.event_change(kind, a, b)
        two = change + ledger.event_change(*events[i + 1])
        terms = f"{ledger.event_term(kind, a, b)} {ledger.event_term(*events[i + 1])}"
        leap = f"{value} {terms} = {value + two}\n"
        product = f"{a} * {b} = {change}\n" if kind == "buy" else ""
        step = f"{value} {'-' if change < 0 else '+'} {abs(change)} = {value + change}\n"
        points.append((prefix, (product or step), leap))
        prefix, value = prefix + product + step, value + change
    return points


DEMO_TASKS = {
    # Arith leaps are uncapped (see train_demo_models.mixed_rows).
    "arith": DemoTask(
        "arith",
        arith.generate_problems,
        lambda row, style, rng: arith.render_solution(row["numbers"], row["ops"], style, rng, max_leap=None),
        arith.STYLES,
        arith.line_operation_counts,
        _arith_corpus,
        64,
        _arith_decisions,
    ),
    # Ledger leaps take whole events, up to all that remain (8 operations at most).
    "ledger": DemoTask(
        "ledger",
        ledger.generate_problems,
        lambda row, style, rng: ledger.render_solution(row, style, rng, max_leap=8),
        ledger.STYLES,
        ledger.line_operation_counts,
        _ledger_corpus,
        112,
        _ledger_decisions,
    ),
}
