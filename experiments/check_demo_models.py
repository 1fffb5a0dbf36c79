"""Measure what the demo relies on, with the shipped demo models.

1. The teacher solves most held-out problems greedily and samples both step styles.
2. The student from scratch (its shipped random initialization) solves almost none.
3. After a short cold start (SFT on a small mixed-style set) the student finds fine steps more
   likely than leaps: mean log-prob of whole fine vs leap solutions, and of the first line
   (the first chunk the search scores) in either style after the same prompt.
4. The student fine-tuned on fine-style solutions beats the same student fine-tuned on the
   teacher's mixed style, with the same problems and steps: the gain Gen-SSD can collect.

    python experiments/check_demo_models.py --models python/genssd/assets/demo

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
from transformers import AutoModelForCausalLM, AutoTokenizer

from genssd.config import EvalConfig, TrainConfig
from genssd.evaluate import evaluate
from genssd.tasks.arith import ArithTask, line_operation_counts, render_solution
from genssd.train import train

from train_demo_models import split_problems

TASK = ArithTask()


def styled(rows: list[dict], style: str, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [dict(r, answer=render_solution(r["numbers"], r["ops"], style, rng)) for r in rows]


@torch.no_grad()
def completion_logprobs(model, tokenizer, pairs: list[tuple[str, str]], *, eos: bool) -> list[float]:
    """Mean per-token log-prob of each completion given its prompt (plain forward pass, one at a time)."""
    scores = []
    for prompt, completion in pairs:
        p = tokenizer(prompt)["input_ids"]
        c = tokenizer(completion)["input_ids"] + ([tokenizer.eos_token_id] if eos else [])
        ids = torch.tensor([p + c])
        logp = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
        token_lp = logp[torch.arange(len(p) - 1, ids.shape[1] - 1), ids[0, len(p) :]]
        scores.append(token_lp.mean().item())
    return scores


def fine_vs_leap(model, tokenizer, rows: list[dict], seed: int) -> dict:
    """Whole-solution and first-line mean log-probs of the two styles on the same problems."""
    fine, leap = styled(rows, "fine", seed), styled(rows, "leap", seed)
    prompts = [TASK.prompt(r) for r in rows]
    whole_f = completion_logprobs(model, tokenizer, [(p, r["answer"]) for p, r in zip(prompts, fine)], eos=True)
    whole_l = completion_logprobs(model, tokenizer, [(p, r["answer"]) for p, r in zip(prompts, leap)], eos=True)
    # Problems with 3+ operations, so the leap's first line is not the final "= n" in both styles.
    multi = [i for i, r in enumerate(rows) if len(r["ops"]) >= 3]
    first_f = completion_logprobs(model, tokenizer, [(prompts[i], fine[i]["answer"].split("\n")[0] + "\n") for i in multi], eos=False)
    first_l = completion_logprobs(model, tokenizer, [(prompts[i], leap[i]["answer"].split("\n")[0] + "\n") for i in multi], eos=False)
    return {
        "solution_fine": statistics.mean(whole_f),
        "solution_leap": statistics.mean(whole_l),
        "solution_fine_wins": sum(f > l for f, l in zip(whole_f, whole_l)) / len(rows),
        "first_line_fine": statistics.mean(first_f),
        "first_line_leap": statistics.mean(first_l),
        "first_line_fine_wins": sum(f > l for f, l in zip(first_f, first_l)) / len(multi),
    }


def leap_line_share(records: list[dict], rows: list[dict]) -> float:
    counts = [n for rec, row in zip(records, rows) for text in rec["predictions"] for n in line_operation_counts(text, len(row["ops"]))]
    return sum(n >= 2 for n in counts) / max(1, len(counts))


def sft(model, tokenizer, rows: list[dict], steps: int, seed: int, callback=None) -> None:
    config = TrainConfig(lr=3e-3, max_steps=steps, batch_size=32, warmup_ratio=0.05, weight_decay=0.01, seed=seed, bf16=False)
    train(model, tokenizer, rows, config, task=TASK, progress=False, callback=callback)
    model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--seed", type=int, default=0, help="seed of the student trainings and sampling")
    parser.add_argument("--heldout-problems", type=int, default=500)
    parser.add_argument("--probe-problems", type=int, default=300, help="held-out problems for the log-probs")
    parser.add_argument("--probe-steps", type=int, nargs="+", default=[100, 200, 300, 500, 700, 1000])
    parser.add_argument("--sft-problems", type=int, default=2000)
    parser.add_argument("--sft-steps", type=int, default=1000)
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
    train_rows, heldout = split_problems(made["train_problems"], args.heldout_problems, made["seed"])
    train_rows = train_rows[: args.sft_problems]
    greedy = EvalConfig(batch_size=250, max_new_tokens=64)
    sampled = EvalConfig(batch_size=250, max_new_tokens=64, temperature=1.0, seed=args.seed)
    report: dict = {}

    result = evaluate(teacher, tokenizer, TASK, heldout, greedy, progress=False)
    report["teacher_greedy_accuracy"] = result["accuracy"]
    report["teacher_greedy_leap_line_share"] = leap_line_share(result["records"], heldout)
    result = evaluate(teacher, tokenizer, TASK, heldout, sampled, progress=False)
    report["teacher_sampled_t1_accuracy"] = result["accuracy"]
    report["teacher_sampled_t1_leap_line_share"] = leap_line_share(result["records"], heldout)

    student = fresh_student()
    report["student_from_scratch_accuracy"] = evaluate(student, tokenizer, TASK, heldout, greedy, progress=False)["accuracy"]
    probe = heldout[: args.probe_problems]
    report["student_from_scratch_logprobs"] = fine_vs_leap(student, tokenizer, probe, args.seed)

    # The cold start: SFT on the teacher's mixed style, with the student's preference between
    # the styles measured along the way (one run, so later points had more of the same schedule).
    curve = {}

    def measure(step: int, loss: float) -> None:
        if step in args.probe_steps:
            student.eval()
            curve[step] = fine_vs_leap(student, tokenizer, probe, args.seed)
            student.train()

    mixed = styled(train_rows, "mixed", args.seed)
    sft(student, tokenizer, mixed, args.sft_steps, args.seed, callback=measure)
    report["sft"] = {"problems": len(train_rows), "steps": args.sft_steps, "batch_size": 32}
    report["student_sft_mixed_logprobs_by_step"] = curve
    report["student_sft_mixed_accuracy"] = evaluate(student, tokenizer, TASK, heldout, greedy, progress=False)["accuracy"]

    student = fresh_student()
    sft(student, tokenizer, styled(train_rows, "fine", args.seed), args.sft_steps, args.seed)
    report["student_sft_fine_accuracy"] = evaluate(student, tokenizer, TASK, heldout, greedy, progress=False)["accuracy"]
    report["seconds"] = round(time.perf_counter() - started, 1)

    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
