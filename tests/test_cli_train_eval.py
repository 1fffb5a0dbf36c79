"""``genssd train`` and ``genssd eval`` end to end: torchrun DDP, a real kill + resume, bad input."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import GSM8K_TEST, requires_gsm8k  # noqa: E402
from genssd.cli import main
from genssd.tasks import get_task
from genssd.tasks.arith import generate_problems, write_problems
from safetensors.torch import load_file
from tiny_models import byte_tokenizer, tiny_llama  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("student")
    tokenizer = byte_tokenizer()
    tiny_llama(len(tokenizer), seed=random.randrange(1000)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Search-style rows: each holds a trajectory unlike its gold answer."""
    rows = generate_problems(16, seed=random.randrange(1000))
    for row in rows:
        row["trajectories"] = [{"text": row["answer"].replace("\n", "\n\n"), "student_score": -0.5}]
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    write_problems(path, rows)
    return path


def final_weights(out_dir):
    return load_file(str(Path(out_dir) / "model.safetensors"))


def assert_same(a, b, atol):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0, msg=lambda m, key=key: f"{key}: {m}")


def train_args(model_dir, data, out, *settings, extra=()):
    args = [
        "train",
        "--model",
        str(model_dir),
        "--data",
        str(data),
        "--out",
        str(out),
        "--task",
        "arith",
        "--device",
        "cpu",
        "--no-progress",
        *extra,
    ]
    for setting in ("max_length=256", "lr=2e-3", *settings):
        args += ["--set", setting]
    return args


# ---------------------------------------------------------------------------------------- eval


def predictions_file(path, rows, texts):
    path.write_text(
        "".join(json.dumps({"uid": r["uid"], "prediction": t}) + "\n" for r, t in zip(rows, texts))
    )
    return path


