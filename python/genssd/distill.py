"""The distillation pipeline behind ``genssd distill``: cold start, search, SFT, evaluation.

A run folder holds, stage by stage:

1. ``coldstart/`` (optional): the student fine-tuned on a small set, so that its likelihoods
   mean something before it scores candidates: ``coldstart/search.jsonl`` (Standard-KD
   teacher samples of the first N problems) or ``coldstart/data.jsonl`` (their gold
   solutions), and the model in ``coldstart/student/``;
2. ``search.jsonl``: the search over the training problems with the (cold-started) student as
   the scorer;
3. ``student/``: the student fine-tuned on the selected trajectories (optionally only the
   answer-correct ones: the rejection filter), with its checkpoints;
4. ``eval.jsonl``: the fine-tuned student's answers to held-out problems;

and ``summary.json``, rewritten at the end of every run.

Every stage is resumable (the run-folder rules are ``genssd.runs``'): a finished stage's marker
``<stage>.done`` makes a rerun skip it; an interrupted search continues by ``uid``
(``genssd.data``) and an interrupted training from its latest checkpoint. ``run.json`` records
the settings that decide the outputs: a rerun into the same folder with other settings is
refused rather than mixing two runs.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

import genssd_kernels
from genssd.config import EvalConfig, SearchConfig, TrainConfig, config_hash, search_config_for
from genssd.data import read_output
from genssd.errors import UsageError
from genssd.evaluate import evaluate, write_records
from genssd.models import (
    TRAIN_DTYPE,
    check_model_folder,
    inference_dtype,
    load_model,
    load_tokenizer,
    resolve_device,
)
from genssd.morsd import morsd_rows
from genssd.runs import guard_run, rows_fingerprint, run_stage, write_json
from genssd.sampling import combine, text_key
from genssd.search import Searcher
from genssd.search_file import search_to_file
from genssd.tasks import get_task
from genssd.train import RESUMABLE_CHANGES, prepare_examples, train, trajectory_row

COLD_START_SOURCES = ("teacher", "gold")
TRAIN_ON = ("best", "all", "likeliest-correct", "random-correct", "morsd")
# Checkpoint often enough that a killed training loses little; small models save in milliseconds.
DEFAULT_SAVE_EVERY = 100


@dataclass
class ColdStart:
    """The optional first stage: SFT of the student on the first ``problems`` training problems.

    Attributes:
        problems: how many problems (the first ones of the training rows).
        source: ``"teacher"``: one Standard-KD teacher sample per problem (plain sampling with
            the search's temperature, top-p and length); ``"gold"``: the rows' own solutions.
        steps: optimizer steps (None: the training config's epochs over these problems).
    """

    problems: int
    source: str = "teacher"
    steps: int | None = None

    def __post_init__(self) -> None:
        if self.problems < 1:
            raise UsageError(f"the cold start needs >= 1 problem, got {self.problems}")
        if self.source not in COLD_START_SOURCES:
            raise UsageError(
                f"cold start source must be one of {', '.join(COLD_START_SOURCES)}, got {self.source!r}"
            )
        if self.steps is not None and self.steps < 1:
            raise UsageError(f"cold start steps must be >= 1, got {self.steps}")


@dataclass
class DistillPlan:
    """Everything one pipeline run needs.

    Attributes:
        teacher, student: model folders (each with its tokenizer).
        task: a task name (``genssd.tasks.TASK_NAMES``).
        rows: the training problems (as ``task.load`` returns them, each with a ``uid``).
        out: the run folder.
        search, train, evaluation: the stage settings.
        eval_rows: held-out problems (None: no evaluation stage).
        cold_start: the cold start (None: search with the student as given).
        train_on: ``"best"``: each problem's first trajectory; ``"all"``: every trajectory of a
            problem (n samples per problem, as rejection sampling uses them);
            ``"likeliest-correct"`` / ``"random-correct"``: up to ``per_problem`` correct ones
            (the equal-data protocol; ``training_rows``); ``"morsd"``: up to ``per_problem``
            correct ones the student follows best, near-duplicates skipped (``genssd.morsd``;
            the kept rows are written to ``selected.jsonl``).
        per_problem: m of the ``*-correct`` rules.
        rounds: iterative Gen-SSD: the problems split into this many consecutive blocks; round
            ``r`` (folder ``round{r}``) searches its block scoring with the student the previous
            round trained, then fine-tunes that student on what it found, so the selection
            follows the student as it learns. 1: one search and one training (no round folders).
        teacher_token_budget: stop the search once its teacher tokens reach this many
            (problems are searched in order; None: search them all).
        device: ``cpu``, ``cuda`` or ``cuda:K`` (None: CUDA when available).
    """

    teacher: str | Path
    student: str | Path
    task: str
    rows: list[dict]
    out: str | Path
    search: SearchConfig = field(default_factory=SearchConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(save_every=DEFAULT_SAVE_EVERY))
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    eval_rows: list[dict] | None = None
    cold_start: ColdStart | None = None
    train_on: str = "best"
    per_problem: int = 1
    rounds: int = 1
    teacher_token_budget: int | None = None
    device: str | None = None
    trust_remote_code: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.train_on not in TRAIN_ON:
            raise UsageError(f"train_on must be one of {', '.join(TRAIN_ON)}, got {self.train_on!r}")
        if not isinstance(self.per_problem, int) or self.per_problem < 1:
            raise UsageError(f"per_problem must be an int >= 1, got {self.per_problem!r}")
        if not isinstance(self.rounds, int) or not 1 <= self.rounds <= len(self.rows):
            raise UsageError(
                f"rounds must be an int in 1..{len(self.rows)} (the problems), got {self.rounds!r}"
            )
        if self.rounds > 1 and self.teacher_token_budget is not None:
            raise UsageError("a teacher token budget is not supported with rounds > 1")
        if not self.rows:
            raise UsageError("no training problems")
        if self.teacher_token_budget is not None and self.teacher_token_budget < 1:
            raise UsageError(f"the teacher token budget must be >= 1, got {self.teacher_token_budget}")
        if self.cold_start is not None and self.cold_start.problems > len(self.rows):
            raise UsageError(
                f"the cold start asks for {self.cold_start.problems} problems but there are {len(self.rows)}"
            )
        if self.eval_rows is not None and not self.eval_rows:
            raise UsageError("the evaluation data holds no problems")
        for name in ("teacher", "student"):
            check_model_folder(getattr(self, name), name)


# ----------------------------------------------------------------------------------- search


def search_stage(
    path: Path,
    teacher,
    student,
    task,
    rows: Sequence[dict],
    config: SearchConfig,
    *,
    device: str,
    budget: int | None = None,
    progress: bool = True,
    trust_remote_code: bool = False,
) -> list[dict]:
    """Search ``rows`` into the JSONL file ``path``, continuing a previous run by ``uid``.

    Args:
        teacher, student: model folders, each with its tokenizer.
        budget: stop once the file's rows hold this many teacher tokens (None: every row).

    Returns the file's rows in ``rows``' order.
    """

    def make_searcher(final: SearchConfig) -> Searcher:
        return Searcher(
            teacher,
            student,
            config=final,
            device=device,
            dtype=inference_dtype(device),
            trust_remote_code=trust_remote_code,
        )

    search_to_file(path, make_searcher, task, rows, config, budget=budget, progress=progress)
    by_uid = {str(r["uid"]): r for r in read_output(path)}
    return [by_uid[str(row["uid"])] for row in rows if str(row["uid"]) in by_uid]


def branch_statistics(rows: Sequence[dict], config: SearchConfig) -> tuple[int, int]:
    """``(branches, pruned)``: candidates the search compared and those below its thresholds.

    A candidate is pruned when its score is under its group's mean minus ``margin`` or under the
    ``max_ppl`` floor, as ``branch_prune`` decides (being outranked is not pruning). Recomputed
    from the recorded candidate scores of every round (a prompt's rounds are read off its
    trajectories; the last round of a prompt pruned early left no trajectory and is not counted).
    A search without selection compares nothing: ``(0, 0)``.
    """

    if not config.select:
        return 0, 0
    groups: list[list[float]] = []
    for row in rows:
        rounds: dict[int, list[float]] = {}
        for trajectory in row.get("trajectories") or []:
            for index, chunk in enumerate(trajectory["chunks"]):
                rounds.setdefault(index, chunk["candidate_scores"])
        groups.extend(rounds.values())
    if not groups:
        return 0, 0
    scores = torch.tensor([s for g in groups for s in g], dtype=torch.float32)
    offsets = torch.tensor([0] + [len(g) for g in groups], dtype=torch.long).cumsum(0)
    keep, _, _, _ = genssd_kernels.branch_prune(
        scores,
        offsets,
        margin=config.margin,
        k=max(len(g) for g in groups),
        min_score=config.min_score,
        backend="reference",
    )
    return int(scores.numel()), int((~keep).sum())


def search_statistics(rows: Sequence[dict], config: SearchConfig) -> dict:
    """What a search cost and found: problems, teacher/student tokens, pruning, teacher accuracy."""
    branches, pruned = branch_statistics(rows, config)
    return {
        "method": config.method,
        "config_hash": config_hash(config),
        "problems": len(rows),
        "teacher_tokens": sum(int(r["teacher_tokens"]) for r in rows),
        "student_tokens": sum(int(r["student_tokens"]) for r in rows),
        "pruned_early": sum(bool(r["pruned_early"]) for r in rows),
        "answer_accuracy": sum(bool(r["correct"]) for r in rows) / len(rows) if rows else 0.0,
        "branches": branches,
        "branches_pruned": pruned,
    }


# ------------------------------------------------------------------------------------ training


def training_rows(
    rows: Sequence[dict], task, train_on: str, *, per_problem: int = 1, seed: int = 0
) -> list[dict]:
    """The rows SFT reads, one per trajectory trained on.

    - ``"best"``: each problem's row as it is (SFT reads its first trajectory);
    - ``"all"``: one row per trajectory;
    - ``"likeliest-correct"``: the first ``per_problem`` trajectories with a correct answer in
      the row's order, which is the student's preference (a search lists them best first);
    - ``"random-correct"``: ``per_problem`` correct ones drawn at random, seeded by ``(seed,
      uid)`` (rejection sampling's "m of the correct answers", whatever the student thinks).

    The last two are the equal-data protocol: every method trains on the same number of right
    answers per problem. Expanded rows carry the ``correct`` verdict of their own answer.
    """
    if train_on == "best":
        return list(rows)
    if train_on == "morsd":
        raise UsageError("the morsd rule needs the student's scores: see genssd.morsd.morsd_rows")
    expanded = []
    for row in rows:
        own = [trajectory_row(row, i, task) for i in range(len(row.get("trajectories") or []))]
        if train_on != "all":
            own = [r for r in own if r["correct"]]
            if train_on == "random-correct":
                random.Random(combine(seed, text_key(str(row["uid"])))).shuffle(own)
            own = own[:per_problem]
        expanded.extend(own)
    return expanded


def filter_statistics(rows: Sequence[dict], config: TrainConfig) -> tuple[int, int]:
    """``(candidates, rejected)`` of the answer filter: complete training rows and, with
    ``only_correct``, those whose answer is wrong (without it nothing is compared: ``(0, 0)``)."""
    if not config.only_correct:
        return 0, 0
    complete = [r for r in rows if not r.get("pruned_early") and r.get("trajectories")]
    return len(complete), sum(not r.get("correct") for r in complete)


def train_stage(
    out_dir: Path,
    student,
    task,
    rows: Sequence[dict],
    config: TrainConfig,
    *,
    device: str,
    progress: bool = True,
    trust_remote_code: bool = False,
) -> dict:
    """Fine-tune the student folder ``student`` on ``rows`` into ``out_dir`` (resuming from its
    latest checkpoint); returns the steps, the examples and the last losses."""

    tokenizer = load_tokenizer(student, trust_remote_code=trust_remote_code)
    examples = prepare_examples(rows, tokenizer, config, task=task)
    model = load_model(student, device=device, dtype=TRAIN_DTYPE, trust_remote_code=trust_remote_code)
    stats = train(
        model, tokenizer, examples, config, out_dir, task=task, resume=True, device=device, progress=progress
    )
    tail = stats["losses"][-10:]
    return {
        "examples": len(examples),
        "steps": stats["steps"],
        "final_loss": sum(tail) / len(tail) if tail else None,
        "seconds": round(stats["seconds"], 2),
    }


# ---------------------------------------------------------------------------------- evaluation


def eval_stage(
    path: Path,
    model_dir,
    task,
    rows: Sequence[dict],
    config: EvalConfig,
    *,
    device: str,
    progress: bool = True,
    trust_remote_code: bool = False,
) -> dict:
    """Evaluate the model folder ``model_dir`` on ``rows``; per-problem records go to ``path``."""

    tokenizer = load_tokenizer(model_dir, trust_remote_code=trust_remote_code)
    model = load_model(
        model_dir, device=device, dtype=inference_dtype(device), trust_remote_code=trust_remote_code
    )
    result = evaluate(model, tokenizer, task, rows, config, progress=progress)
    write_records(path, result["records"])
    return {key: value for key, value in result.items() if key != "records"}


# ---------------------------------------------------------------------------------- the pipeline


def cold_start_search_config(config: SearchConfig) -> SearchConfig:
    """Standard KD with the main search's sampling settings and seed."""
    shared = ("temperature", "top_p", "max_new_tokens", "batch_size", "seed")
    return search_config_for("standard", **{name: getattr(config, name) for name in shared})


def cold_start_train_config(config: TrainConfig, cold: ColdStart) -> TrainConfig:
    """The training settings with the cold start's step count and no answer filter."""
    return dataclasses.replace(config, max_steps=cold.steps, only_correct=False)


def _identity(plan: DistillPlan) -> dict:
    """The settings that decide a run's outputs (device and progress bars do not)."""

    train = {k: v for k, v in dataclasses.asdict(plan.train).items() if k not in RESUMABLE_CHANGES}
    return {
        "teacher": str(Path(plan.teacher).resolve()),
        "student": str(Path(plan.student).resolve()),
        "task": plan.task,
        "data": rows_fingerprint(plan.rows),
        "eval_data": rows_fingerprint(plan.eval_rows) if plan.eval_rows is not None else None,
        "search": config_hash(plan.search),
        "train": train,
        "evaluation": dataclasses.asdict(plan.evaluation),
        "cold_start": dataclasses.asdict(plan.cold_start) if plan.cold_start is not None else None,
        "train_on": plan.train_on,
        "per_problem": plan.per_problem,
        "rounds": plan.rounds,
        "teacher_token_budget": plan.teacher_token_budget,
    }


def run_pipeline(plan: DistillPlan) -> dict:
    """Run (or finish) every stage of ``plan`` and write ``summary.json``; returns the summary."""

    task = get_task(plan.task)
    device = resolve_device(plan.device)
    out = Path(plan.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"output folder {out} is a file")
    out.mkdir(parents=True, exist_ok=True)
    guard_run(out, _identity(plan))
    common = {"device": device, "progress": plan.progress, "trust_remote_code": plan.trust_remote_code}
    summary: dict = {"out": str(out), "task": plan.task, "method": plan.search.method}

    # The student the search scores with and the SFT starts from: the cold-started one, if any.
    student = plan.student
    cold_tokens = 0
    if plan.cold_start is not None:
        cold = plan.cold_start
        cold_dir = out / "coldstart"
        cold_rows = plan.rows[: cold.problems]

        def run_cold_start() -> dict:
            if cold.source == "teacher":
                config = cold_start_search_config(plan.search)
                searched = search_stage(
                    cold_dir / "search.jsonl", plan.teacher, plan.student, task, cold_rows, config, **common
                )
                data, stats = searched, search_statistics(searched, config)
            else:
                write_records(cold_dir / "data.jsonl", cold_rows)
                data, stats = cold_rows, {"problems": len(cold_rows), "teacher_tokens": 0}
            trained = train_stage(
                cold_dir / "student",
                plan.student,
                task,
                data,
                cold_start_train_config(plan.train, cold),
                **common,
            )
            return {"source": cold.source, "search": stats, "train": trained}

        summary["cold_start"] = run_stage(out, "coldstart", run_cold_start)
        student = cold_dir / "student"
        cold_tokens = summary["cold_start"]["search"]["teacher_tokens"]

    per_round = []
    for index, rows in enumerate(_round_blocks(plan.rows, plan.rounds)):
        folder = out if plan.rounds == 1 else out / f"round{index}"
        folder.mkdir(exist_ok=True)
        per_round.append(_search_and_train(plan, task, folder, student, rows, common))
        student = folder / "student"
    summary["search"] = _summed([r["search"] for r in per_round])
    summary["train"] = _summed([r["train"] for r in per_round])
    if plan.rounds > 1:
        summary["rounds"] = per_round

    if plan.eval_rows is not None:
        summary["eval"] = run_stage(
            out,
            "eval",
            lambda: eval_stage(out / "eval.jsonl", student, task, plan.eval_rows, plan.evaluation, **common),
        )
    search = summary["search"]
    summary["teacher_tokens"] = search["teacher_tokens"]
    summary["teacher_tokens_total"] = search["teacher_tokens"] + cold_tokens
    summary["pruned_share"] = pruned_share(search, summary["train"])
    write_json(out / "summary.json", summary)
    return summary


def _round_blocks(rows: list[dict], rounds: int) -> list[list[dict]]:
    """``rows`` in ``rounds`` consecutive blocks of (nearly) equal size."""
    bounds = [len(rows) * r // rounds for r in range(rounds + 1)]
    return [rows[a:b] for a, b in zip(bounds, bounds[1:])]


def _search_and_train(plan: DistillPlan, task, folder: Path, student, rows: list[dict], common: dict) -> dict:
    """One round in ``folder``: search ``rows`` scoring with ``student``, then fine-tune
    ``student`` on what was found into ``folder/student``; each stage resumable on its own."""

    def run_search() -> dict:
        searched = search_stage(
            folder / "search.jsonl",
            plan.teacher,
            student,
            task,
            rows,
            plan.search,
            budget=plan.teacher_token_budget,
            **common,
        )
        return search_statistics(searched, plan.search)

    def run_train() -> dict:
        searched = read_output(folder / "search.jsonl")
        if plan.train_on == "morsd":
            kept = morsd_stage(folder / "selected.jsonl", student, task, searched, plan, common)
        else:
            kept = training_rows(
                searched, task, plan.train_on, per_problem=plan.per_problem, seed=plan.search.seed
            )
        candidates, rejected = filter_statistics(kept, plan.train)
        stats = train_stage(folder / "student", student, task, kept, plan.train, **common)
        return {**stats, "filter_candidates": candidates, "filter_rejected": rejected}

    return {"search": run_stage(folder, "search", run_search), "train": run_stage(folder, "train", run_train)}


def morsd_stage(path: Path, student, task, rows: list[dict], plan: DistillPlan, common: dict) -> list[dict]:
    """The rows MoRSD keeps (``genssd.morsd``), scored by ``student`` and written to ``path``."""
    device = common["device"]
    tokenizer = load_tokenizer(student, trust_remote_code=common["trust_remote_code"])
    model = load_model(
        student, device=device, dtype=inference_dtype(device), trust_remote_code=common["trust_remote_code"]
    )
    kept = morsd_rows(rows, task, model, tokenizer, plan.train.prompt_format_for(task), plan.per_problem)
    del model
    write_records(path, kept)
    return kept


def _summed(stats: list[dict]) -> dict:
    """Rounds' statistics together: counts (ints) added up, anything else the last round's."""
    out = dict(stats[-1])
    for key, value in out.items():
        if isinstance(value, int) and not isinstance(value, bool):
            out[key] = sum(s[key] for s in stats)
    return out


def pruned_share(search: dict, train: dict) -> float | None:
    """Share of compared branches that were pruned: by the search's thresholds and by the answer
    filter together. None when the method compared nothing (plain sampling)."""
    compared = search["branches"] + train["filter_candidates"]
    if compared == 0:
        return None
    return (search["branches_pruned"] + train["filter_rejected"]) / compared


__all__ = [
    "COLD_START_SOURCES",
    "DEFAULT_SAVE_EVERY",
    "TRAIN_ON",
    "ColdStart",
    "DistillPlan",
    "branch_statistics",
    "cold_start_search_config",
    "cold_start_train_config",
    "eval_stage",
    "filter_statistics",
    "pruned_share",
    "run_pipeline",
    "search_stage",
    "search_statistics",
    "train_stage",
    "training_rows",
]
