"""``genssd search`` / ``genssd merge`` end to end on tiny saved models.

Covers the output rows' fields, resuming after a SIGKILL mid-file, ``--shard`` + ``merge`` and
``torchrun`` equal to one unsharded run, the real GSM8K test file, and bad input (exit code 2,
one message, no row written).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import GSM8K_TEST, requires_gsm8k  # noqa: E402
from genssd.cli import main
from genssd.data import read_output
from genssd.search import SearchResult, Trajectory
from genssd.search_file import output_row
from genssd.tasks import get_task
from search_fixtures import bpe_tokenizer, single_thread, tiny_lm  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_PROBLEMS = 40
ROW_KEYS = {
    "uid",
    "question",
    "answer",
    "method",
    "config_hash",
    "seed",
    "trajectories",
    "pruned_early",
    "teacher_tokens",
    "student_tokens",
    "predicted_answer",
    "correct",
}
# CPU everywhere, so every run of this module computes alike (also on a machine with a GPU).
SEARCH = (
    "--set num_candidates=3 --set chunk_tokens=4 --set max_new_tokens=12 --set batch_size=4 "
    "--set temperature=1.0 --seed 7 --device cpu --no-progress"
).split()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Saved teacher and student (sharing a tokenizer) and a GSM8K-style data file."""
    root = tmp_path_factory.mktemp("cli")
    tokenizer = bpe_tokenizer(300)
    teacher = tiny_lm("llama", len(tokenizer), seed=71, hidden=48, eos=[2, 30, 31, 32])
    student = tiny_lm("qwen2", len(tokenizer), seed=72)
    for name, model in (("teacher", teacher), ("student", student)):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    with (root / "data.jsonl").open("w") as f:
        for i in range(NUM_PROBLEMS):
            a, b = 3 + i, 2 * i + 1
            f.write(
                json.dumps(
                    {
                        "question": f"Tom has {a} apples and buys {b} more. How many now?",
                        "answer": f"{a} + {b} = {a + b}\n#### {a + b}",
                    }
                )
                + "\n"
            )
    return root


def _args(workdir, out, *extra, data=None, settings=SEARCH):
    return [
        "search",
        "--teacher",
        str(workdir / "teacher"),
        "--student",
        str(workdir / "student"),
        "--task",
        "gsm8k",
        "--data",
        str(data or workdir / "data.jsonl"),
        "--out",
        str(out),
        *settings,
        *extra,
    ]


@pytest.fixture(scope="module")
def reference(workdir):
    """One uninterrupted, unsharded run."""
    out = workdir / "reference.jsonl"
    with single_thread():
        assert main(_args(workdir, out)) == 0
    return read_output(out)


def _same_rows(a: list[dict], b: list[dict]) -> None:
    """Equal rows; floats to 1e-5 (another batch composition may round differently)."""
    assert [r["uid"] for r in a] == [r["uid"] for r in b]

    def same(x, y):
        if isinstance(x, float) and isinstance(y, float):
            return math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-5)
        if isinstance(x, dict) and isinstance(y, dict):
            return x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
        if isinstance(x, list) and isinstance(y, list):
            return len(x) == len(y) and all(same(u, v) for u, v in zip(x, y))
        return x == y

    for ra, rb in zip(a, b):
        assert same(ra, rb), (ra["uid"], ra, rb)


def test_rows_have_the_documented_fields(workdir, reference, capsys):
    assert len(reference) == NUM_PROBLEMS
    task = get_task("gsm8k")
    for row in reference:
        assert set(row) == ROW_KEYS
        assert row["method"] == "gen-ssd" and row["seed"] == 7 and isinstance(row["correct"], bool)
        (trajectory,) = row["trajectories"]
        assert set(trajectory) == {"text", "student_score", "num_tokens", "chunks"}
        assert {"candidate_scores", "chosen", "num_candidates"} <= set(trajectory["chunks"][0])
        assert row["predicted_answer"] == task.extract_answer(trajectory["text"])
        assert row["teacher_tokens"] >= trajectory["num_tokens"]
    assert len({r["config_hash"] for r in reference}) == 1
    # A rerun with the same --out has nothing left to do.
    capsys.readouterr()
    assert main(_args(workdir, workdir / "reference.jsonl")) == 0
    assert "0 rows written" in capsys.readouterr().err
    assert read_output(workdir / "reference.jsonl") == reference


