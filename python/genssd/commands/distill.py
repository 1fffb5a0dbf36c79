"""``genssd distill``: the whole pipeline for a user's own teacher and student.

Optional cold start, search with the (cold-started) student as scorer, SFT on the selected
trajectories, evaluation; every stage resumable in the output folder (``genssd.distill``).
Everything a user can get wrong is checked before a model is loaded.
"""

from __future__ import annotations

import dataclasses

from genssd.commands import add_overrides_flag, add_prompt_flags, with_prompt_flags
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
    # Defaults are None here: a recipe (--config) may set these, and a flag given beats the recipe.
    parser.add_argument("--teacher", help="teacher model folder (with its tokenizer)")
    parser.add_argument("--student", help="student model folder (with its tokenizer)")
    parser.add_argument("--task", choices=TASK_NAMES)
    parser.add_argument("--data", help="JSONL of training problems (question, answer)")
    parser.add_argument("--out", help="run folder; rerunning with it resumes")
    parser.add_argument("--method", choices=sorted(METHOD_PRESETS), help="search preset (default gen-ssd)")
    parser.add_argument(
        "--config",
        help="a recipe: YAML with the run's settings (teacher, student, task, data, method, ...) and "
        "search:/train:/eval: sections of SearchConfig/TrainConfig/EvalConfig keys; flags and --set "
        "override it (a YAML of SearchConfig keys alone is read as the search section)",
    )
    add_overrides_flag(parser, "--set", "override a SearchConfig key (repeatable)")
    parser.add_argument(
        "--cold-start",
        type=int,
        metavar="N",
        help="first fine-tune the student on the first N problems (default 0: no cold start)",
    )
    parser.add_argument(
        "--cold-start-source",
        choices=COLD_START_SOURCES,
        help="teacher: one Standard-KD sample per problem (default); gold: the data's solutions",
    )
    parser.add_argument(
        "--cold-start-steps",
        type=int,
        help="optimizer steps of the cold start (default: the training epochs)",
    )
    add_overrides_flag(
        parser,
        "--train-set",
        f"override a TrainConfig key (repeatable; save_every defaults to {DEFAULT_SAVE_EVERY})",
    )
    parser.add_argument(
        "--only-correct",
        action="store_true",
        default=None,
        help="train only on trajectories whose answer is correct (the rejection filter)",
    )
    parser.add_argument(
        "--train-on",
        choices=TRAIN_ON,
        help="best: each problem's first trajectory (default); all: every trajectory; "
        "likeliest-correct / random-correct / morsd: --per-problem correct ones (the equal-data "
        "protocol; morsd: those the student follows to the answer best, distinct ones)",
    )
    parser.add_argument("--per-problem", type=int, metavar="M", help="m of those rules (default 1)")
    parser.add_argument(
        "--rounds",
        type=int,
        help="iterative Gen-SSD: search and fine-tune in this many rounds on consecutive blocks of the "
        "problems, each round's search scoring with the student the last one trained (default 1)",
    )
    parser.add_argument(
        "--teacher-token-budget",
        type=int,
        metavar="T",
        help="stop the search once it has spent T teacher tokens",
    )
    parser.add_argument("--eval-data", help="JSONL of held-out problems (default: no evaluation stage)")
    add_overrides_flag(parser, "--eval-set", "override an EvalConfig key (repeatable)")
    parser.add_argument("--device", help="cpu, cuda or cuda:K (default: cuda when available)")
    parser.add_argument("--seed", type=int, help="seed of the search, the training and the evaluation")
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="allow model code from the checkpoints"
    )
    add_prompt_flags(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


# A recipe's top-level keys: the flags above (dashes as underscores) and the three sections.
RECIPE_KEYS = {
    "teacher": None,
    "student": None,
    "task": None,
    "data": None,
    "out": None,
    "method": "gen-ssd",
    "cold_start": 0,
    "cold_start_source": "teacher",
    "cold_start_steps": None,
    "only_correct": False,
    "train_on": "best",
    "per_problem": 1,
    "rounds": 1,
    "teacher_token_budget": None,
    "eval_data": None,
    "device": None,
    "seed": None,
}
SECTIONS = ("search", "train", "eval")


def load_recipe(path) -> dict:
    """A recipe's mapping, with its search settings under ``search`` (a file of SearchConfig keys
    alone is one), every key checked."""
    from genssd.config import SearchConfig, load_yaml_mapping
    from genssd.errors import UsageError

    recipe = load_yaml_mapping(path)
    search_keys = {f.name for f in dataclasses.fields(SearchConfig)}
    if recipe and set(recipe) <= search_keys:  # no section, no key of the run itself
        return {"search": recipe}
    unknown = sorted(set(recipe) - set(RECIPE_KEYS) - set(SECTIONS))
    if unknown:
        hint = " (SearchConfig keys go under search:)" if set(unknown) & search_keys else ""
        raise UsageError(
            f"config file {path}: unknown key(s) {', '.join(unknown)}{hint}; known: "
            f"{', '.join([*RECIPE_KEYS, *SECTIONS])}"
        )
    for name, value in recipe.items():
        kind = _RECIPE_TYPES.get(name)
        if (
            kind is not None
            and value is not None
            and (not isinstance(value, kind) or isinstance(value, bool))
        ):
            raise UsageError(f"config file {path}: {name} must be {kind.__name__}, got {value!r}")
    return recipe


# The recipe keys that are numbers (the others are strings, or a bool for only_correct).
_RECIPE_TYPES = {"cold_start": int, "cold_start_steps": int, "teacher_token_budget": int, "seed": int}


def _setting(args, recipe: dict, name: str):
    """A flag's value when given, else the recipe's, else the default."""
    value = getattr(args, name)
    return value if value is not None else recipe.get(name, RECIPE_KEYS[name])


def build_plan(args):
    """The ``DistillPlan`` of the parsed arguments, every input checked (no model is loaded)."""
    from genssd.config import EvalConfig, TrainConfig, build_config, search_config_for
    from genssd.distill import COLD_START_SOURCES, DEFAULT_SAVE_EVERY, TRAIN_ON, ColdStart, DistillPlan
    from genssd.errors import UsageError
    from genssd.tasks import get_task

    recipe = load_recipe(args.config) if args.config else {}
    settings = {name: _setting(args, recipe, name) for name in RECIPE_KEYS}
    for name in ("teacher", "student", "task", "data", "out"):
        if settings[name] is None:
            raise UsageError(f"--{name} is required (or {name}: in the --config recipe)")
    if settings["method"] not in METHOD_PRESETS:
        raise UsageError(f"unknown method {settings['method']!r}; choose one of {', '.join(METHOD_PRESETS)}")
    if settings["train_on"] not in TRAIN_ON or settings["cold_start_source"] not in COLD_START_SOURCES:
        raise UsageError(f"train_on must be one of {TRAIN_ON}, cold_start_source one of {COLD_START_SOURCES}")
    method = settings["method"]
    task = get_task(settings["task"])
    # The run's seed sits under the sections and --set, so `--set seed=7` still wins.
    seed = {} if settings["seed"] is None else {"seed": settings["seed"]}
    search = search_config_for(method, mapping=recipe.get("search"), overrides=args.set, **seed)
    train = build_config(
        TrainConfig,
        mapping=recipe.get("train"),
        overrides=args.train_set,
        save_every=DEFAULT_SAVE_EVERY,
        only_correct=settings["only_correct"],
        **seed,
    )
    if args.only_correct:  # the flag beats a recipe's train: section
        train = dataclasses.replace(train, only_correct=True)
    evaluation = build_config(EvalConfig, mapping=recipe.get("eval"), overrides=args.eval_set, **seed)
    # The prompt flags hold for every stage: the search, the training and the evaluation.
    search, train, evaluation = (with_prompt_flags(c, args) for c in (search, train, evaluation))
    for stage in (search, train, evaluation):
        stage.prompt_format_for(task)  # each stage's few-shot examples exist
    cold_start, cold_steps = settings["cold_start"], settings["cold_start_steps"]
    if cold_start < 0:
        raise UsageError(f"--cold-start must be >= 0, got {cold_start}")
    if cold_start == 0 and args.cold_start_steps is not None:
        raise UsageError("--cold-start-steps needs --cold-start N")
    if cold_start == 0:  # `--cold-start 0` switches a recipe's cold start off, its steps with it
        cold_steps = None
    cold = ColdStart(cold_start, settings["cold_start_source"], cold_steps) if cold_start else None
    return DistillPlan(
        teacher=settings["teacher"],
        student=settings["student"],
        task=settings["task"],
        rows=task.load(settings["data"]),
        out=settings["out"],
        search=search,
        train=train,
        evaluation=evaluation,
        eval_rows=task.load(settings["eval_data"]) if settings["eval_data"] else None,
        cold_start=cold,
        train_on=settings["train_on"],
        per_problem=settings["per_problem"],
        rounds=settings["rounds"],
        teacher_token_budget=settings["teacher_token_budget"],
        device=settings["device"],
        trust_remote_code=args.trust_remote_code,
        progress=not args.no_progress,
    )


def run(args) -> int:
    from genssd.data import check_writable
    from genssd.distill import run_pipeline
    from genssd.models import quiet_transformers, resolve_device

    plan = build_plan(args)
    resolve_device(plan.device)  # a bad --device fails before anything is written
    check_writable(plan.out, folder=True)
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
