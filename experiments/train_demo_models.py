"""Train an embedded task's teacher and initialize its student (docs/design.md §5), from scratch, on CPU.

The teacher learns the task's solutions in the ``mixed`` style (``arith``: every line a single
operation or, with probability 1/2, a leap over two or more, up to all that remain; ``ledger``:
the same over whole events, and the grouped path for a third of the problems), so it samples
every kind of step. The student
is a much smaller model of the same family and tokenizer, saved at its seeded random
initialization: the demo's cold start and distillation train it.

    python experiments/make_tokenizer.py --out python/genssd/assets/demo/tokenizer
    python experiments/train_demo_models.py --tokenizer python/genssd/assets/demo/tokenizer \
        --out python/genssd/assets/demo
    python experiments/train_demo_models.py --task ledger \
        --tokenizer python/genssd/assets/ledger/tokenizer --out python/genssd/assets/ledger

Writes ``OUT/teacher`` and ``OUT/student`` (``save_pretrained`` safetensors + the tokenizer,
so each folder loads on its own) and ``OUT/teacher/train_report.json`` (held-out accuracy,
timing). Everything is seeded; the training runs through ``genssd.train``.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from demo_tasks import DEMO_TASKS, DemoTask
from genssd.config import EvalConfig, TrainConfig
from genssd.evaluate import evaluate
from genssd.train import train
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

# Llama-style decoders; heads of 16 dims; tied embeddings (the vocabulary is ~40 characters).
TEACHER = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 4, "num_attention_heads": 8}
STUDENT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4}


def model_config(tokenizer, sizes: dict) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        num_key_value_heads=sizes["num_attention_heads"],
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **sizes,
    )


def split_problems(
    demo: DemoTask, num_train: int, num_heldout: int, seed: int
) -> tuple[list[dict], list[dict]]:
    """Training problems from the task's ``train`` partition and held-out ones from ``test``
    (the demo's default task setting), so the teacher is evaluated on problems it never saw."""
    train_rows = demo.generate(num_train, seed, uid_prefix="train", split="train")
    heldout = demo.generate(num_heldout, seed + 1, uid_prefix="test", split="test")
    return train_rows, heldout


def mixed_rows(demo: DemoTask, rows: list[dict], seed: int) -> list[dict]:
    """Rows whose ``answer`` is a mixed-style solution (line grouping drawn from ``seed``).

    Leaps have no cap (a line may carry out every remaining operation): with leaps of at most two
    operations, a student trained long enough on the mixed style learned them as well as single
    steps (H100 full-preset run, experiments/results/full-round1-h100.json), so the demo lost the
    unlearnable steps it exists to show.
    """
    rng = random.Random(seed)
    return [dict(r, answer=demo.render(r, "mixed", rng)) for r in rows]


def save(model, tokenizer, out: Path) -> None:
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-problems", type=int, default=20_000)
    parser.add_argument("--heldout-problems", type=int, default=500)
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--task", choices=sorted(DEMO_TASKS), default="arith")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    demo = DEMO_TASKS[args.task]
    task = demo.task
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    train_rows, heldout = split_problems(demo, args.train_problems, args.heldout_problems, args.seed)

    torch.manual_seed(args.seed)
    teacher = LlamaForCausalLM(model_config(tokenizer, TEACHER))
    config = TrainConfig(
        lr=args.lr,
        max_steps=args.steps,
        batch_size=args.batch_size,
        warmup_ratio=0.05,
        weight_decay=0.01,
        seed=args.seed,
        bf16=False,
        log_every=100,
        max_length=256,
    )
    started = time.perf_counter()
    teacher_rows = mixed_rows(demo, train_rows, args.seed)
    stats = train(teacher, tokenizer, teacher_rows, config, task=task, progress=False)
    train_seconds = time.perf_counter() - started
    teacher.eval()

    result = evaluate(
        teacher,
        tokenizer,
        task,
        heldout,
        EvalConfig(batch_size=250, max_new_tokens=demo.max_new_tokens),
        progress=False,
    )
    leap_lines = [
        n >= 2
        for rec, row in zip(result["records"], heldout)
        for n in demo.line_operation_counts(rec["predictions"][0], len(row["ops"]))
    ]
    torch.manual_seed(args.seed + 1)
    student = LlamaForCausalLM(model_config(tokenizer, STUDENT))

    save(teacher, tokenizer, args.out / "teacher")
    save(student, tokenizer, args.out / "student")
    report = {
        "teacher_greedy_accuracy": result["accuracy"],
        "teacher_greedy_leap_line_share": sum(leap_lines) / max(1, len(leap_lines)),
        "task": args.task,
        "train_problems": len(train_rows),
        "heldout_problems": len(heldout),
        "seed": args.seed,
        "teacher_parameters": sum(p.numel() for p in teacher.parameters()),
        "student_parameters": sum(p.numel() for p in student.parameters()),
        "train_steps": stats["steps"],
        "final_loss": sum(stats["losses"][-50:]) / len(stats["losses"][-50:]),
        "train_seconds": round(train_seconds, 1),
        "torch": torch.__version__,
    }
    (args.out / "teacher" / "train_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
