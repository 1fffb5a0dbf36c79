"""Tasks: the registry, loading, GSM8K number extraction on the real test file, MATH boxes."""

import json
import random
import re

import pytest
from genssd.errors import UsageError
from genssd.tasks import TASK_NAMES, get_task, question_uid
from genssd.tasks.gsm8k import extract_flexible, extract_strict, normalize_number
from genssd.tasks.math import equivalent, last_boxed


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ------------------------------------------------------------------------------------ registry


def test_registry_builds_every_task_with_the_common_interface():
    for name in TASK_NAMES:
        task = get_task(name)
        assert task.name == name
        for method in ("load", "prompt", "extract_answer", "is_correct", "gold_answer"):
            assert callable(getattr(task, method))
    with pytest.raises(UsageError, match="unknown task 'gsm9k'"):
        get_task("gsm9k")


# ------------------------------------------------------------------------------------- loading


def test_load_fills_stable_unique_uids_and_keeps_given_ones(tmp_path):
    rows = [
        {"question": "Q1", "answer": "#### 1"},
        {"question": "Q2", "answer": "#### 2", "uid": 7},
        {"question": "Q1", "answer": "#### 3"},
    ]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    task = get_task("gsm8k")
    loaded = task.load(path)
    assert [r["uid"] for r in loaded] == [question_uid("Q1"), "7", question_uid("Q1") + "-1"]
    assert task.load(path) == loaded
    # Reordering the file keeps every uid that does not depend on order.
    reordered = task.load(write_jsonl(tmp_path / "r.jsonl", rows[::-1][1:]))
    assert {r["question"]: r["uid"] for r in reordered} == {"Q2": "7", "Q1": question_uid("Q1")}


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "no rows"),
        ('{"question": "q", "answer": "#### 1"}\n{not json\n', ":2: not valid JSON"),
        ("[1, 2]\n", "JSON object"),
        ('{"answer": "#### 1"}\n', "non-empty string 'question'"),
        ('{"question": "  ", "answer": "#### 1"}\n', "non-empty string 'question'"),
        ('{"question": "q"}\n', "'answer'"),
        ('{"question": "q", "answer": "no number here"}\n', "no final answer"),
    ],
)
def test_bad_files_raise_a_clear_usage_error(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(UsageError, match=message):
        get_task("gsm8k").load(path)


def test_missing_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        get_task("math").load(tmp_path / "nope.jsonl")


# --------------------------------------------------------------------------------------- GSM8K


@pytest.fixture(scope="module")
def gsm8k_rows(gsm8k_test_path):
    return get_task("gsm8k").load(gsm8k_test_path)


@pytest.mark.parametrize("name", ["gsm8k", "gsm8k-strict"])
def test_every_gsm8k_gold_solution_is_correct_and_a_wrong_number_is_not(gsm8k_rows, name):
    task = get_task(name)
    assert len(gsm8k_rows) == 1319
    for row in gsm8k_rows:
        assert task.is_correct(row["answer"], row), row["answer"]
        gold = task.gold_answer(row)
        wrong = str(int(float(gold)) + random.choice([-3, -1, 1, 7]))
        assert not task.is_correct(re.sub(r"####.*$", f"#### {wrong}", row["answer"]), row)


def test_gsm8k_uids_are_unique(gsm8k_rows):
    assert len({r["uid"] for r in gsm8k_rows}) == len(gsm8k_rows)


@pytest.mark.parametrize(
    "text, value",
    [
        ("1,234", "1234"),
        ("$1,000.50", "1000.5"),
        ("-7", "-7"),
        ("-$3", "-3"),
        ("$-3", "-3"),
        ("18.00", "18"),
        ("0.25", "0.25"),
        (".5", "0.5"),
        ("-0", "0"),
        ("1,234,567", "1234567"),
    ],
)
def test_numbers_normalize_by_value(text, value):
    assert normalize_number(text) == value


def test_random_numbers_round_trip_through_every_format():
    rng = random.Random()
    for _ in range(300):
        value = rng.randint(-(10**7), 10**7)
        cents = rng.choice([None, rng.randint(1, 99)])
        plain = f"{value}" if cents is None else f"{value}.{cents:02d}"
        expected = normalize_number(plain)
        body = f"{abs(value):,}" + ("" if cents is None else f".{cents:02d}")
        sign = "-" if value < 0 else ""
        for written in (f"{sign}{body}", f"{sign}${body}", f"{sign}{body.replace(',', '')}"):
            assert extract_strict(f"so the total is\n#### {written}") == expected
            assert extract_flexible(f"So it costs {written}.") == expected


def test_strict_needs_the_marker_and_flexible_falls_back_to_the_last_number():
    text = "She had 5 apples, ate 2, so 5-2=3 are left."
    assert extract_strict(text) is None
    assert extract_flexible(text) == "3"
    # A subtraction is not a negative number, and the first #### wins over later text.
    assert extract_flexible("10-4") == "4"
    assert extract_flexible("#### 12\n\nQuestion: what is 99?") == "12"
    assert extract_flexible("no digits at all") is None
    strict, flexible = get_task("gsm8k-strict"), get_task("gsm8k")
    row = {"question": "q", "answer": "1+2=3\n#### 3"}
    assert flexible.is_correct("The answer is 3.", row)
    assert not strict.is_correct("The answer is 3.", row)


# ---------------------------------------------------------------------------------------- MATH


@pytest.mark.parametrize(
    "text, answer",
    [
        (r"so $\boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),
        (r"\boxed{1} first, finally \boxed{\sqrt{x^{2}+1}}", r"\sqrt{x^{2}+1}"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
        (r"\fbox{42}", "42"),
        (r"$\boxed 7$", "7"),
        (r"\boxed{ (3, -1) }", "(3, -1)"),
        (r"\boxed{\frac{1}{2}", None),
        ("no box", None),
    ],
)
def test_last_boxed_matches_nested_braces(text, answer):
    assert last_boxed(text) == answer


@pytest.mark.parametrize(
    "predicted, gold, same",
    [
        (r"\frac{1}{2}", "0.5", True),
        (r"\dfrac12", r"\frac{1}{2}", True),
        ("x^2+1", "1+x^2", True),
        (r"\sqrt 2", r"\sqrt{2}", True),
        ("3", "4", False),
        (r"\frac{1}{3}", "0.5", False),
        (r"\pi", "3.14159", False),
    ],
)
def test_math_equivalence(predicted, gold, same):
    assert equivalent(predicted, gold) is same


def test_math_rows_in_hendrycks_and_math500_layouts(tmp_path):
    rows = [
        {"problem": "Half of 1?", "solution": r"It is $\boxed{\frac{1}{2}}$.", "level": "Level 1"},
        {"problem": "Two plus two?", "solution": "Add them: four.", "answer": "4", "unique_id": "x"},
    ]
    task = get_task("math")
    loaded = task.load(write_jsonl(tmp_path / "m.jsonl", rows))
    assert [r["question"] for r in loaded] == ["Half of 1?", "Two plus two?"]
    assert [task.gold_answer(r) for r in loaded] == [r"\frac{1}{2}", "4"]
    assert task.is_correct(r"so \boxed{0.5}", loaded[0])
    assert not task.is_correct(r"so \boxed{0.25}", loaded[0])
    assert not task.is_correct("0.5 without a box", loaded[0])
    assert task.is_correct(r"\boxed{4}", loaded[1])
    assert "Half of 1?" in task.prompt(loaded[0]) and r"\boxed" in task.prompt(loaded[0])
