"""``ledger``: the word-problem task's generator, its three solution paths and its answer check,
against plain-Python statements of the arithmetic."""

from __future__ import annotations

import random
import re

import pytest
from genssd.errors import UsageError
from genssd.tasks import get_task
from genssd.tasks.arith import problem_split
from genssd.tasks.ledger import (
    FEW_SHOT_EXAMPLES,
    STYLES,
    evaluate_row,
    generate_problems,
    line_operation_counts,
    render_solution,
)

LEDGER = get_task("ledger")
LINE = re.compile(r"^(\d+(?: [+*-] \d+)+) = (\d+)$")


@pytest.fixture(scope="module")
def rows():
    return generate_problems(300, seed=4)


def test_generation_is_seeded_distinct_and_in_range(rows):
    assert rows == generate_problems(300, seed=4)
    assert rows != generate_problems(300, seed=5)
    assert len({r["question"] for r in rows}) == 300
    for row in rows:
        assert 2 <= len(row["events"]) <= 4
        # The story as one expression, in Python's precedence, gives the count.
        expression = " ".join(
            [str(row["numbers"][0])] + [f"{o} {x}" for o, x in zip(row["ops"], row["numbers"][1:])]
        )
        assert eval(expression) == evaluate_row(row)  # noqa: S307 (digits and + - * only)
        value = row["start"]
        for kind, a, b in row["events"]:
            value += a * b if kind == "buy" else (a if kind == "get" else -a)
            assert 0 <= value <= 40
        assert LEDGER.gold_answer(row) == str(value)


def test_splits_partition_the_problems():
    train = generate_problems(200, seed=1, split="train")
    test = generate_problems(40, seed=1, split="test")
    assert all(problem_split(r["question"]) == "train" for r in train)
    assert all(problem_split(r["question"]) == "test" for r in test)
    assert not {r["question"] for r in train} & {r["question"] for r in test}


@pytest.mark.parametrize("style", STYLES)
def test_every_line_is_right_and_the_answer_checks(rows, style):
    """Each line ``expr = value`` is true arithmetic; fine and grouped lines carry out one
    operation, leap lines two or more; every solution ends in the right ``#### n``."""
    rng = random.Random(0)
    for row in rows:
        solution = render_solution(row, style, rng)
        *lines, last = solution.splitlines()
        assert last == f"#### {evaluate_row(row)}" and LEDGER.is_correct(solution, row)
        ops_per_line = []
        for line in lines:
            match = LINE.match(line)
            assert match, line
            assert eval(match.group(1)) == int(match.group(2)), line  # noqa: S307
            ops_per_line.append(len(re.findall(r" [+*-] ", match.group(1))))
        assert line_operation_counts(solution, len(row["ops"])) == ops_per_line
        if style in ("fine", "grouped"):
            assert set(ops_per_line) == {1}
        if style == "fine":
            assert len(lines) == len(row["ops"])  # one line per operation of the story
        if style == "leap":
            assert all(n <= 3 for n in ops_per_line) and sum(n >= 2 for n in ops_per_line) >= 1


def test_mixed_style_draws_all_three_paths(rows):
    rng = random.Random(1)
    kinds = set()
    for row in rows:
        solution = render_solution(row, "mixed", rng)
        counts = line_operation_counts(solution, len(row["ops"]))
        if any(n >= 2 for n in counts):
            kinds.add("leap")
        elif solution == render_solution(row, "fine"):
            kinds.add("fine")
        elif solution == render_solution(row, "grouped"):
            kinds.add("grouped")
    assert kinds == {"fine", "leap", "grouped"}


def test_a_jump_to_the_answer_counts_as_one_leap(rows):
    row = next(r for r in rows if len(r["ops"]) >= 3)
    assert line_operation_counts(f"#### {evaluate_row(row)}", len(row["ops"])) == [len(row["ops"])]
    fine = render_solution(row, "fine")
    assert line_operation_counts(fine + "\n1 + 1 = 2", len(row["ops"])) == [1] * len(row["ops"])


def test_prompt_few_shot_and_bad_arguments():
    row = generate_problems(1, seed=0)[0]
    assert LEDGER.prompt(row) == f"Q: {row['question']}\nA:\n"
    assert LEDGER.extract_answer("1 + 2 = 3\n#### 3\nQ:") == "3"
    for shot in FEW_SHOT_EXAMPLES:
        assert problem_split(shot["question"]) == "train"
        assert shot["answer"].endswith(f"#### {LEDGER.extract_answer(shot['answer'])}")
    with pytest.raises(UsageError, match="num_events"):
        generate_problems(1, seed=0, num_events=(0, 2))
    with pytest.raises(UsageError, match="max_value"):
        generate_problems(1, seed=0, max_value=10)
    with pytest.raises(UsageError, match="split"):
        generate_problems(1, seed=0, split="dev")
    with pytest.raises(UsageError, match="style"):
        render_solution(row, "sideways")
