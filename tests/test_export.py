"""``genssd export``: search rows as a dataset that ``datasets.load_dataset`` reads, with the
correctness and top-m filters and the provenance columns."""

from __future__ import annotations

import json

import pytest
import torch
from genssd.cli import main
from genssd.export import export_records
from genssd.tasks import get_task
from genssd.tasks.arith import generate_problems

ARITH = get_task("arith")


def _search_rows(count: int = 4) -> list[dict]:
    """Search-output rows with three trajectories each: right, wrong, right (best first)."""
    rows = []
    for row in generate_problems(count, seed=5):
        gold = ARITH.gold_answer(row)
        texts = [row["answer"], f"{row['answer'].split('####')[0]}#### {int(gold) + 1}", row["answer"] + "\n"]
        rows.append(
            {
                **row,
                "method": "gen-ssd",
                "config_hash": "abc123",
                "trajectories": [{"text": t, "student_score": -0.1 * (i + 1)} for i, t in enumerate(texts)],
            }
        )
    return rows


def test_records_filter_and_keep_provenance():
    rows = _search_rows()
    every = export_records(rows, ARITH)
    assert len(every) == 12 and [r["rank"] for r in every[:3]] == [0, 1, 2]
    assert every[0]["prompt"] == ARITH.prompt(rows[0]) and every[0]["completion"] == rows[0]["answer"]
    assert [r["correct"] for r in every[:3]] == [True, False, True]
    correct_top1 = export_records(rows, ARITH, only_correct=True, top_m=1)
    assert len(correct_top1) == 4 and all(r["correct"] and r["rank"] == 0 for r in correct_top1)
    correct = export_records(rows, ARITH, only_correct=True)
    assert [r["rank"] for r in correct[:2]] == [0, 2]
    messages = export_records(rows, ARITH, format="messages", top_m=2)
    assert messages[0]["messages"] == [
        {"role": "user", "content": rows[0]["question"]},
        {"role": "assistant", "content": rows[0]["answer"]},
    ]
    assert len(messages) == 8


@pytest.mark.parametrize("fmt", ["prompt-completion", "messages"])
def test_cli_writes_what_datasets_loads(tmp_path, capsys, fmt):
    datasets = pytest.importorskip("datasets")
    search = tmp_path / "search.jsonl"
    search.write_text("".join(json.dumps(r) + "\n" for r in _search_rows()))
    out = tmp_path / "exported" / "gsm"
    args = ["export", "--data", str(search), "--task", "arith", "--out", str(out), "--format", fmt]
    assert main([*args, "--only-correct"]) == 0
    assert "8 records written" in capsys.readouterr().err
    loaded = datasets.load_dataset("json", data_files=str(out / "train.jsonl"), split="train")
    assert loaded.num_rows == 8 and set(loaded["method"]) == {"gen-ssd"} and all(loaded["correct"])
    columns = {"prompt", "completion"} if fmt == "prompt-completion" else {"messages"}
    assert columns | {"uid", "config_hash", "rank", "student_score"} <= set(loaded.column_names)


def test_cli_bad_input_exits_2(tmp_path, capsys):
    search = tmp_path / "search.jsonl"
    search.write_text("".join(json.dumps(r) + "\n" for r in _search_rows(1)))
    base = ["export", "--task", "arith", "--out", str(tmp_path / "out")]
    assert main([*base, "--data", str(tmp_path / "missing.jsonl")]) == 2
    assert main(["export", "--task", "arith", "--data", str(search), "--out", str(search)]) == 2
    assert main([*base, "--data", str(search), "--top-m", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert [line.split(": error: ")[1].split(" ")[0] for line in err] == ["data", "--out", "top_m"]
    assert not (tmp_path / "out").exists()


def test_cli_config_file_and_set_like_every_command(tmp_path, capsys):
    """``--config`` holds ExportConfig keys, ``--set`` and the flags (its aliases) override it;
    unknown keys and bad values exit 2 before anything is written."""
    search = tmp_path / "search.jsonl"
    search.write_text("".join(json.dumps(r) + "\n" for r in _search_rows()))
    config = tmp_path / "export.yaml"
    config.write_text("format: messages\nonly_correct: true\ntop_m: 1\n")
    base = ["export", "--task", "arith", "--data", str(search), "--config", str(config)]

    def records(*extra: str) -> list[dict]:
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        assert main([*base, "--out", str(out), *extra]) == 0
        return [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]

    from_file = records()
    assert len(from_file) == 4 and all("messages" in r and r["correct"] and r["rank"] == 0 for r in from_file)
    assert len(records("--set", "top_m=2")) == 8
    assert len(records("--top-m", "2", "--set", "only_correct=false")) == 8  # ranks 0 and 1
    assert "prompt" in records("--format", "prompt-completion")[0]
    capsys.readouterr()
    for extra, message in [
        (["--set", "top_k=2"], "unknown config key 'top_k' for ExportConfig"),
        (["--set", "format=chatml"], "format must be one of"),
        (["--set", "only_correct=yes please"], "only_correct takes true or false"),
    ]:
        assert main([*base, "--out", str(tmp_path / "bad"), *extra]) == 2, extra
        assert message in capsys.readouterr().err
    config.write_text("formats: messages\n")
    assert main([*base, "--out", str(tmp_path / "bad")]) == 2
    assert "unknown config key(s) 'formats'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_sft_trainer_trains_on_the_export(tmp_path):
    """TRL's SFTTrainer reads the exported prompt-completion rows and trains on the completions
    only (one step, a tiny Llama): the interchange format is what TRL expects."""
    datasets = pytest.importorskip("datasets")
    trl = pytest.importorskip("trl")
    from search_fixtures import bpe_tokenizer
    from tiny_models import tiny_lm

    search = tmp_path / "search.jsonl"
    search.write_text("".join(json.dumps(r) + "\n" for r in _search_rows()))
    out = tmp_path / "exported"
    assert (
        main(["export", "--data", str(search), "--task", "arith", "--out", str(out), "--only-correct"]) == 0
    )
    dataset = datasets.load_dataset("json", data_files=str(out / "train.jsonl"), split="train")
    tokenizer = bpe_tokenizer(300)
    model = tiny_lm("llama", len(tokenizer), seed=7)
    before = [p.detach().clone() for p in model.parameters()]
    args = trl.SFTConfig(
        output_dir=str(tmp_path / "sft"),
        max_steps=1,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        completion_only_loss=True,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
    )
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    first = trainer.train_dataset[0]
    trained = [label != -100 for label in first["labels"]]
    assert 0 < sum(trained) < len(first["input_ids"]) and not trained[0]  # the prompt is masked out
    result = trainer.train()
    assert result.global_step == 1 and result.training_loss > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
