"""``genssd demo`` on a very small preset with tiny arith models.

Checks the results' structure and that every number in it is the one its run folder records
(teacher tokens, pruning, accuracy), the equal-budget run's stopping point, the mean and spread
over seeds, the printed table and the plot, a rerun that recomputes nothing, and bad input.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import statistics
from pathlib import Path

import genssd.distill
import pytest
import torch
from arith_models import arith_models
from genssd.cli import main
from genssd.demo import PRESETS, Method, Preset, demo_problems, leap_share, methods, run_demo
from genssd.errors import UsageError
from genssd.tasks import get_task
from genssd.tasks.arith import generate_problems, render_solution, write_problems

TASK = get_task("arith")
TINY = Preset(
    name="test",
    train_problems=12,
    heldout_problems=8,
    cold_start_problems=8,
    cold_start_steps=2,
    train_steps=3,
    train_batch_size=4,
    lr=1e-3,
    num_candidates=2,
    temperature=1.0,
    max_new_tokens=48,
    search_batch_size=16,
    eval_batch_size=8,
    seeds=2,
    equal_budget=True,
)
METHODS = [
    "base",
    "coldstart",
    "standard",
    "rejection",
    "best-of-n",
    "gen-ssd",
    "gen-ssd-checked",
    "random",
    "standard-budget",
]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny models; the teacher fitted to the demo's problems so its answers are mostly right."""
    rows = [row for seed in (0, 1) for row in demo_problems(TINY, seed)[0]]
    with torch.random.fork_rng():
        return arith_models(tmp_path_factory.mktemp("models"), rows, steps=200)


