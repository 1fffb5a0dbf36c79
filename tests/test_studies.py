"""The demo's studies (``genssd.studies``): which methods each question compares, methods shared
between studies run once, searches shared between methods run once, and a folder that gains a
study runs only the new methods."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import genssd.distill
import genssd.studies
import pytest
import torch
from arith_models import arith_models
from genssd.demo import _search_config, demo_problems, methods, run_demo, search_owners
from genssd.errors import UsageError
from genssd.runs import write_marker
from genssd.studies import ITERATIVE_ROUNDS, STANDARD_BUDGET, Method, methods_of, study_methods
from test_demo import TINY

FULL_GRID = ("main", "equal-data-1", "equal-data-4", "presets", "iterative", "sweeps")


def _changed_settings(method: Method, baseline: Method, n: int) -> dict:
    """The SearchConfig fields in which ``method``'s search differs from ``baseline``'s."""
    preset = dataclasses.replace(TINY, num_candidates=n)
    ours = dataclasses.asdict(_search_config(method.preset, method.overrides, preset, 0))
    base = dataclasses.asdict(_search_config(baseline.preset, baseline.overrides, preset, 0))
    return {k: ours[k] for k in ours if ours[k] != base[k] and k != "method"}


def test_every_sweep_changes_one_setting_of_the_demos_gen_ssd():
    rows = {m.key: m for m in study_methods("sweeps", 4)}
    gen_ssd = rows.pop("gen-ssd")
    changed = {key: _changed_settings(m, gen_ssd, 4) for key, m in rows.items()}
    assert changed == {
        "gen-ssd-margin-0.25": {"margin": 0.25},
        "gen-ssd-margin-1": {"margin": 1.0},
        "gen-ssd-margin-2": {"margin": 2.0},
        "gen-ssd-margin-inf": {"margin": float("inf")},
        "gen-ssd-k2": {"num_candidates": 2},
        "gen-ssd-k8": {"num_candidates": 8},
        # a chunk of tokens instead of a line: no delimiter, and the chunk's length
        "gen-ssd-chunk16": {"step_delimiter": None, "chunk_tokens": 16},
        "gen-ssd-chunk32": {"step_delimiter": None},
        "gen-ssd-chunk-scope": {"score_scope": "chunk"},
    }
    assert all(m.train_on == "best" and not m.only_correct for m in rows.values())


def test_the_presets_study_compares_ours_the_papers_rule_and_morsd_at_equal_budget():
    rows = {m.key: m for m in study_methods("presets", 4)}
    assert set(rows) == {
        "standard-budget", "rejection", "morsd-m1", "gen-ssd", "gen-ssd-checked", "gen-ssd-paper",
        "gen-ssd-paper-checked",
    }  # fmt: skip
    paper = _search_config("gen-ssd-paper", rows["gen-ssd-paper"].overrides, TINY, 0)
    assert (paper.margin, paper.score_scope, paper.max_ppl, paper.step_delimiter) == (
        float("inf"), "chunk", 10.0, "\n",
    )  # fmt: skip
    assert rows["gen-ssd-paper-checked"].only_correct and not rows["gen-ssd-paper"].only_correct
    assert rows["morsd-m1"].train_on == "morsd" and rows["morsd-m1"].per_problem == 1
    assert rows["standard-budget"].budget_of == "gen-ssd"


def test_the_iterative_study_splits_the_problems_and_the_steps_into_rounds():
    rows = {m.key: m for m in study_methods("iterative", 4)}
    rounds = rows[f"gen-ssd-r{ITERATIVE_ROUNDS}"]
    assert rounds.rounds == ITERATIVE_ROUNDS and not rounds.shares_search
    assert rows[f"gen-ssd-r{ITERATIVE_ROUNDS}-checked"].only_correct
    assert rows["gen-ssd"].rounds == 1


def test_studies_share_their_common_methods_and_refuse_conflicting_ones():
    chosen = methods_of(FULL_GRID, 4, equal_budget=True)
    keys = [m.key for m in chosen]
    assert len(keys) == len(set(keys))
    expected = {m.key for name in FULL_GRID for m in study_methods(name, 4, True)}
    assert set(keys) == expected
    assert keys[:7] == [m.key for m in study_methods("main", 4, True)]  # study order, first seen


def test_a_budget_row_without_its_source_and_a_key_defined_twice_are_refused(monkeypatch):
    # A study whose budget row has no Gen-SSD beside it.
    monkeypatch.setattr(genssd.studies, "iterative_methods", lambda n: [STANDARD_BUDGET])
    with pytest.raises(UsageError, match="a budget row needs the method"):
        methods_of(("iterative",), 4)
    # A study that means something else by "gen-ssd" than another one does.
    monkeypatch.setattr(genssd.studies, "sweep_methods", lambda n: [Method("gen-ssd", "Gen-SSD", "random")])
    with pytest.raises(UsageError, match="'gen-ssd' differs between studies"):
        methods_of(("main", "sweeps"), 4)
    assert [m.key for m in methods_of(("sweeps",), 4)] == ["gen-ssd"]


def test_searches_with_the_same_settings_run_once_per_seed():
    preset = dataclasses.replace(TINY, num_candidates=4, studies=FULL_GRID)
    owners = search_owners(methods(preset), preset, Path("nowhere"))
    assert owners == {
        "gen-ssd-checked": "gen-ssd",
        "gen-ssd-m1": "gen-ssd",  # beam_width 1 is Gen-SSD's default
        "standard-correct": "standard",
        "rejection-m1": "rejection",
        "post-hoc-m1": "rejection",
        "morsd-m1": "rejection",
        "rejection-m4": "rejection",
        "post-hoc-m4": "rejection",
        "morsd-m4": "rejection",
        "gen-ssd-m4": "gen-ssd-n4-m1",  # four beams, for one correct answer a problem or four
        "gen-ssd-paper-checked": "gen-ssd-paper",
    }
    # Rounds search with their own students and a budget row with its own budget: never shared.
    assert not {"gen-ssd-r3", "gen-ssd-r3-checked", "standard-budget"} & set(owners)


def test_a_finished_search_is_the_one_shared(tmp_path):
    """A folder that gained a study reuses the search it holds, whichever method ran it."""
    preset = dataclasses.replace(TINY, studies=("main", "equal-data-1"))
    chosen = methods(preset)
    assert search_owners(chosen, preset, tmp_path)["gen-ssd-m1"] == "gen-ssd"
    write_marker(tmp_path / "gen-ssd-m1", "search", {"problems": 1})
    owners = search_owners(chosen, preset, tmp_path)
    assert owners["gen-ssd"] == owners["gen-ssd-checked"] == "gen-ssd-m1" and "gen-ssd-m1" not in owners


def test_rounds_need_as_many_training_steps():
    with pytest.raises(UsageError, match="train_steps must be >= 3"):
        dataclasses.replace(TINY, train_steps=2, studies=("iterative",))
    dataclasses.replace(TINY, train_steps=2, studies=("main",))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    rows = [row for seed in (0, 1) for row in demo_problems(TINY, seed)[0]]
    with torch.random.fork_rng():
        return arith_models(tmp_path_factory.mktemp("models"), rows, steps=300)


@pytest.mark.slow
def test_a_folder_that_gains_a_study_runs_only_its_new_methods(models, tmp_path, monkeypatch):
    searched, trained = [], []
    search_stage, train_stage = genssd.distill.search_stage, genssd.distill.train_stage

    def counting_search(path, *args, **kwargs):
        searched.append(f"{path.parent.parent.name}/{path.parent.name}")
        return search_stage(path, *args, **kwargs)

    def counting_train(path, *args, **kwargs):
        trained.append((f"{path.parent.parent.name}/{path.parent.name}", args[3].max_steps))
        return train_stage(path, *args, **kwargs)

    monkeypatch.setattr(genssd.distill, "search_stage", counting_search)
    monkeypatch.setattr(genssd.distill, "train_stage", counting_train)
    # Batches of one: a round's block of four problems may hold a single right answer.
    preset = dataclasses.replace(TINY, seeds=1, train_steps=6, train_batch_size=1, studies=("iterative",))
    out = tmp_path / "run"
    first = run_demo(out, preset=preset, device="cpu", models=models, progress=False)
    assert [r["method"] for r in first["methods"]] == [
        "base", "coldstart", "gen-ssd", "gen-ssd-checked", "gen-ssd-r3", "gen-ssd-r3-checked",
    ]  # fmt: skip
    rounds = [f"gen-ssd-r3{suffix}/round{r}" for suffix in ("", "-checked") for r in range(3)]
    # The checked variant trains on Gen-SSD's own search: searched once for both.
    assert sorted(searched) == sorted(["seed0/coldstart", "seed0/gen-ssd", *rounds])
    steps = dict(trained)
    assert steps["seed0/gen-ssd"] == steps["seed0/gen-ssd-checked"] == 6
    assert all(steps[r] == 2 for r in rounds)  # the same six steps, split between the rounds
    shared = [(out / "seed0" / m / "search.jsonl").read_text() for m in ("gen-ssd", "gen-ssd-checked")]
    assert shared[0] == shared[1]
    assert first["studies"] == {
        "iterative": ["gen-ssd", "gen-ssd-checked", "gen-ssd-r3", "gen-ssd-r3-checked"]
    }

    searched.clear(), trained.clear()
    more = dataclasses.replace(preset, studies=("iterative", "equal-data-1"))
    second = run_demo(out, preset=more, device="cpu", models=models, progress=False)
    # Only the new study's methods ran, and its Gen-SSD took the first run's search.
    assert sorted(searched) == ["seed0/gen-ssd-n2-m1", "seed0/rejection-m1", "seed0/standard-correct"]
    assert {m for m, _ in trained} == {
        "seed0/standard-correct", "seed0/rejection-m1", "seed0/post-hoc-m1", "seed0/gen-ssd-m1",
        "seed0/morsd-m1", "seed0/gen-ssd-n2-m1",
    }  # fmt: skip
    assert (out / "seed0" / "gen-ssd-m1" / "search.jsonl").read_text() == shared[0]
    before = {r["method"]: r for r in first["methods"]}
    for row in second["methods"]:
        if row["method"] in before:
            assert row == before[row["method"]]
    assert set(json.loads((out / "results.json").read_text())["studies"]) == {"iterative", "equal-data-1"}

    # The study tables read the rows back: paired differences are the seed's accuracy differences.
    tables = _load_script("study_tables")
    table = tables.study_table("equal-data-1", tables.seed_rows(out), TINY.num_candidates)
    assert table["reference"] == "gen-ssd-m1"
    rows = {r["method"]: r for r in table["rows"]}
    assert set(rows) == {
        "standard-correct", "rejection-m1", "post-hoc-m1", "gen-ssd-m1", "morsd-m1", "gen-ssd-n2-m1",
    }  # fmt: skip
    final = {r["method"]: r for r in second["methods"]}
    for key, row in rows.items():
        assert row["accuracy"] == [final[key]["accuracy"]]
        if key != "gen-ssd-m1":
            difference = final[key]["accuracy"] - final["gen-ssd-m1"]["accuracy"]
            assert row["vs_reference"]["differences"] == [pytest.approx(difference)]
    assert "| MoRSD (1 of n=2) |" in tables.markdown(table)
    # A finished run's results.json alone gives the same rows, settings and studies.
    kept, folders = tables.seed_rows(out / "results.json"), tables.seed_rows(out)
    assert list(kept) == list(folders) == ["seed0"]
    fields = ("method", "accuracy", "teacher_tokens", "leap_share")
    for key, row in folders["seed0"].items():
        assert [kept["seed0"][key][f] for f in fields] == [row[f] for f in fields]
    assert tables.settings_of(out / "results.json") == tables.settings_of(out)
    assert tables.studies_of(out / "results.json") == tables.studies_of(out) == list(second["studies"])

    # The run's analysis reads the markers too: at most one example a problem at M = 1, the
    # answer check's examples are the problems whose search answer was right.
    analysis = _load_script("analyze_demo_run").analyze(out)["seed0"]
    problems = TINY.train_problems
    for key in ("rejection-m1", "post-hoc-m1", "gen-ssd-m1", "standard-correct"):
        assert 0 < analysis[key]["markers"]["examples_trained_on"] <= problems
    one_beam = analysis["gen-ssd-m1"]["markers"]
    assert one_beam["examples_trained_on"] == round(one_beam["search_answer_right"] * problems)


def _load_script(name: str):
    """A script of experiments/ as a module."""
    path = Path(__file__).resolve().parents[1] / "experiments" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_study_tables_mark_differences_within_two_standard_errors():
    """A paired difference is marked when |mean| <= 2 * std / sqrt(seeds), and only then."""
    tables = _load_script("study_tables")
    accuracy = {
        "gen-ssd": [0.50, 0.60, 0.55],
        "gen-ssd-margin-1": [0.55, 0.66, 0.62],  # +5, +6, +7: mean 6, error 0.58
        "gen-ssd-margin-2": [0.55, 0.56, 0.56],  # +5, -4, +1: mean 0.67, error 2.6
    }
    per_seed = {
        f"seed{i}": {
            m: {"accuracy": a[i], "teacher_tokens": 1.0, "leap_share": None} for m, a in accuracy.items()
        }
        for i in range(3)
    }
    for i, value in enumerate([0.60, 0.71]):  # K = 2 on two seeds only: +10, +11
        per_seed[f"seed{i}"]["gen-ssd-k2"] = {"accuracy": value, "teacher_tokens": 1.0, "leap_share": None}
    table = tables.study_table("sweeps", per_seed, 4)
    paired = {r["method"]: r["vs_reference"] for r in table["rows"] if "vs_reference" in r}
    assert paired["gen-ssd-k2"]["seeds"] == ["seed0", "seed1"]
    assert paired["gen-ssd-k2"]["within_two_errors"] is False
    for method, values in accuracy.items():
        if method == "gen-ssd":
            continue
        diffs = [v - r for v, r in zip(values, accuracy["gen-ssd"])]
        mean = sum(diffs) / 3
        error = (sum((d - mean) ** 2 for d in diffs) / 2) ** 0.5 / 3**0.5
        assert paired[method]["standard_error"] == pytest.approx(error)
        assert paired[method]["within_two_errors"] == (abs(mean) <= 2 * error)
    assert [paired[m]["within_two_errors"] for m in ("gen-ssd-margin-1", "gen-ssd-margin-2")] == [False, True]
    text = tables.markdown(table)
    assert text.count(" †") == 1 and "†: within two standard errors" in text
    assert "| Gen-SSD, K = 2 | 65.5 ± 7.8% (2 seeds) |" in text


def test_study_tables_pair_results_files_with_run_folders(tmp_path):
    """Results JSONs of several seeds and a run folder of others make one table; a row paired on
    fewer seeds than it has names them, and the branches pruned are the seeds' mean."""
    tables = _load_script("study_tables")
    preset = {"task": "arith", "num_candidates": 4, "seeds": 2, "name": "full"}

    def row(method, accuracy, pruned=None):
        return {
            "method": method,
            "accuracy": accuracy,
            "teacher_tokens": 10,
            "leap_share": 0.1,
            "pruned_share": pruned,
        }

    results = tmp_path / "results.json"
    results.write_text(json.dumps({
        "preset": {**preset, "studies": ["main"], "equal_budget": True},
        "seeds": [3, 5],  # not 0, 1: the rows are paired with these names
        "studies": {"main": ["standard", "gen-ssd", "gen-ssd-checked"]},
        "per_seed": [
            [row("standard", 0.50), row("gen-ssd", 0.40, 0.02), row("gen-ssd-checked", 0.45, 0.04)],
            [row("standard", 0.70), row("gen-ssd", 0.60, 0.04), row("gen-ssd-checked", 0.66, 0.08)],
        ],
    }))  # fmt: skip
    folder = tmp_path / "more"
    (folder / "seed7" / "standard").mkdir(parents=True)
    (folder / "seed7" / "standard" / "row.json").write_text(json.dumps(row("standard", 0.90)))
    (folder / "run.json").write_text(json.dumps({"preset": {**preset, "seeds": 1}}))

    assert tables.settings_of(results) == tables.settings_of(folder)
    assert tables.studies_of(results) == ["main"] and tables.studies_of(folder) is None
    per_seed = tables.seed_rows(results, folder)
    assert list(per_seed) == ["seed3", "seed5", "seed7"]
    table = tables.study_table("main", per_seed, 4)
    rows = {r["method"]: r for r in table["rows"]}
    assert rows["standard"]["accuracy"] == [0.50, 0.70, 0.90]
    assert rows["standard"]["vs_reference"]["differences"] == [pytest.approx(0.10), pytest.approx(0.10)]
    assert rows["gen-ssd-checked"]["pruned_share"] == pytest.approx(0.06)
    text = tables.markdown(table)
    assert (
        "| standard KD | 70.0 ± 20.0% | 10 | - | 10.0% | +10.0 ± 0.0 | +10.0 / +10.0 (seeds 3, 5) |" in text
    )
    assert (
        "| Gen-SSD + answer check | 55.5 ± 14.8% (2 seeds) | 10 | 6.0% | 10.0% | +5.5 ± 0.7 | +5.0 / +6.0 |"
        in text
    )
    with pytest.raises(SystemExit, match="seed3 is in more than one"):
        tables.seed_rows(results, results)
    old = tmp_path / "old.json"  # results written before the studies were recorded
    old.write_text(json.dumps({"preset": preset, "seeds": [0], "per_seed": [[row("standard", 0.5)]]}))
    assert tables.studies_of(old) is None
