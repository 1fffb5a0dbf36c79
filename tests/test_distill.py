"""``genssd distill`` end to end on tiny arith models.

Covers each stage's outputs and statistics, a rerun that skips finished stages, a search and a
training interrupted midway that resume to the uninterrupted run's results, the rejection
filter over every trajectory, the pruning statistics against a from-scratch count, and bad
input (exit code 2).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import genssd.data
import genssd.distill
import genssd.train
import pytest
import torch
from arith_models import arith_models
from genssd.cli import main
from genssd.config import search_config_for
from genssd.distill import branch_statistics, pruned_share, training_rows
from genssd.tasks import get_task
from genssd.tasks.arith import generate_problems, write_problems
from safetensors.torch import load_file

TASK = get_task("arith")
NUM_TRAIN, NUM_HELDOUT, COLD = 24, 12, 8
SETTINGS = [
    "--task",
    "arith",
    "--cold-start",
    str(COLD),
    "--cold-start-steps",
    "3",
    "--set",
    "num_candidates=3",
    "--set",
    'step_delimiter="\\n"',
    "--set",
    "max_new_tokens=48",
    "--set",
    "temperature=1.0",
    "--set",
    "batch_size=8",
    "--train-set",
    "max_steps=6",
    "--train-set",
    "batch_size=4",
    "--train-set",
    "save_every=2",
    "--train-set",
    "log_every=1",
    "--train-set",
    "lr=1e-3",
    "--eval-set",
    "max_new_tokens=48",
    "--device",
    "cpu",
    "--seed",
    "3",
    "--no-progress",
]
MARKERS = ("coldstart", "search", "train", "eval")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Training and held-out problem files and the tiny teacher/student folders."""
    root = tmp_path_factory.mktemp("distill")
    rows = generate_problems(NUM_TRAIN, 5, num_operands=(3, 4))
    heldout = generate_problems(NUM_HELDOUT, 6, num_operands=(3, 4), exclude=[r["question"] for r in rows])
    write_problems(root / "train.jsonl", rows)
    write_problems(root / "heldout.jsonl", heldout)
    with torch.random.fork_rng():
        torch.set_num_threads(1)
        arith_models(root, rows, steps=150)
    return root


def command(work: Path, out: Path, *extra: str) -> list[str]:
    return [
        "distill",
        "--teacher",
        str(work / "teacher"),
        "--student",
        str(work / "student"),
        "--data",
        str(work / "train.jsonl"),
        "--eval-data",
        str(work / "heldout.jsonl"),
        "--out",
        str(out),
        *SETTINGS,
        *extra,
    ]


