"""Measure what the demo relies on, with the shipped demo models.

1. The teacher solves most held-out problems greedily and samples both step styles.
2. The student from scratch (its shipped random initialization) solves almost none.
3. During SFT on the teacher's mixed style (a cold start) the student comes to find fine steps
   more likely than leaps: at the search's decision points (the next fine line against the
   next leap line after the same prefix) and over whole solutions, measured at ``--probe-steps``.
4. The student fine-tuned on fine-style solutions beats the same student fine-tuned on the
   mixed style, with the same problems and steps: the gain Gen-SSD can collect.

    python experiments/check_demo_models.py --models python/genssd/assets/demo
    python experiments/check_demo_models.py --models python/genssd/assets/ledger

The task is the one the teacher was made for (``teacher/train_report.json``; ``arith`` when it
does not say).

Prints a JSON report (and writes it with ``--out``). Seeded; training goes through ``genssd.train``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch
from demo_tasks import DEMO_TASKS, DemoTask
from genssd.config import EvalConfig, TrainConfig
from genssd.evaluate import evaluate
from genssd.train import train
from train_demo_models import split_problems
from transformers import AutoModelForCausalLM, AutoTokenizer


def styled(demo: DemoTask, rows: list[dict], style: str, seed: int) -> list[dict]:
    """Rows with ``answer`` in ``style``, leaps as in the teacher's training data."""
    rng = random.Random(seed)
    return [dict(r, answer=demo.render(r, style, rng)) for r in rows]


@torch.no_grad()
def token_logprobs(model, tokenizer, prompt: str, completion: str, *, eos: bool) -> torch.Tensor:
    """Log-probs [len(completion tokens) (+1 with EOS)] of the completion's tokens given the prompt."""
    p = tokenizer(prompt)["input_ids"]
    c = tokenizer(completion)["input_ids"] + ([tokenizer.eos_token_id] if eos else [])
    ids = torch.tensor([p + c])
    logp = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
    return logp[torch.arange(len(p) - 1, ids.shape[1] - 1), ids[0, len(p) :]]


def fine_vs_leap(demo: DemoTask, model, tokenizer, rows: list[dict], seed: int) -> dict:
    """The student's preference between the styles, as the search meets it and as a whole.

    Decision points (``demo.decision_points``): along each problem's fine solution, wherever two
    or more steps remain, the next fine line against the leap line over the next two (each a
    chunk ending in its newline), scored like the search scores candidates: ``trajectory`` is
    the mean log-prob of everything generated so far including the chunk, ``chunk`` of the chunk
    alone. Solutions: the mean log-prob of the whole fine and leap solutions with EOS.
    """
    model.eval()
    task = demo.task
    wins = {"trajectory": [], "chunk": []}
    for row in rows:
        prompt = task.prompt(row)
        for prefix, fine_line, leap_line in demo.decision_points(row):
            fine_lp = token_logprobs(model, tokenizer, prompt, prefix + fine_line, eos=False)
            leap_lp = token_logprobs(model, tokenizer, prompt, prefix + leap_line, eos=False)
            start = len(tokenizer(prefix)["input_ids"])
            wins["trajectory"].append(bool(fine_lp.mean() > leap_lp.mean()))
            wins["chunk"].append(bool(fine_lp[start:].mean() > leap_lp[start:].mean()))
    fine, leap = styled(demo, rows, "fine", seed), styled(demo, rows, "leap", seed)
    whole_f = [
        token_logprobs(model, tokenizer, task.prompt(r), r["answer"], eos=True).mean().item() for r in fine
    ]
    whole_l = [
        token_logprobs(model, tokenizer, task.prompt(r), r["answer"], eos=True).mean().item() for r in leap
    ]
    return {
        "decisions": len(wins["chunk"]),
        "decision_fine_wins_trajectory": statistics.mean(wins["trajectory"]),
        "decision_fine_wins_chunk": statistics.mean(wins["chunk"]),
        "solution_fine": statistics.mean(whole_f),
        "solution_leap": statistics.mean(whole_l),
        "solution_fine_wins": statistics.mean(fine > leap for fine, leap in zip(whole_f, whole_l)),
    }


