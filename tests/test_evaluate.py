"""Evaluation: batched left-padded generation, sampling, scoring and metrics."""

import json
import random

import pytest
from genssd.config import EvalConfig
from genssd.errors import UsageError
from genssd.evaluate import evaluate, generate, read_predictions, score_predictions
from genssd.tasks import get_task
from genssd.tasks.arith import generate_problems
from tiny_models import byte_tokenizer, tiny_llama  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

ARITH = get_task("arith")


@pytest.fixture(scope="module")
def gsm8k(gsm8k_test_path):
    task = get_task("gsm8k")
    return task, task.load(gsm8k_test_path)


def test_gold_solutions_score_100_percent_and_a_shuffled_pairing_near_0(gsm8k):
    task, rows = gsm8k
    gold = score_predictions(task, rows, [r["answer"] for r in rows])
    assert gold["accuracy"] == 1.0 and gold["correct"] == len(rows)
    shuffled = [r["answer"] for r in rows]
    random.shuffle(shuffled)
    assert score_predictions(task, rows, shuffled)["accuracy"] < 0.05


def test_metrics_count_samples_and_problems():
    rows = generate_problems(20, seed=random.randrange(1000))
    rng = random.Random()
    verdicts = [[rng.random() < 0.3 for _ in range(4)] for _ in rows]
    texts = [
        [row["answer"] if ok else f"#### {int(ARITH.gold_answer(row)) + 1}" for ok in v]
        for row, v in zip(rows, verdicts)
    ]
    result = score_predictions(ARITH, rows, texts)
    assert result["num_samples"] == 4 and result["problems"] == 20
    assert result["accuracy"] == pytest.approx(sum(map(sum, verdicts)) / 80)
    assert result["pass@4"] == pytest.approx(sum(map(any, verdicts)) / 20)
    assert [r["correct"] for r in result["records"]] == verdicts
    assert result["records"][0]["gold_answer"] == ARITH.gold_answer(rows[0])
    with pytest.raises(UsageError, match="same number"):
        score_predictions(ARITH, rows[:2], [["a", "b"], ["c"]])
    with pytest.raises(UsageError, match="1 predictions for 2"):
        score_predictions(ARITH, rows[:2], ["a"])


@pytest.fixture(scope="module")
def model_and_tokenizer():
    tokenizer = byte_tokenizer()
    return tiny_llama(len(tokenizer), seed=random.randrange(1000), hidden=48), tokenizer


@pytest.mark.parametrize("engine", ["static", "hf"])
def test_batched_generation_equals_one_prompt_at_a_time_and_hf_greedy(model_and_tokenizer, engine):
    model, tokenizer = model_and_tokenizer
    # Prompts of very different lengths, so a batch carries a lot of padding.
    prompts = [
        ARITH.prompt(r) for r in generate_problems(6, seed=random.randrange(1000), num_operands=(2, 7))
    ]
    config = EvalConfig(batch_size=6, max_new_tokens=12, engine=engine)
    batched = generate(model, tokenizer, prompts, config)
    alone = generate(model, tokenizer, prompts, EvalConfig(batch_size=1, max_new_tokens=12, engine=engine))
    assert batched == alone
    # The static engine never draws <pad> or <bos> (ids 0 and 2); the reference suppresses them too.
    suppress = [0, 2] if engine == "static" else None
    for prompt, (text,) in zip(prompts, alone):
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        out = model.generate(
            ids, max_new_tokens=12, do_sample=False, pad_token_id=0, eos_token_id=1, suppress_tokens=suppress
        )[0, ids.shape[1] :]
        reference = out[: (out == 1).nonzero()[0, 0]] if (out == 1).any() else out
        assert text == tokenizer.decode(reference, skip_special_tokens=True)


def test_sampling_gives_n_seeded_samples_per_problem(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    rows = generate_problems(5, seed=random.randrange(1000))
    config = EvalConfig(batch_size=2, max_new_tokens=8, num_samples=3, temperature=1.0, seed=11)
    first = evaluate(model, tokenizer, ARITH, rows, config, progress=False)
    again = evaluate(model, tokenizer, ARITH, rows, config, progress=False)
    assert [r["predictions"] for r in first["records"]] == [r["predictions"] for r in again["records"]]
    assert all(len(r["predictions"]) == 3 for r in first["records"])
    # A random model at temperature 1 does not repeat itself across 15 samples.
    assert len({p for r in first["records"] for p in r["predictions"]}) > 5
    assert first["pass@3"] >= first["accuracy"]
    assert [r["uid"] for r in first["records"]] == [r["uid"] for r in rows]


def test_static_engine_samples_do_not_depend_on_the_batch(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    prompts = [ARITH.prompt(r) for r in generate_problems(5, seed=3)]
    runs = [
        generate(
            model,
            tokenizer,
            prompts,
            EvalConfig(
                batch_size=size, max_new_tokens=8, num_samples=2, temperature=1.0, seed=4, engine="static"
            ),
        )
        for size in (1, 5)
    ]
    assert runs[0] == runs[1] and len({t for texts in runs[0] for t in texts}) > 5


def test_greedy_samples_are_refused():
    with pytest.raises(UsageError, match="temperature > 0"):
        EvalConfig(num_samples=4, temperature=0.0)


def test_read_predictions_matches_by_uid_or_by_order(tmp_path):
    rows = generate_problems(4, seed=0)
    by_uid = tmp_path / "uid.jsonl"
    by_uid.write_text(
        "".join(json.dumps({"uid": r["uid"], "prediction": r["answer"]}) + "\n" for r in rows[::-1])
    )
    assert read_predictions(by_uid, rows) == [[r["answer"]] for r in rows]
    search_out = tmp_path / "search.jsonl"
    search_out.write_text("".join(json.dumps({"trajectories": [{"text": f"t{i}"}]}) + "\n" for i in range(4)))
    assert read_predictions(search_out, rows) == [["t0"], ["t1"], ["t2"], ["t3"]]
    missing = tmp_path / "missing.jsonl"
    missing.write_text(json.dumps({"uid": rows[0]["uid"], "predictions": ["x"]}) + "\n")
    with pytest.raises(UsageError, match="no prediction for 3"):
        read_predictions(missing, rows)
