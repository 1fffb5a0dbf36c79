"""``genssd distill``: the whole pipeline for a user's own teacher and student.

Optional cold start, search with the (cold-started) student as scorer, SFT on the selected
trajectories, evaluation; every stage resumable in the output folder (``genssd.distill``).
Everything a user can get wrong is checked before a model is loaded.
"""

from __future__ import annotations

import dataclasses

from genssd.config import METHOD_PRESETS


def register(subparsers) -> None:
    from genssd.distill import COLD_START_SOURCES, DEFAULT_SAVE_EVERY, TRAIN_ON
    from genssd.tasks import TASK_NAMES

    parser = subparsers.add_parser(
        "distill",
        help="cold start, search, fine-tune and evaluate a student (resumable)",
        description="Distill a teacher into a student: (1) optional cold start on a small Standard-KD or "
        "gold set, (2) search with the student as scorer, (3) SFT of the student on the selected "
        "trajectories, (4) evaluation on held-out data. Rerunning with the same --out skips finished "
        "stages and resumes an interrupted one.",
    )
    parser.add_argument("--teacher", required=True, help="teacher model folder (with its tokenizer)")
    parser.add_argument("--student", required=True, help="student model folder (with its tokenizer)")
    parser.add_argument("--task", required=True, choices=TASK_NAMES)
    parser.add_argument("--data", required=True, help="JSONL of training problems (question, answer)")
    parser.add_argument("--out", required=True, help="run folder; rerunning with it resumes")
    parser.add_argument(
        "--method", default="gen-ssd", choices=sorted(METHOD_PRESETS), help="search preset (default gen-ssd)"
    )
    parser.add_argument("--config", help="YAML file of SearchConfig keys (on top of the method preset)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a SearchConfig key (repeatable)",
    )
    parser.add_argument(
        "--cold-start",
        type=int,
        default=0,
        metavar="N",
        help="first fine-tune the student on the first N problems (default 0: no cold start)",
    )
    parser.add_argument(
        "--cold-start-source",
        choices=COLD_START_SOURCES,
        default="teacher",
        help="teacher: one Standard-KD sample per problem (default); gold: the data's solutions",
    )
    parser.add_argument(
        "--cold-start-steps",
        type=int,
        help="optimizer steps of the cold start (default: the training epochs)",
    )
    parser.add_argument(
        "--train-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a TrainConfig key (repeatable; save_every defaults to {DEFAULT_SAVE_EVERY})",
    )
    parser.add_argument(
        "--only-correct",
        action="store_true",
        help="train only on trajectories whose answer is correct (the rejection filter)",
    )
    parser.add_argument(
        "--train-on",
        choices=TRAIN_ON,
        default="best",
        help="best: each problem's first trajectory (default); all: every trajectory",
    )
    parser.add_argument(
        "--teacher-token-budget",
        type=int,
        metavar="T",
        help="stop the search once it has spent T teacher tokens",
    )
    parser.add_argument("--eval-data", help="JSONL of held-out problems (default: no evaluation stage)")
    parser.add_argument(
        "--eval-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override an EvalConfig key (repeatable)",
    )
    parser.add_argument("--device", help="cpu, cuda or cuda:K (default: cuda when available)")
    parser.add_argument("--seed", type=int, help="seed of the search, the training and the evaluation")
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="allow model code from the checkpoints"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def build_plan(args):
    """The ``DistillPlan`` of the parsed arguments, every input checked (no model is loaded)."""
    from genssd.config import EvalConfig, SearchConfig, TrainConfig, build_config
    from genssd.distill import DEFAULT_SAVE_EVERY, ColdStart, DistillPlan
    from genssd.errors import UsageError
    from genssd.tasks import get_task

    task = get_task(args.task)
    search = build_config(
        SearchConfig,
        yaml_path=args.config,
        overrides=args.set,
        **METHOD_PRESETS[args.method],
        method=args.method,
    )
    if search.method != args.method:
        raise UsageError(f"the config sets method {search.method!r}; choose the method with --method")
    train = build_config(
        TrainConfig, overrides=args.train_set, save_every=DEFAULT_SAVE_EVERY, only_correct=args.only_correct
    )
    evaluation = build_config(EvalConfig, overrides=args.eval_set)
    if args.seed is not None:
        search = dataclasses.replace(search, seed=args.seed)
        train = dataclasses.replace(train, seed=args.seed)
        evaluation = dataclasses.replace(evaluation, seed=args.seed)
    if args.cold_start < 0:
        raise UsageError(f"--cold-start must be >= 0, got {args.cold_start}")
    if args.cold_start == 0 and args.cold_start_steps is not None:
        raise UsageError("--cold-start-steps needs --cold-start N")
    cold = (
        ColdStart(args.cold_start, args.cold_start_source, args.cold_start_steps) if args.cold_start else None
    )
    return DistillPlan(
        teacher=args.teacher,
        student=args.student,
        task=args.task,
        rows=task.load(args.data),
        out=args.out,
        search=search,
        train=train,
        evaluation=evaluation,
        eval_rows=task.load(args.eval_data) if args.eval_data else None,
        cold_start=cold,
        train_on=args.train_on,
        teacher_token_budget=args.teacher_token_budget,
        device=args.device,
        trust_remote_code=args.trust_remote_code,
        progress=not args.no_progress,
    )


def run(args) -> int:
    from genssd.distill import resolve_device, run_pipeline
    from genssd.models import quiet_transformers

    plan = build_plan(args)
    resolve_device(plan.device)  # a bad --device fails before anything is written
    if args.no_progress:
        quiet_transformers()
    summary = run_pipeline(plan)
    lines = {
        "teacher tokens": f"{summary['teacher_tokens_total']:,}",
        "branches pruned": "-" if summary["pruned_share"] is None else f"{summary['pruned_share']:.1%}",
        "training steps": summary["train"]["steps"],
    }
    if "eval" in summary:
        result = summary["eval"]
        lines["student accuracy"] = f"{result['accuracy']:.4f} ({result['correct']}/{result['problems']})"
    for name, value in lines.items():
        print(f"{name}: {value}")
    print(f"outputs in {summary['out']} (summary.json)")
    return 0