@pytest.fixture(scope="module")
def demo(models, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    results = run_demo(out, preset=TINY, device="cpu", seed=0, models=models, progress=False)
    return out, results


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_results_hold_every_method_with_the_numbers_its_run_folders_record(demo):
    out, results = demo
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    assert [r["method"] for r in results["methods"]] == METHODS
    assert results["seeds"] == [0, 1] and len(results["per_seed"]) == 2
    for seed, rows in zip(results["seeds"], results["per_seed"]):
        root = out / f"seed{seed}"
        by_method = {r["method"]: r for r in rows}
        cold_rows = read_jsonl(root / "coldstart" / "search.jsonl")
        cold_tokens = sum(r["teacher_tokens"] for r in cold_rows)
        assert len(cold_rows) == TINY.cold_start_problems
        assert by_method["base"]["teacher_tokens"] == 0
        assert by_method["coldstart"]["teacher_tokens"] == cold_tokens > 0
        for method in METHODS[2:]:
            searched = read_jsonl(root / method / "search.jsonl")
            own = sum(r["teacher_tokens"] for r in searched)
            assert by_method[method]["teacher_tokens"] == own + cold_tokens, method
            records = read_jsonl(root / method / "eval.jsonl")
            assert len(records) == TINY.heldout_problems
            assert by_method[method]["accuracy"] == sum(r["correct"][0] for r in records) / len(records)
            assert (root / method / "student" / "model.safetensors").is_file()
        for method in ("base", "coldstart", "standard", "standard-budget"):
            assert by_method[method]["pruned_share"] is None, method
        samples = [(t, r) for r in read_jsonl(root / "rejection" / "search.jsonl") for t in r["trajectories"]]
        assert len(samples) == TINY.num_candidates * TINY.train_problems
        correct = sum(TASK.is_correct(t["text"], r) for t, r in samples)
        assert by_method["rejection"]["pruned_share"] == pytest.approx(1 - correct / len(samples))
        for method in ("best-of-n", "gen-ssd", "gen-ssd-checked", "random"):
            assert 0 <= by_method[method]["pruned_share"] <= 1
        # The checked variant trains on Gen-SSD's search (run once), its wrong answers dropped.
        summaries = {
            m: json.loads((root / m / "summary.json").read_text()) for m in ("gen-ssd", "gen-ssd-checked")
        }
        assert summaries["gen-ssd-checked"]["search"] == summaries["gen-ssd"]["search"]
        rows = read_jsonl(root / "gen-ssd" / "search.jsonl")
        assert summaries["gen-ssd-checked"]["train"]["examples"] == sum(bool(r["correct"]) for r in rows)
        assert by_method["gen-ssd-checked"]["pruned_share"] >= by_method["gen-ssd"]["pruned_share"]


def test_equal_budget_standard_kd_stops_once_it_has_spent_gen_ssds_tokens(demo):
    out, results = demo
    for seed in results["seeds"]:
        root = out / f"seed{seed}"
        budget = sum(r["teacher_tokens"] for r in read_jsonl(root / "gen-ssd" / "search.jsonl"))
        spent = [r["teacher_tokens"] for r in read_jsonl(root / "standard-budget" / "search.jsonl")]
        assert sum(spent) >= budget > sum(spent[:-1])
        # Plain sampling spends fewer tokens per problem: the budget buys more problems.
        assert len(spent) > TINY.train_problems


def test_methods_are_averaged_over_seeds(demo):
    _, results = demo
    for i, row in enumerate(results["methods"]):
        accuracies = [rows[i]["accuracy"] for rows in results["per_seed"]]
        assert row["seeds"] == accuracies
        assert row["accuracy"] == pytest.approx(statistics.fmean(accuracies))
        assert row["accuracy_std"] == pytest.approx(statistics.stdev(accuracies))
        assert row["teacher_tokens"] == pytest.approx(
            statistics.fmean(r[i]["teacher_tokens"] for r in results["per_seed"])
        )


def test_the_table_and_the_plot_are_written(demo, capsys):
    out, results = demo
    table = (out / "table.txt").read_text()
    header = table.splitlines()[0]
    for column in ("method", "student accuracy", "teacher tokens", "branches pruned"):
        assert column in header
    for row in results["methods"]:
        line = next(line for line in table.splitlines() if line.startswith(row["label"]))
        assert f"{100 * row['accuracy']:.1f}%" in line and f"{row['teacher_tokens']:,.0f}" in line
    png = (out / "accuracy_vs_teacher_tokens.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000


def test_a_rerun_recomputes_nothing(demo, models, monkeypatch, capsys):
    out, results = demo

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    for name in ("search_stage", "train_stage", "eval_stage"):
        monkeypatch.setattr(genssd.distill, name, must_not_run)
    monkeypatch.setattr(genssd.demo, "eval_stage", must_not_run)
    again = run_demo(out, preset=TINY, device="cpu", seed=0, models=models, progress=False)
    assert again["methods"] == results["methods"]
    assert "branches pruned" in capsys.readouterr().out


@pytest.mark.slow
def test_seeds_in_parallel_processes_give_the_same_results(demo, models, tmp_path, capfd):
    _, results = demo
    capfd.readouterr()
    parallel = run_demo(
        tmp_path / "run", preset=TINY, device="cpu", seed=0, models=models, progress=False, jobs=2
    )
    assert parallel["per_seed"] == results["per_seed"]
    assert parallel["methods"] == results["methods"]
    # The workers print no stage lines of their own; the parent reports each finished job.
    captured = capfd.readouterr()
    assert "seed0/gen-ssd: search" not in captured.err
    assert "[genssd] finished seed0/gen-ssd" in captured.out


@pytest.mark.slow
def test_a_failing_job_in_a_worker_process_fails_the_run(models, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(models, broken)
    (broken / "student" / "model.safetensors").write_bytes(b"not a checkpoint")
    # Whatever the loader raises in the worker is raised again in the parent.
    with pytest.raises(Exception, match="deserializing header"):
        run_demo(tmp_path / "run", preset=TINY, device="cpu", seed=0, models=broken, progress=False, jobs=2)
    assert not (tmp_path / "run" / "results.json").exists()


def test_other_settings_in_the_same_folder_are_refused(demo, models, capsys):
    out, _ = demo
    assert main(["demo", "--out", str(out), "--models", str(models), "--device", "cpu", "--seed", "5"]) == 2
    assert "other settings" in capsys.readouterr().err


def test_leap_share_counts_the_lines_of_the_data_a_method_trains_on(tmp_path):
    # Three operations each: a fine solution has 3 one-operation lines, a leap one (2 at most per
    # line) a line of 2 and a line of 1.
    rows = generate_problems(10, 3, num_operands=(4, 4))
    fine = [render_solution(r["numbers"], r["ops"], "fine") for r in rows]
    leap = [render_solution(r["numbers"], r["ops"], "leap", max_leap=2) for r in rows]
    wrong = "#### -1"  # all three operations on one line, and a wrong answer
    for row, fine_text, leap_text in zip(rows, fine, leap):
        row["trajectories"] = [{"text": leap_text}, {"text": fine_text}, {"text": wrong}]
        row["correct"] = True
    write_problems(tmp_path / "search.jsonl", rows)
    assert leap_share(tmp_path / "search.jsonl") == pytest.approx(1 / 2)
    # Every correct trajectory: 10 leap lines among 10 x (2 + 3) lines.
    every_correct = Method("all", "all", "standard", train_on="all", only_correct=True)
    assert leap_share(tmp_path / "search.jsonl", every_correct) == pytest.approx(10 / 50)
    # Without the filter the wrong answers count too.
    assert leap_share(
        tmp_path / "search.jsonl", Method("all", "all", "standard", train_on="all")
    ) == pytest.approx(20 / 60)
    # The equal-data rule at m = 1 keeps the likeliest correct one: the leap solution (1 of 2 lines).
    likeliest = Method("m1", "m1", "standard", train_on="likeliest-correct")
    assert leap_share(tmp_path / "search.jsonl", likeliest) == pytest.approx(1 / 2)


def test_equal_data_methods_keep_m_correct_answers_each():
    preset = dataclasses.replace(PRESETS["quick"], studies=("equal-data-2",))
    rows = {m.key: m for m in methods(preset)}
    assert set(rows) == {
        "standard-correct", "rejection-m2", "post-hoc-m2", "gen-ssd-m2", "morsd-m2", "gen-ssd-n4-m2",
    }  # fmt: skip
    assert rows["rejection-m2"].train_on == "random-correct" and rows["rejection-m2"].per_problem == 2
    assert rows["post-hoc-m2"].train_on == rows["gen-ssd-m2"].train_on == "likeliest-correct"
    assert (
        rows["gen-ssd-m2"].overrides["beam_width"] == 2 and rows["rejection-m2"].overrides["beam_width"] == 4
    )
    # Gen-SSD with n beams, its m likeliest correct kept: as many problems covered as n samples.
    wide = rows["gen-ssd-n4-m2"]
    assert (wide.overrides["beam_width"], wide.train_on, wide.per_problem) == (4, "likeliest-correct", 2)
    at_n = {m.key for m in methods(dataclasses.replace(PRESETS["quick"], studies=("equal-data-4",)))}
    assert "gen-ssd-m4" in at_n and not any(key.startswith("gen-ssd-n") for key in at_n)
    with pytest.raises(UsageError, match="equal-data-M needs M"):
        dataclasses.replace(PRESETS["quick"], studies=("equal-data-5",))


def test_presets_are_well_formed():
    assert {"quick", "full"} <= set(PRESETS)
    assert PRESETS["quick"].seeds == 1 and PRESETS["full"].seeds == 3 and PRESETS["full"].equal_budget


@pytest.mark.parametrize(
    "args, message",
    [
        (["--models", "nowhere"], "no teacher model"),
        (["--device", "tpu"], "device"),
        (["--out", "FILE"], "is a file"),
        (["--jobs", "0"], "jobs must be >= 1"),
    ],
)
def test_bad_input_exits_2(models, tmp_path, capsys, args, message):
    (tmp_path / "FILE").write_text("x")
    args = [str(tmp_path / a) if a in ("nowhere", "FILE") else a for a in args]
    base = ["demo", "--models", str(models), "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(base + args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_config_file_and_set_change_the_presets_keys(tmp_path, capsys):
    """``--config`` (YAML of Preset keys) over ``--preset``, ``--study`` and ``--equal-data`` as
    aliases of ``--set studies=``, ``--set`` last; unknown keys and bad values exit 2 before the run."""
    from genssd.cli import build_parser
    from genssd.commands.demo import demo_preset

    parser = build_parser()
    config = tmp_path / "demo.yaml"
    config.write_text("train_steps: 40\nnum_candidates: 3\nlr: 1e-3\n")
    args = parser.parse_args(["demo", "--preset", "full", "--config", str(config), "--set", "seeds=1"])
    expected = dataclasses.replace(PRESETS["full"], train_steps=40, num_candidates=3, lr=1e-3, seeds=1)
    assert demo_preset(args) == expected
    args = parser.parse_args(
        ["demo", "--equal-data", "2", "--set", "studies=[equal-data-3]", "--set", "num_candidates=4"]
    )
    assert demo_preset(args) == dataclasses.replace(PRESETS["quick"], studies=("equal-data-3",))
    args = parser.parse_args(["demo", "--study", "presets", "--equal-data", "1", "--study", "sweeps"])
    assert demo_preset(args).studies == ("presets", "sweeps", "equal-data-1")
    assert demo_preset(parser.parse_args(["demo", "--set", "studies=iterative"])).studies == ("iterative",)
    assert demo_preset(parser.parse_args(["demo"])) == PRESETS["quick"]
    out = tmp_path / "out"
    for extra, message in [
        (["--set", "train_step=3"], "unknown config key 'train_step' for Preset"),
        (["--equal-data", "9"], "equal-data-M needs M (trajectories a problem) in 1..4"),
        (["--study", "main", "--study", "main"], "a study is named twice"),
        (["--study", "sweep"], "unknown study 'sweep'"),
        (["--set", "train_steps=0"], "at least one held-out problem"),
        (["--config", str(tmp_path / "missing.yaml")], "config file not found"),
    ]:
        assert main(["demo", "--out", str(out), *extra]) == 2, extra
        assert message in capsys.readouterr().err, extra
    config.write_text("train_step: 40\n")
    assert main(["demo", "--out", str(out), "--config", str(config)]) == 2
    assert "unknown config key(s) 'train_step'" in capsys.readouterr().err
    assert not out.exists()


def test_an_unknown_preset_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--preset", "huge"])
    assert exit_info.value.code == 2


@pytest.mark.slow
def test_equal_data_run_trains_each_method_on_at_most_m_correct_answers(models, tmp_path):
    preset = dataclasses.replace(TINY, seeds=1, studies=("equal-data-1",))
    results = run_demo(tmp_path / "run", preset=preset, device="cpu", models=models, progress=False)
    assert [r["method"] for r in results["methods"]] == [
        "base", "coldstart", "standard-correct", "rejection-m1", "post-hoc-m1", "gen-ssd-m1", "morsd-m1",
        "gen-ssd-n2-m1",
    ]  # fmt: skip
    for key in ("rejection-m1", "post-hoc-m1", "gen-ssd-m1", "morsd-m1", "gen-ssd-n2-m1"):
        summary = json.loads((tmp_path / "run" / "seed0" / key / "summary.json").read_text())
        search = read_jsonl(tmp_path / "run" / "seed0" / key / "search.jsonl")
        correct_problems = sum(any(TASK.is_correct(t["text"], r) for t in r["trajectories"]) for r in search)
        assert summary["train"]["examples"] == correct_problems  # one right answer per problem that has one


@pytest.mark.slow
def test_ledger_demo_runs_end_to_end_on_its_own_problems(tmp_path):
    """``--task ledger``: the word problems, the task's room for new tokens, its leap counter."""
    preset = dataclasses.replace(TINY, task="ledger", seeds=1, equal_budget=False, max_new_tokens=None)
    train_rows, _, heldout = demo_problems(preset, 0)
    assert all("events" in row for row in train_rows + heldout)
    fitted = [row for seed in (0, 1) for row in demo_problems(preset, seed)[0]]
    models = arith_models(tmp_path / "models", fitted, steps=300, task="ledger")
    results = run_demo(tmp_path / "run", preset=preset, device="cpu", models=models, progress=False)
    assert results["task"] == "ledger" and results["preset"]["max_new_tokens"] == 112
    assert [r["method"] for r in results["methods"]] == METHODS[:-1]
    shares = [r["leap_share"] for r in results["methods"] if r["leap_share"] is not None]
    assert shares and all(0 <= share <= 1 for share in shares)
    written = read_jsonl(tmp_path / "run" / "seed0" / "data" / "heldout.jsonl")
    assert [row["question"] for row in written] == [row["question"] for row in heldout]


def test_ledger_models_tokenizer_covers_the_task():
    from arith_models import LEDGER_CHARACTERS, char_tokenizer
    from genssd.tasks.ledger import STYLES as LEDGER_STYLES
    from genssd.tasks.ledger import generate_problems as ledger_problems
    from genssd.tasks.ledger import render_solution as ledger_solution

    tokenizer = char_tokenizer(LEDGER_CHARACTERS)
    task = get_task("ledger")
    for row in ledger_problems(100, seed=0):
        for style in LEDGER_STYLES:
            ids = tokenizer(task.prompt(row) + ledger_solution(row, style))["input_ids"]
            assert tokenizer.unk_token_id not in ids


def test_the_held_out_set_is_the_same_for_every_seed_and_apart_from_the_training_problems():
    """So a run of seeds 3-4 adds to one of seeds 0-2 (``--seed 3 --set seeds=2``)."""
    first, _, heldout = demo_problems(TINY, 0)
    other, pool, heldout_other = demo_problems(TINY, 3)
    assert heldout == heldout_other
    assert [r["question"] for r in first] != [r["question"] for r in other]
    questions = {r["question"] for r in heldout}
    assert not questions & {r["question"] for r in first + pool}
    # The budget row's pool begins with the training problems.
    assert pool[: len(other)] == other and len(pool) > len(other)
