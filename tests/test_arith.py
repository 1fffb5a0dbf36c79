"""The synthetic ``arith`` task: seeded generation, solution styles, extraction and checking."""

import random

import pytest
from genssd.errors import UsageError
from genssd.tasks.arith import (
    ArithTask,
    evaluate,
    generate_problems,
    line_operation_counts,
    problem_split,
    render_solution,
    write_problems,
)

TASK = ArithTask()


@pytest.fixture(scope="module")
def rows():
    return generate_problems(
        300, seed=random.randrange(10_000), num_operands=(3, 6), max_operand=30, max_value=99
    )


def test_generator_is_deterministic_by_seed():
    seed = random.randrange(10_000)
    assert generate_problems(50, seed) == generate_problems(50, seed)
    assert generate_problems(50, seed) != generate_problems(50, seed + 1)


def test_problems_respect_the_knobs(rows):
    assert len({r["question"] for r in rows}) == len(rows)
    assert len({r["uid"] for r in rows}) == len(rows)
    for row in rows:
        assert 3 <= len(row["numbers"]) <= 6
        assert all(1 <= x <= 30 for x in row["numbers"])
        value = row["numbers"][0]
        for op, x in zip(row["ops"], row["numbers"][1:]):
            value = value + x if op == "+" else value - x
            assert 0 <= value <= 99


@pytest.mark.parametrize("style", ["fine", "leap", "mixed"])
def test_every_gold_solution_is_judged_correct(rows, style):
    rng = random.Random(1)
    for row in rows:
        solution = render_solution(row["numbers"], row["ops"], style, rng)
        assert TASK.is_correct(solution, row), solution
        assert TASK.extract_answer(solution) == str(evaluate(row["numbers"], row["ops"]))
        # Every line is a correct rewrite: its expression still has the answer's value.
        lines = solution.splitlines()
        assert lines[-2:] == [f"= {TASK.gold_answer(row)}", f"#### {TASK.gold_answer(row)}"]
        for line in lines[:-1]:
            assert line.startswith("= ") and eval(line[2:]) == int(TASK.gold_answer(row)), line  # noqa: S307


@pytest.mark.parametrize("max_leap", [2, 3, None])
def test_styles_have_their_line_structure(rows, max_leap):
    rng = random.Random(2)
    for row in rows:
        num_ops = len(row["ops"])
        fine_text = render_solution(row["numbers"], row["ops"], "fine")
        leap_text = render_solution(row["numbers"], row["ops"], "leap", rng, max_leap=max_leap)
        fine = line_operation_counts(fine_text, num_ops)
        leap = line_operation_counts(leap_text, num_ops)
        assert fine == [1] * num_ops
        assert fine_text == row["answer"] and leap_text != fine_text
        assert sum(leap) == num_ops and max(leap) <= (max_leap or num_ops)
        # Every leap line does 2+ operations; a lone last one only when the cap forced it.
        assert min(leap[:-1], default=2) >= 2
        assert leap[-1] >= 2 or (leap[-1] == 1 and leap[-2] == max_leap)


def test_mixed_style_follows_leap_prob(rows):
    rng = random.Random(3)
    always_fine = [render_solution(r["numbers"], r["ops"], "mixed", rng, leap_prob=0.0) for r in rows]
    assert always_fine == [r["answer"] for r in rows]
    counts = [
        c
        for r in rows
        for c in line_operation_counts(render_solution(r["numbers"], r["ops"], "mixed", rng), len(r["ops"]))
    ]
    assert 1 in counts and max(counts) >= 2


def test_a_wrong_answer_is_judged_wrong(rows):
    for row in rows[:50]:
        gold = int(TASK.gold_answer(row))
        wrong = row["answer"].rsplit("####", 1)[0] + f"#### {gold + random.choice([-1, 1, 10])}"
        assert not TASK.is_correct(wrong, row)
        assert not TASK.is_correct(row["answer"].rsplit("####", 1)[0], row)  # no final answer


def test_extraction():
    assert TASK.extract_answer("1 + 2 = 3\n#### 3") == "3"
    assert TASK.extract_answer("####  -7 and then #### 9") == "-7"
    assert TASK.extract_answer("#### 007") == "7"
    assert TASK.extract_answer("= 12 - 5\n= 7") is None  # no last-number fallback


def test_line_operation_counts_reads_model_output():
    # 9 - 3 + 2 - 6 + 9: four operations; a leap of two, one step, then the last in "####".
    assert line_operation_counts("= 8 - 6 + 9\n= 2 + 9\n#### 11\n= junk", 4) == [2, 1, 1]
    assert line_operation_counts("= 8 - 6 + 9\n= 11\n#### 11", 4) == [2, 2]
    assert line_operation_counts("#### 11", 4) == [4]
    assert line_operation_counts("no steps", 4) == []
    assert TASK.extract_answer("the answer is 12") is None
    assert TASK.extract_answer("") is None


def test_prompt_contains_the_question(rows):
    prompt = TASK.prompt(rows[0])
    assert rows[0]["question"] in prompt and prompt.endswith("\n")


def test_write_then_load_round_trips(tmp_path, rows):
    path = tmp_path / "sub" / "arith.jsonl"
    write_problems(path, rows)
    assert TASK.load(path) == rows


def test_load_rejects_bad_rows(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad_rows = [
        '{"question": "What is 1 + 2?"}\n',
        '{"question": "", "answer": "#### 3"}\n',
        '{"question": "What is 1 + 2?", "answer": "= 3"}\n',
        "{not json\n",
    ]
    for content in bad_rows:
        bad.write_text(content)
        with pytest.raises(UsageError):
            TASK.load(bad)
    with pytest.raises(UsageError):
        TASK.load(tmp_path / "missing.jsonl")


def test_bad_knobs_are_usage_errors():
    with pytest.raises(UsageError):
        generate_problems(10, 0, num_operands=(1, 3))
    with pytest.raises(UsageError):
        generate_problems(10, 0, max_operand=60, max_value=99)
    with pytest.raises(UsageError):
        generate_problems(100, 0, num_operands=(2, 2), max_operand=3, max_value=9)
    with pytest.raises(UsageError):
        render_solution([1, 2], ["+"], "sideways")
    with pytest.raises(UsageError):
        render_solution([1, 2, 3], ["+", "-"], "leap", max_leap=1)


def test_splits_are_disjoint_and_cover_every_length():
    seed = random.randrange(10_000)
    train = generate_problems(500, seed, num_operands=(2, 3), split="train")
    test = generate_problems(200, seed + 1, num_operands=(2, 3), split="test")
    assert {problem_split(r["question"]) for r in train} == {"train"}
    assert {problem_split(r["question"]) for r in test} == {"test"}
    assert not {r["question"] for r in train} & {r["question"] for r in test}
    assert {len(r["numbers"]) for r in test} == {2, 3}
    everything = generate_problems(2000, seed, num_operands=(3, 4))
    share = sum(problem_split(r["question"]) == "test" for r in everything) / len(everything)
    assert 0.07 < share < 0.13
    with pytest.raises(UsageError):
        generate_problems(10, seed, split="validation")


def test_exclude_makes_disjoint_draws():
    seed = random.randrange(10_000)
    first = generate_problems(500, seed, num_operands=(2, 3))
    second = generate_problems(200, seed + 1, num_operands=(2, 3), exclude=[r["question"] for r in first])
    assert len(second) == 200
    assert not {r["question"] for r in first} & {r["question"] for r in second}