@pytest.fixture(scope="module")
def finished(work):
    """One uninterrupted run."""
    out = work / "run"
    assert main(command(work, out)) == 0
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def rounded(value):
    """``value`` with every float rounded: a prompt's scores vary in the last bits with its batch."""
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, list):
        return [rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    return value


@pytest.mark.slow
def test_every_stage_writes_its_outputs_and_the_summary_adds_up(work, finished):
    out = finished
    for stage in MARKERS:
        assert (out / f"{stage}.done").is_file(), stage
    cold_rows = read_jsonl(out / "coldstart" / "search.jsonl")
    assert [r["uid"] for r in cold_rows] == [r["uid"] for r in TASK.load(work / "train.jsonl")][:COLD]
    assert all(r["method"] == "standard" and len(r["trajectories"]) == 1 for r in cold_rows)
    rows = read_jsonl(out / "search.jsonl")
    assert sorted(r["uid"] for r in rows) == sorted(r["uid"] for r in TASK.load(work / "train.jsonl"))
    assert {r["method"] for r in rows} == {"gen-ssd"}
    # The cold-started student scored the search, not the shipped one: the saved student differs.
    for folder in ("coldstart/student", "student"):
        assert (out / folder / "model.safetensors").is_file()
    cold = load_file(out / "coldstart" / "student" / "model.safetensors")
    base = load_file(work / "student" / "model.safetensors")
    assert any(not torch.equal(cold[k], base[k]) for k in base)
    assert [c.name for c in genssd.train.checkpoints(out / "student")] == ["checkpoint-4", "checkpoint-6"]
    records = read_jsonl(out / "eval.jsonl")
    assert len(records) == NUM_HELDOUT

    summary = json.loads((out / "summary.json").read_text())
    assert summary["search"]["problems"] == NUM_TRAIN
    assert summary["search"]["teacher_tokens"] == sum(r["teacher_tokens"] for r in rows)
    assert summary["cold_start"]["search"]["teacher_tokens"] == sum(r["teacher_tokens"] for r in cold_rows)
    assert (
        summary["teacher_tokens_total"]
        == summary["search"]["teacher_tokens"] + summary["cold_start"]["search"]["teacher_tokens"]
    )
    assert summary["search"]["answer_accuracy"] == sum(r["correct"] for r in rows) / NUM_TRAIN
    assert summary["train"]["steps"] == 6 and summary["cold_start"]["train"]["steps"] == 3
    assert summary["eval"]["accuracy"] == sum(r["correct"][0] for r in records) / NUM_HELDOUT
    # Three candidates per line and a round per line: the search compared every round's group.
    rounds = sum(len(r["trajectories"][0]["chunks"]) for r in rows)
    assert summary["search"]["branches"] == 3 * rounds
    assert 0 <= summary["pruned_share"] <= 1


def test_a_rerun_skips_every_finished_stage(work, finished, monkeypatch, capsys):
    before = {stage: (finished / f"{stage}.done").read_text() for stage in MARKERS}
    summary = (finished / "summary.json").read_text()

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    for name in ("search_stage", "train_stage", "eval_stage"):
        monkeypatch.setattr(genssd.distill, name, must_not_run)
    assert main(command(work, finished)) == 0
    assert {stage: (finished / f"{stage}.done").read_text() for stage in MARKERS} == before
    assert json.loads((finished / "summary.json").read_text()) == json.loads(summary)
    assert "already done" in capsys.readouterr().err


@pytest.mark.slow
def test_an_interrupted_search_and_training_resume_to_the_uninterrupted_results(work, finished, monkeypatch):
    out = work / "interrupted"

    class Killed(BaseException):
        """Stands for a kill: nothing after it runs, no handler catches it."""

    # 1. Killed after the search's 10th row.
    write = genssd.data.RowWriter.write
    written = []

    def write_then_die(self, row):
        write(self, row)
        if self.path.name == "search.jsonl" and self.path.parent == out:
            written.append(row["uid"])
            if len(written) == 10:
                raise Killed

    monkeypatch.setattr(genssd.data.RowWriter, "write", write_then_die)
    with pytest.raises(Killed):
        main(command(work, out))
    assert len(read_jsonl(out / "search.jsonl")) == 10 and not (out / "search.done").exists()
    monkeypatch.undo()

    # 2. Killed right after the training's first checkpoint (step 2 of 6).
    save = genssd.train._save_checkpoint

    def save_then_die(out_dir, step, *args):
        save(out_dir, step, *args)
        if out_dir == out / "student":
            raise Killed

    monkeypatch.setattr(genssd.train, "_save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        main(command(work, out))
    assert (out / "search.done").is_file() and not (out / "train.done").exists()
    assert [c.name for c in genssd.train.checkpoints(out / "student")] == ["checkpoint-2"]
    monkeypatch.undo()

    # 3. The rest.
    assert main(command(work, out)) == 0
    assert rounded(read_jsonl(out / "search.jsonl")) == rounded(read_jsonl(finished / "search.jsonl"))
    assert [r["step"] for r in read_jsonl(out / "student" / "train_log.jsonl")] == [1, 2, 3, 4, 5, 6]
    resumed = load_file(out / "student" / "model.safetensors")
    uninterrupted = load_file(finished / "student" / "model.safetensors")
    for key in uninterrupted:
        torch.testing.assert_close(resumed[key], uninterrupted[key], atol=1e-6, rtol=0)
    assert read_jsonl(out / "eval.jsonl") == read_jsonl(finished / "eval.jsonl")


@pytest.mark.slow
def test_rounds_search_with_the_last_rounds_student_and_resume_between_rounds(work, monkeypatch):
    """Iterative Gen-SSD: round 1 searches its own problems scoring with the student round 0
    trained and starts its training from it; a run killed between the rounds resumes to the
    uninterrupted result (round 0 is not redone)."""
    whole, out = work / "rounds-whole", work / "rounds-killed"
    assert main(command(work, work / "rounds-budget", "--rounds", "2", "--teacher-token-budget", "100")) == 2

    class Killed(BaseException):
        """Stands for a kill between the rounds."""

    searched, stage = [], genssd.distill.search_stage

    def record_search(path, teacher, student, task, rows, *args, **kwargs):
        searched.append((path.parent.name, Path(student), [r["uid"] for r in rows]))
        return stage(path, teacher, student, task, rows, *args, **kwargs)

    monkeypatch.setattr(genssd.distill, "search_stage", record_search)
    assert main(command(work, whole, "--rounds", "2")) == 0
    (cold, _, _), (round0, student0, uids0), (round1, student1, uids1) = searched
    assert cold == "coldstart" and (round0, round1) == ("round0", "round1")
    assert student0 == whole / "coldstart" / "student" and student1 == whole / "round0" / "student"
    assert len(uids0) == len(uids1) == NUM_TRAIN // 2 and not set(uids0) & set(uids1)
    summary = json.loads((whole / "summary.json").read_text())
    assert [r["search"]["problems"] for r in summary["rounds"]] == [NUM_TRAIN // 2] * 2
    assert summary["teacher_tokens"] == sum(r["search"]["teacher_tokens"] for r in summary["rounds"])

    train_stage = genssd.distill.train_stage

    def train_then_die(out_dir, *args, **kwargs):
        if out_dir.parent.name == "round1":
            raise Killed
        return train_stage(out_dir, *args, **kwargs)

    monkeypatch.setattr(genssd.distill, "train_stage", train_then_die)
    with pytest.raises(Killed):
        main(command(work, out, "--rounds", "2"))
    assert (out / "round0" / "train.done").is_file() and (out / "round1" / "search.done").is_file()
    assert not (out / "round1" / "train.done").exists()
    monkeypatch.undo()
    monkeypatch.setattr(genssd.distill, "search_stage", record_search)
    searched.clear()
    assert main(command(work, out, "--rounds", "2")) == 0
    assert searched == []  # every search was done before the kill
    for name in ("round0/search.jsonl", "round1/search.jsonl", "eval.jsonl"):
        assert rounded(read_jsonl(out / name)) == rounded(read_jsonl(whole / name))
    resumed = load_file(out / "round1" / "student" / "model.safetensors")
    for key, value in load_file(whole / "round1" / "student" / "model.safetensors").items():
        torch.testing.assert_close(resumed[key], value, atol=1e-6, rtol=0)


def test_rejection_filter_trains_on_every_correct_sample(work):
    out = work / "rejection"
    args = command(
        work, out, "--method", "standard", "--set", "beam_width=3", "--train-on", "all", "--only-correct"
    )
    args[args.index("--cold-start") + 1] = "0"
    del args[args.index("--cold-start-steps") : args.index("--cold-start-steps") + 2]
    assert main(args) == 0
    rows = read_jsonl(out / "search.jsonl")
    assert all(len(r["trajectories"]) == 3 for r in rows)
    correct = sum(TASK.is_correct(t["text"], r) for r in rows for t in r["trajectories"])
    assert 0 < correct < 3 * NUM_TRAIN  # both kinds are there, so the filter is tested
    summary = json.loads((out / "summary.json").read_text())
    assert summary["search"]["branches"] == 0  # plain sampling compares nothing
    assert summary["train"]["filter_candidates"] == 3 * NUM_TRAIN
    assert summary["train"]["filter_rejected"] == 3 * NUM_TRAIN - correct
    assert summary["train"]["examples"] == correct
    assert summary["pruned_share"] == pytest.approx(1 - correct / (3 * NUM_TRAIN))
    assert not (out / "coldstart").exists()


def test_a_gold_cold_start_costs_no_teacher_tokens(work):
    out = work / "gold"
    args = command(work, out, "--cold-start-source", "gold", "--method", "best-of-n")
    at = args.index('step_delimiter="\\n"')  # best-of-n: one chunk is the whole answer
    del args[at - 1 : at + 1]
    assert main(args) == 0
    cold = read_jsonl(out / "coldstart" / "data.jsonl")
    assert cold == TASK.load(work / "train.jsonl")[:COLD]
    assert not (out / "coldstart" / "search.jsonl").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cold_start"]["search"]["teacher_tokens"] == 0
    assert summary["teacher_tokens_total"] == summary["teacher_tokens"] > 0
    # Best-of-n: one chunk per answer, so one group of 3 per problem.
    assert summary["search"]["branches"] == 3 * NUM_TRAIN


def test_training_rows_expand_every_trajectory_with_its_own_verdict():
    row = generate_problems(1, 11)[0]
    gold = TASK.gold_answer(row)
    row["trajectories"] = [{"text": f"= x\n#### {gold}"}, {"text": f"#### {int(gold) + 1}"}]
    row["correct"] = True
    expanded = training_rows([row], TASK, "all")
    assert [r["correct"] for r in expanded] == [True, False]
    assert [r["trajectories"][0]["text"] for r in expanded] == [t["text"] for t in row["trajectories"]]
    assert len({r["uid"] for r in expanded}) == 2
    assert training_rows([row], TASK, "best") == [row]


@pytest.mark.parametrize("m", [1, 2, 5])
def test_equal_data_rules_keep_m_correct_trajectories(m):
    """The equal-data keep rules against a plain statement: per problem, the correct trajectories
    in the row's order (likeliest first) or in a (seed, uid)-seeded random order, the first m."""
    rng = random.Random(m)
    rows = generate_problems(30, 12)
    for row in rows:
        gold = int(TASK.gold_answer(row))
        row["trajectories"] = [
            {"text": f"line {i}\n#### {gold if rng.random() < 0.5 else gold + 1}"} for i in range(4)
        ]
    for rule in ("likeliest-correct", "random-correct"):
        kept = training_rows(rows, TASK, rule, per_problem=m, seed=3)
        assert all(r["correct"] for r in kept)
        by_problem: dict[str, list[str]] = {}
        for r in kept:
            by_problem.setdefault(r["uid"].rsplit("/", 1)[0], []).append(r["trajectories"][0]["text"])
        for row in rows:
            correct = [t["text"] for t in row["trajectories"] if TASK.is_correct(t["text"], row)]
            got = by_problem.get(str(row["uid"]), [])
            assert len(got) == min(m, len(correct)) and set(got) <= set(correct)
            if rule == "likeliest-correct":
                assert got == correct[:m]
        # Seeded: the same draw again; another seed draws other subsets somewhere.
        assert training_rows(rows, TASK, rule, per_problem=m, seed=3) == kept
    if m == 1:
        other = training_rows(rows, TASK, "random-correct", per_problem=1, seed=4)
        assert [r["uid"] for r in other] != [
            r["uid"] for r in training_rows(rows, TASK, "random-correct", seed=3)
        ]


def test_branch_statistics_match_a_count_from_scratch():
    rng = random.Random(4)
    config = search_config_for("gen-ssd", margin=0.4, max_ppl=8.0)
    rows, expected, total = [], 0, 0
    for _ in range(30):
        rounds = [[rng.gauss(-1.5, 0.6) for _ in range(rng.randint(1, 5))] for _ in range(rng.randint(1, 4))]
        # A second trajectory repeats the first rounds: each round is counted once.
        chunks = [{"candidate_scores": scores} for scores in rounds]
        rows.append({"trajectories": [{"chunks": chunks}, {"chunks": chunks[:1]}]})
        for scores in rounds:
            mean = sum(scores) / len(scores)
            expected += sum(s < mean - 0.4 or s < config.min_score for s in scores)
            total += len(scores)
    assert branch_statistics(rows, config) == (total, expected)
    assert expected > 0
    assert branch_statistics(rows, search_config_for("standard")) == (0, 0)
    assert (
        pruned_share(
            {"branches": total, "branches_pruned": expected}, {"filter_candidates": 0, "filter_rejected": 0}
        )
        == expected / total
    )
    assert (
        pruned_share({"branches": 0, "branches_pruned": 0}, {"filter_candidates": 0, "filter_rejected": 0})
        is None
    )


def test_changed_settings_in_the_same_folder_are_refused(work, finished, capsys):
    assert main(command(work, finished, "--set", "margin=1.0")) == 2
    assert "other settings" in capsys.readouterr().err


@pytest.mark.parametrize(
    "change, message",
    [
        (("--data", "missing.jsonl"), "not found"),
        (("--teacher", "nowhere"), "the teacher model: no such folder: "),
        (("--cold-start", "99"), "cold start asks for 99"),
        (("--set", "bogus=1"), "unknown config key"),
        (("--train-set", "lr=-1"), "lr must be > 0"),
        (("--eval-data", "missing.jsonl"), "not found"),
        (("--device", "tpu"), "device"),
        (("--rounds", "0"), "rounds must be an int in 1..24"),
        (("--per-problem", "0"), "per_problem must be an int >= 1"),
    ],
)
def test_bad_input_exits_2_before_writing_anything(work, tmp_path, capsys, change, message):
    out = tmp_path / "out"
    args = command(work, out)
    flag, value = change
    if value.endswith(".jsonl") or value == "nowhere":
        value = str(work / value)
    if flag in args and flag not in ("--set", "--train-set"):  # those repeat: a later one wins
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_run_that_failed_on_its_input_can_be_rerun_with_other_settings(work, tmp_path, capsys):
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    out = tmp_path / "out"
    args = command(work, out)
    args[args.index("--teacher") + 1] = str(empty)
    assert main(args) == 2
    assert "cannot load" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["run.json"]
    assert main(command(work, out, "--method", "standard")) == 0
    assert (out / "eval.done").is_file()


def test_an_output_path_that_is_a_file_exits_2(work, tmp_path, capsys):
    out = tmp_path / "file"
    out.write_text("x")
    assert main(command(work, out)) == 2
    assert "is a file" in capsys.readouterr().err