def test_output_row_grades_the_best_trajectory():
    task = get_task("gsm8k")
    row = {"uid": "u1", "question": "What is 2 + 3?", "answer": "2 + 3 = 5\n#### 5", "source": "test"}
    from genssd.config import SearchConfig

    def result(text):
        return SearchResult("p", [Trajectory(text, [1, 2], -1.5, 2, [])], False, 8, 8)

    good = output_row(row, result("so 2 + 3 = 5\n#### 5"), task, SearchConfig(), "h")
    bad = output_row(row, result("so 2 + 3 = 6\n#### 6"), task, SearchConfig(), "h")
    assert (good["predicted_answer"], good["correct"]) == ("5", True)
    assert (bad["predicted_answer"], bad["correct"]) == ("6", False)
    assert good["source"] == "test" and list(good)[:3] == ["uid", "question", "answer"]
    empty = output_row(row, SearchResult("p", [], True, 8, 8), task, SearchConfig(), "h")
    assert (empty["predicted_answer"], empty["correct"], empty["pruned_early"]) == (None, False, True)


@pytest.mark.slow
def test_sigkill_mid_file_then_rerun_loses_and_duplicates_nothing(workdir, reference):
    out = workdir / "killed.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # One prompt per batch makes the first run slow enough to kill; the batch size does not
    # change results (nor the config hash), so the rerun may use another.
    first = _args(workdir, out, "--set", "batch_size=1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "genssd.cli", *first],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= 5:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    done = read_output(out)
    assert 5 <= len(done) < NUM_PROBLEMS
    if out.read_bytes().endswith(b"\n"):  # the kill fell between rows: also cut the next one short
        with out.open("ab") as f:
            f.write(json.dumps(reference[len(done)]).encode()[:50])
    assert main(_args(workdir, out)) == 0
    _same_rows(read_output(out), reference)
    assert out.read_bytes().count(b"\n") == NUM_PROBLEMS  # no leftover partial line


def test_shards_merged_equal_one_unsharded_run(workdir, reference):
    shards = [workdir / f"shard{i}.jsonl" for i in range(3)]
    for i, path in enumerate(shards):
        assert main(_args(workdir, path, "--shard", f"{i}/3")) == 0
    lengths = [len(read_output(p)) for p in shards]
    assert sum(lengths) == NUM_PROBLEMS and min(lengths) > 0
    merged = workdir / "merged.jsonl"
    assert main(["merge", str(merged), *map(str, shards), str(shards[0])]) == 0  # a repeated shard is deduped
    _same_rows(read_output(merged), reference)


@pytest.mark.slow
def test_torchrun_ranks_search_their_shards_and_rank0_merges(workdir, reference):
    out = workdir / "torchrun.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29533",
            "-m",
            "genssd.cli",
            *_args(workdir, out, "--limit", "12"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in workdir.glob("torchrun*")) == [
        "torchrun.jsonl",
        "torchrun.shard0of2.jsonl",
        "torchrun.shard1of2.jsonl",
    ]
    _same_rows(read_output(out), reference[:12])


@requires_gsm8k
def test_real_gsm8k_test_file(workdir):
    out = workdir / "gsm8k.jsonl"
    settings = ["--set", "max_new_tokens=8", "--device", "cpu", "--no-progress"]
    assert (
        main(_args(workdir, out, "--limit", "3", "--method", "best-of-n", data=GSM8K_TEST, settings=settings))
        == 0
    )
    rows = read_output(out)
    gold = get_task("gsm8k").load(GSM8K_TEST)[:3]
    assert [r["uid"] for r in rows] == [g["uid"] for g in gold]
    assert [r["question"] for r in rows] == [g["question"] for g in gold]
    assert all(r["method"] == "best-of-n" and len(r["trajectories"][0]["chunks"]) == 1 for r in rows)


def _bad_data(tmp_path, content):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    return path


BAD_INPUTS = {
    "missing data file": lambda w, t: _args(w, t / "o.jsonl", data=t / "missing.jsonl"),
    "malformed data file": lambda w, t: _args(
        w, t / "o.jsonl", data=_bad_data(t, '{"question": "a?", "answer": "#### 1"}\nnot json\n')
    ),
    "unknown task": lambda w, t: _args(w, t / "o.jsonl", "--task", "chess"),
    "empty question": lambda w, t: _args(
        w, t / "o.jsonl", data=_bad_data(t, '{"question": " ", "answer": "#### 1"}\n')
    ),
    "num_candidates < 1": lambda w, t: _args(w, t / "o.jsonl", "--set", "num_candidates=0"),
    "unknown config key": lambda w, t: _args(w, t / "o.jsonl", "--set", "num_candidate=2"),
    "devices differ": lambda w, t: _args(w, t / "o.jsonl", "--device", "cpu", "--student-device", "meta"),
    "bad shard": lambda w, t: _args(w, t / "o.jsonl", "--shard", "3/2"),
    "missing config file": lambda w, t: _args(w, t / "o.jsonl", "--config", str(t / "none.yaml")),
    "missing model": lambda w, t: _args(w, t / "o.jsonl", "--teacher", str(t / "no-model")),
    "prompt past the context": lambda w, t: _args(w, t / "o.jsonl", "--set", "max_new_tokens=600"),
    "static engine forced on an unsupported teacher": lambda w, t: _args(
        w, t / "o.jsonl", "--teacher", str(_gpt2_teacher(t)), "--engine", "static"
    ),
}


def _gpt2_teacher(tmp_path):
    """A saved GPT-2 (a family the static engine does not run) with the test tokenizer."""
    tokenizer = bpe_tokenizer(300)
    tiny_lm("gpt2", len(tokenizer), layers=1, tie=True).save_pretrained(tmp_path / "gpt2")
    tokenizer.save_pretrained(tmp_path / "gpt2")
    return tmp_path / "gpt2"


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_with_one_message_and_no_row(workdir, tmp_path, capsys, case):
    args = BAD_INPUTS[case](workdir, tmp_path)  # a repeated option: argparse keeps the last
    capsys.readouterr()  # what setting up the case printed
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("genssd search: error: "), err
    assert not (tmp_path / "o.jsonl").exists()


def test_resuming_with_another_config_is_refused(workdir, capsys):
    before = (workdir / "reference.jsonl").read_bytes()
    assert main(_args(workdir, workdir / "reference.jsonl", "--set", "margin=0.25")) == 2
    assert "another configuration" in capsys.readouterr().err
    assert (workdir / "reference.jsonl").read_bytes() == before


def test_unknown_method_is_an_argparse_error(workdir, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(_args(workdir, tmp_path / "o.jsonl", "--method", "magic"))
    assert exc.value.code == 2


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--teacher", "runs/nowhere/teacher", "no such folder: runs/nowhere/teacher"),
        ("--student", "./nope", "no such folder: ./nope"),
        ("--out", "/proc/genssd-out.jsonl", "--out /proc/genssd-out.jsonl is not writable"),
    ],
)
def test_missing_folders_and_unwritable_outputs_fail_before_loading(
    workdir, tmp_path, capsys, monkeypatch, flag, value, message
):
    loaded = []
    monkeypatch.setattr("genssd.models.load_model", lambda source, **_: loaded.append(source))
    args = _args(workdir, tmp_path / "o.jsonl", flag, value)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Loading" not in err
    assert loaded == []  # neither model was loaded (a missing --student fails before the teacher loads)