def leap_line_share(demo: DemoTask, records: list[dict], rows: list[dict]) -> float:
    counts = [
        n
        for rec, row in zip(records, rows)
        for text in rec["predictions"]
        for n in demo.line_operation_counts(text, len(row["ops"]))
    ]
    return sum(n >= 2 for n in counts) / max(1, len(counts))


def sft(demo: DemoTask, model, tokenizer, rows: list[dict], steps: int, seed: int, callback=None) -> None:
    config = TrainConfig(
        lr=3e-3, max_steps=steps, batch_size=32, warmup_ratio=0.05, weight_decay=0.01, seed=seed, bf16=False
    )
    train(model, tokenizer, rows, config, task=demo.task, progress=False, callback=callback)
    model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--seed", type=int, default=0, help="seed of the student trainings and sampling")
    parser.add_argument("--heldout-problems", type=int, default=500)
    parser.add_argument("--probe-problems", type=int, default=200, help="held-out problems for the log-probs")
    parser.add_argument("--probe-steps", type=int, nargs="+", default=[200, 300, 500, 800, 1000, 1500])
    parser.add_argument("--sft-problems", type=int, default=2000)
    parser.add_argument("--sft-steps", type=int, default=1500)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    tokenizer = AutoTokenizer.from_pretrained(args.models / "student")
    teacher = AutoModelForCausalLM.from_pretrained(args.models / "teacher").eval()

    def fresh_student():
        return AutoModelForCausalLM.from_pretrained(args.models / "student").eval()

    # The teacher's own held-out split: problems it never saw in training.
    made = json.loads((args.models / "teacher" / "train_report.json").read_text())
    demo = DEMO_TASKS[made.get("task", "arith")]
    task = demo.task
    train_rows, heldout = split_problems(demo, made["train_problems"], args.heldout_problems, made["seed"])
    train_rows = train_rows[: args.sft_problems]
    greedy = EvalConfig(batch_size=250, max_new_tokens=demo.max_new_tokens)
    sampled = EvalConfig(batch_size=250, max_new_tokens=demo.max_new_tokens, temperature=1.0, seed=args.seed)
    report: dict = {"task": demo.name}

    result = evaluate(teacher, tokenizer, task, heldout, greedy, progress=False)
    report["teacher_greedy_accuracy"] = result["accuracy"]
    report["teacher_greedy_leap_line_share"] = leap_line_share(demo, result["records"], heldout)
    result = evaluate(teacher, tokenizer, task, heldout, sampled, progress=False)
    report["teacher_sampled_t1_accuracy"] = result["accuracy"]
    report["teacher_sampled_t1_leap_line_share"] = leap_line_share(demo, result["records"], heldout)

    student = fresh_student()
    report["student_from_scratch_accuracy"] = evaluate(
        student, tokenizer, task, heldout, greedy, progress=False
    )["accuracy"]
    probe = heldout[: args.probe_problems]
    report["student_from_scratch_logprobs"] = fine_vs_leap(demo, student, tokenizer, probe, args.seed)

    # The cold start: SFT on the teacher's mixed style, with the student's preference between
    # the styles measured along the way (one run, so later points had more of the same schedule).
    curve = {}

    def measure(step: int, loss: float) -> None:
        if step in args.probe_steps:
            student.eval()
            curve[step] = fine_vs_leap(demo, student, tokenizer, probe, args.seed)
            student.train()

    mixed = styled(demo, train_rows, "mixed", args.seed)
    sft(demo, student, tokenizer, mixed, args.sft_steps, args.seed, callback=measure)
    report["sft"] = {"problems": len(train_rows), "steps": args.sft_steps, "batch_size": 32}
    report["student_sft_mixed_logprobs_by_step"] = curve
    report["student_sft_mixed_accuracy"] = evaluate(
        student, tokenizer, task, heldout, greedy, progress=False
    )["accuracy"]

    student = fresh_student()
    sft(demo, student, tokenizer, styled(demo, train_rows, "fine", args.seed), args.sft_steps, args.seed)
    report["student_sft_fine_accuracy"] = evaluate(student, tokenizer, task, heldout, greedy, progress=False)[
        "accuracy"
    ]
    report["seconds"] = round(time.perf_counter() - started, 1)

    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