@requires_gsm8k
def test_eval_scores_gsm8k_gold_solutions_100_percent_and_a_shuffle_near_0(tmp_path, capsys):
    rows = get_task("gsm8k").load(GSM8K_TEST)
    gold = predictions_file(tmp_path / "gold.jsonl", rows, [r["answer"] for r in rows])
    out = tmp_path / "scored.jsonl"
    assert (
        main(
            [
                "eval",
                "--predictions",
                str(gold),
                "--task",
                "gsm8k",
                "--data",
                str(GSM8K_TEST),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "accuracy 1.0000 (1319/1319)" in capsys.readouterr().out
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 1319 and all(r["correct"] == [True] for r in records)

    shuffled = [r["answer"] for r in rows]
    random.shuffle(shuffled)
    wrong = predictions_file(tmp_path / "shuffled.jsonl", rows, shuffled)
    assert main(["eval", "--predictions", str(wrong), "--task", "gsm8k", "--data", str(GSM8K_TEST)]) == 0
    accuracy = float(capsys.readouterr().out.split("accuracy ")[1].split()[0])
    assert accuracy < 0.05


@requires_gsm8k
def test_eval_generates_with_a_model_and_writes_predictions(tmp_path, model_dir, capsys):
    rows = generate_problems(7, seed=random.randrange(1000))
    data = tmp_path / "test.jsonl"
    write_problems(data, rows)
    out = tmp_path / "pred.jsonl"
    argv = [
        "eval",
        "--model",
        str(model_dir),
        "--task",
        "arith",
        "--data",
        str(data),
        "--limit",
        "5",
        "--batch-size",
        "2",
        "--max-new-tokens",
        "6",
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert main([*argv, "--out", str(out)]) == 0
    assert "arith: accuracy 0.0000 (0/5) pass@1" in capsys.readouterr().out
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["uid"] for r in records] == [r["uid"] for r in rows[:5]]
    assert all(len(r["predictions"]) == 1 and isinstance(r["predictions"][0], str) for r in records)
    assert main([*argv, "--num-samples", "3", "--temperature", "1.0"]) == 0
    assert "over 3 samples" in capsys.readouterr().out
    # The same settings from a --config file and --set; a flag given beats the file.
    config = tmp_path / "eval.yaml"
    config.write_text("num_samples: 2\ntemperature: 1.0\nmax_new_tokens: 50\n")
    assert main([*argv, "--config", str(config), "--set", "seed=3"]) == 0
    assert "over 2 samples" in capsys.readouterr().out


@requires_gsm8k
def test_eval_bad_input_exits_2(tmp_path, model_dir, capsys):
    assert (
        main(["eval", "--model", str(model_dir), "--task", "arith", "--data", str(tmp_path / "none.jsonl")])
        == 2
    )
    assert "data file not found" in capsys.readouterr().err
    assert (
        main(
            [
                "eval",
                "--model",
                str(model_dir),
                "--task",
                "gsm8k",
                "--data",
                str(GSM8K_TEST),
                "--num-samples",
                "4",
            ]
        )
        == 2
    )
    assert "temperature > 0" in capsys.readouterr().err
    assert (
        main(["eval", "--model", str(tmp_path / "nomodel"), "--task", "gsm8k", "--data", str(GSM8K_TEST)])
        == 2
    )
    assert "no such folder" in capsys.readouterr().err


# --------------------------------------------------------------------------------------- train


def test_train_bad_input_exits_2_with_a_clear_message(tmp_path, model_dir, data, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    no_trajectory = tmp_path / "no_traj.jsonl"
    no_trajectory.write_text(json.dumps({"question": "What is 1 + 1?", "trajectories": []}) + "\n")
    cases = [
        (train_args(model_dir, empty, tmp_path / "o1"), "no rows"),
        (train_args(model_dir, no_trajectory, tmp_path / "o2"), "no trajectory text"),
        (
            train_args(model_dir, data, tmp_path / "o3", "max_length=8"),
            "leaves no room for the completion within max_length=8",
        ),
        (
            train_args(model_dir, data, tmp_path / "o4", "learning_rate=1e-3"),
            "unknown config key 'learning_rate'",
        ),
        (train_args(model_dir, data, tmp_path / "o5", "batch_size=64"), "fewer than one step's batch"),
        (train_args(tmp_path / "nomodel", data, tmp_path / "o6"), "no such folder"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("genssd train: error:") and message in err, err
        assert len(err.strip().splitlines()) == 1


def test_train_writes_a_loadable_model_and_a_log(tmp_path, model_dir, data):
    out = tmp_path / "out"
    assert main(train_args(model_dir, data, out, "batch_size=4", "max_steps=3", "log_every=1")) == 0
    log = [json.loads(line) for line in (out / LOG_NAME).read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert (
        main(
            [
                "eval",
                "--model",
                str(out),
                "--task",
                "arith",
                "--data",
                str(data),
                "--limit",
                "2",
                "--max-new-tokens",
                "4",
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )


LOG_NAME = "train_log.jsonl"


@pytest.mark.slow
def test_torchrun_with_2_processes_equals_1_process_with_the_same_global_batch(tmp_path, model_dir, data):
    single = tmp_path / "single"
    assert main(train_args(model_dir, data, single, "batch_size=4", "grad_accum=2", "max_steps=3")) == 0
    ddp = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "genssd.cli",
        *train_args(model_dir, data, ddp, "batch_size=2", "grad_accum=2", "max_steps=3"),
    ]
    done = subprocess.run(command, check=False, env=ENV, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained to step 3") == 1  # rank 0 reports
    assert_same(final_weights(single), final_weights(ddp), atol=1e-5)
    initial = load_file(str(model_dir / "model.safetensors"))
    assert any((initial[k] - v).abs().max() > 1e-4 for k, v in final_weights(ddp).items())


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_equals_an_uninterrupted_run(tmp_path, model_dir, data):
    settings = ("batch_size=4", "max_steps=60", "save_every=1")
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "genssd.cli", *train_args(model_dir, data, killed, *settings)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while not (killed / "checkpoint-3").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert not (killed / "model.safetensors").exists()

    assert main(train_args(model_dir, data, killed, *settings, extra=["--resume"])) == 0
    full = tmp_path / "full"
    assert main(train_args(model_dir, data, full, *settings)) == 0
    assert_same(final_weights(full), final_weights(killed), atol=0)
