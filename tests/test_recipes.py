"""Recipes: ``genssd distill --config FILE`` reads every stage's settings from one YAML; flags and
``--set`` beat it; the shipped recipes validate, and the GSM8K one dry-runs end to end on tiny
models of its families (Qwen2 configs) on CPU."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from genssd.cli import build_parser, main
from genssd.commands.distill import build_plan
from genssd.errors import UsageError
from genssd.tasks.arith import generate_problems, write_problems
from search_fixtures import bpe_tokenizer, tiny_lm  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["distill", *argv])


@pytest.fixture(scope="module")
def arith_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("arith")
    write_problems(root / "train.jsonl", generate_problems(400, seed=0))  # the recipe cold-starts on 300
    write_problems(root / "test.jsonl", generate_problems(3, seed=1))
    return root


def test_the_demo_recipe_sets_every_stage(arith_data, tmp_path):
    plan = build_plan(
        _args(
            "--config", str(RECIPES / "arith-demo.yaml"),
            "--teacher", str(ROOT / "python/genssd/assets/demo/teacher"),
            "--student", str(ROOT / "python/genssd/assets/demo/student"),
            "--data", str(arith_data / "train.jsonl"),
            "--eval-data", str(arith_data / "test.jsonl"),
            "--out", str(tmp_path / "run"),
            "--set", "margin=1.0",
        )
    )  # fmt: skip
    assert plan.task == "arith" and plan.search.method == "gen-ssd"
    assert (plan.search.num_candidates, plan.search.step_delimiter, plan.search.max_new_tokens) == (
        4,
        "\n",
        80,
    )
    assert plan.search.margin == 1.0  # --set beats the recipe
    assert (plan.train.lr, plan.train.max_steps, plan.train.bf16) == (3e-3, 300, False)
    assert plan.evaluation.batch_size == 200 and plan.cold_start.problems == 300 and plan.device == "cpu"


def _tiny_pair(root: Path) -> tuple[Path, Path]:
    """A Qwen2 teacher and a smaller Qwen2 student sharing one tokenizer, saved."""
    tokenizer = bpe_tokenizer(300)
    for name, hidden in (("teacher", 48), ("student", 32)):
        tiny_lm("qwen2", len(tokenizer), seed=len(name), hidden=hidden, eos=[2]).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root / "teacher", root / "student"


def test_the_gsm8k_recipe_dry_runs_on_tiny_models_of_its_families(tmp_path, capsys):
    teacher, student = _tiny_pair(tmp_path)
    rows = [
        {"question": f"What is {a} + {a}?", "answer": f"{a} + {a} = {2 * a}\n#### {2 * a}"} for a in range(4)
    ]
    data = tmp_path / "gsm8k.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = [
        "distill", "--config", str(RECIPES / "qwen2.5-7b-to-0.5b-gsm8k.yaml"),
        "--teacher", str(teacher), "--student", str(student), "--data", str(data), "--eval-data", str(data),
        "--out", str(tmp_path / "run"), "--device", "cpu", "--cold-start", "2", "--no-progress",
        "--set", "max_new_tokens=6", "--set", "batch_size=2", "--train-set", "bf16=false",
        "--train-set", "epochs=1", "--train-set", "batch_size=2", "--train-set", "grad_accum=1",
        "--eval-set", "max_new_tokens=6",
    ]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["eval"]["problems"] == 4 and summary["train"]["steps"] >= 1
    search = [json.loads(line) for line in (tmp_path / "run" / "search.jsonl").read_text().splitlines()]
    assert len(search) == 4 and all(r["method"] == "gen-ssd" for r in search)


def test_recipe_keys_are_checked(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher: t\nmargin: 0.5\n")
    with pytest.raises(UsageError, match=r"unknown key\(s\) margin \(SearchConfig keys go under search:\)"):
        build_plan(_args("--config", str(bad)))
    flat = tmp_path / "flat.yaml"
    flat.write_text("margin: 0.25\nnum_candidates: 2\n")  # SearchConfig keys alone: the search section
    with pytest.raises(UsageError, match="--teacher is required"):
        build_plan(_args("--config", str(flat)))


def test_flags_and_set_beat_the_recipe(arith_data, tmp_path):
    base = [
        "--config", str(RECIPES / "arith-demo.yaml"), "--data", str(arith_data / "train.jsonl"),
        "--eval-data", str(arith_data / "test.jsonl"), "--out", str(tmp_path / "run"),
        "--teacher", str(ROOT / "python/genssd/assets/demo/teacher"),
        "--student", str(ROOT / "python/genssd/assets/demo/student"),
    ]  # fmt: skip
    plan = build_plan(_args(*base, "--set", "seed=7", "--cold-start", "0", "--only-correct"))
    assert plan.search.seed == 7 and plan.train.seed == 0  # --set reaches the search section only
    assert plan.cold_start is None and plan.train.only_correct


def test_recipe_values_are_type_checked_and_flat_search_files_may_name_the_seed(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher: t\ncold_start: '300'\n")
    with pytest.raises(UsageError, match="cold_start must be int"):
        build_plan(_args("--config", str(bad)))
    flat = tmp_path / "flat.yaml"
    flat.write_text("margin: 0.25\nseed: 3\n")
    with pytest.raises(UsageError, match="--teacher is required"):  # read as a search section
        build_plan(_args("--config", str(flat)))


def test_every_command_with_settings_takes_config_and_set(tmp_path, capsys):
    """One convention: each command whose run has settings takes ``--config FILE.yaml`` and a
    repeatable ``--set KEY=VALUE``; an unknown key in either exits 2 (``env`` and ``merge`` have no
    settings)."""
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, sub in commands.items():
        options = {option for action in sub._actions for option in action.option_strings}
        has = {"--config", "--set"} <= options
        assert has == (name not in ("env", "merge")), name
    data = tmp_path / "rows.jsonl"
    write_problems(data, generate_problems(2, seed=1))
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("no_such_key: 1\n")
    # search and distill take the same model and data flags.
    search_flags = [
        "--teacher",
        "t",
        "--student",
        "s",
        "--task",
        "arith",
        "--data",
        str(data),
        "--out",
        str(tmp_path / "o"),
    ]
    argv = {
        "train": ["--model", str(tmp_path), "--data", str(data), "--out", str(tmp_path / "o")],
        "eval": ["--predictions", str(data), "--task", "arith", "--data", str(data)],
        "search": search_flags,
        "distill": search_flags,
        "export": ["--task", "arith", "--data", str(data), "--out", str(tmp_path / "o")],
        "demo": ["--out", str(tmp_path / "o")],
    }
    assert set(argv) == set(commands) - {"env", "merge"}
    for name, args in argv.items():
        for extra in (["--set", "no_such_key=1"], ["--config", str(unknown)]):
            assert main([name, *args, *extra]) == 2, (name, extra)
            assert "no_such_key" in capsys.readouterr().err, (name, extra)
    assert not (tmp_path / "o").exists()
