"""The embedded default (docs/design.md §5): Gen-SSD and its baselines on ``arith``, end to end.

With the shipped teacher and student (``assets/demo``) and problems drawn by the seeded ``arith``
generator, ``run_demo`` runs the distillation pipeline (``genssd.distill``) once per method:

- ``base``: the shipped student, not fine-tuned;
- ``cold start``: the student after SFT on a few Standard-KD samples; every method below
  fine-tunes this student (and scores with it), so they differ only in their data;
- ``standard KD``: one teacher sample per problem;
- ``rejection``: n teacher samples per problem, the answer-correct ones kept;
- ``best-of-n``: n whole teacher answers, the one the student likes best kept;
- ``gen-ssd``: line-by-line search, the student's likelihood pruning and selecting;
- ``gen-ssd-checked``: the same, then only the trajectories with a right answer are trained on;
- ``random``: the same search with random scores (the ablation);
- ``standard KD, equal budget`` (with ``equal_budget``): Standard KD on as many more problems
  as Gen-SSD's teacher tokens pay for.

That is the ``main`` study; ``Preset.studies`` picks others (``genssd.studies``: equal data,
the presets at equal budget, iterative Gen-SSD, sweeps), in one run with what they share run
once. Every method trains with the same settings and number of steps (iterative rounds split
them) and is evaluated greedily on the same held-out problems. The output folder holds, per seed
and method, the pipeline's run folder (JSONL, checkpoints, ``summary.json``, the method's table
row in ``row.json``), and at the top ``results.json``, the printed table and a plot of accuracy
against teacher tokens. A rerun with the same settings skips finished stages.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import importlib
import multiprocessing
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from genssd.config import EvalConfig, TrainConfig, config_hash, search_config_for
from genssd.data import read_output
from genssd.distill import DEFAULT_SAVE_EVERY, DistillPlan, eval_stage, run_pipeline, training_rows
from genssd.errors import UsageError
from genssd.models import quiet_transformers, resolve_device
from genssd.report import TABLE_NOTES, aggregate, format_table, write_plot
from genssd.runs import guard_run, read_marker, run_stage, silence_stage_lines, write_json, write_marker
from genssd.studies import Method, methods_of, study_methods
from genssd.tasks import get_task
from genssd.train import completion_text, select_rows


class DemoTask(NamedTuple):
    """An embedded task: its problem module (``generate_problems``, ``line_operation_counts``,
    ``write_problems``), the folder of its shipped teacher and student, and the new tokens its
    longest solution needs (arith's run to ~60 characters, ledger's to 98)."""

    module: str
    models: Path
    max_new_tokens: int


DEMO_TASKS = {
    "arith": DemoTask("genssd.tasks.arith", Path(__file__).resolve().parent / "assets" / "demo", 80),
    "ledger": DemoTask("genssd.tasks.ledger", Path(__file__).resolve().parent / "assets" / "ledger", 112),
}
ASSETS = DEMO_TASKS["arith"].models


def task_module(task: str):
    """The problem module of the embedded task ``task``."""
    return importlib.import_module(DEMO_TASKS[task].module)


# Training and held-out problems come from separate generator streams, the training one offset by
# the seed; the held-out set is the task's own, the same for every seed of every run (so runs of
# other seeds, e.g. seeds 3-4 after 0-2, add to the same comparison).
TRAIN_STREAM, HELDOUT_STREAM = 1000, 2000


@dataclass(frozen=True)
class Preset:
    """The sizes of a demo run.

    Attributes:
        train_problems: problems each method searches (the first ``cold_start_problems`` of
            them also make the cold start).
        heldout_problems: problems every student is evaluated on.
        cold_start_problems, cold_start_steps: the cold start's data and optimizer steps.
        train_steps, train_batch_size, lr: every method's SFT (identical for all).
        num_candidates: n of rejection sampling and best-of-n; candidates per step of Gen-SSD.
        temperature, max_new_tokens: the teacher's sampling (all methods); None: the task's room.
        search_batch_size, eval_batch_size: prompts per batch (speed only).
        seeds: runs with seeds ``seed, seed + 1, ...`` (mean and spread in the results).
        equal_budget: add Standard KD with Gen-SSD's teacher-token budget to ``main`` (the
            ``presets`` study always has it).
        studies: the questions the run answers (``genssd.studies.STUDIES``): ``main``, the usual
            table; ``equal-data-M``, every method on at most M correct trajectories per problem;
            ``presets``, ``iterative``, ``sweeps``. Methods they share run once.
        task: the embedded task (``DEMO_TASKS``): ``arith``, or ``ledger``'s word problems.
    """

    name: str
    train_problems: int
    heldout_problems: int
    cold_start_problems: int
    cold_start_steps: int
    train_steps: int
    train_batch_size: int
    lr: float
    num_candidates: int
    temperature: float
    max_new_tokens: int | None
    search_batch_size: int
    eval_batch_size: int
    seeds: int = 1
    equal_budget: bool = False
    studies: tuple[str, ...] = ("main",)
    task: str = "arith"

    def __post_init__(self) -> None:
        if self.task not in DEMO_TASKS:
            raise UsageError(f"unknown demo task {self.task!r}; choose one of {', '.join(DEMO_TASKS)}")
        if not 1 <= self.cold_start_problems <= self.train_problems:
            raise UsageError("a preset needs 1 <= cold_start_problems <= train_problems")
        if (
            min(
                self.heldout_problems,
                self.num_candidates,
                self.seeds,
                self.train_steps,
                self.cold_start_steps,
            )
            < 1
        ):
            raise UsageError(
                "a preset needs at least one held-out problem, candidate, seed and training step"
            )
        # A YAML list (--config, --set studies=[...]) or one name (--set studies=main) is a tuple here.
        studies = (self.studies,) if isinstance(self.studies, str) else tuple(self.studies)
        object.__setattr__(self, "studies", studies)
        rounds = max(m.rounds for m in methods_of(studies, self.num_candidates, self.equal_budget))
        if self.train_steps < rounds:
            raise UsageError(
                f"train_steps must be >= {rounds}: iterative Gen-SSD splits them between {rounds} rounds"
            )


PRESETS = {
    # About six minutes on two CPU cores with two jobs (training is most of it): enough problems
    # that the methods' data differ by more than the noise of 500 held-out problems, and a cold
    # start long enough that the student prefers the next fine line at most steps (84% of the
    # decision points after 500 steps of 32 in experiments/results/demo_models_check.json).
    "quick": Preset(
        name="quick",
        train_problems=2500,
        heldout_problems=500,
        cold_start_problems=1000,
        cold_start_steps=800,
        train_steps=800,
        train_batch_size=32,
        lr=3e-3,
        num_candidates=4,
        temperature=1.0,
        max_new_tokens=None,
        search_batch_size=128,
        eval_batch_size=500,
    ),
    # The GPU experiment: more data and training, three seeds, and the equal-budget comparison
    # (501 s on an H100 with --jobs 15).
    "full": Preset(
        name="full",
        train_problems=8000,
        heldout_problems=1000,
        cold_start_problems=2000,
        cold_start_steps=1000,
        train_steps=3000,
        train_batch_size=64,
        lr=3e-3,
        num_candidates=4,
        temperature=1.0,
        max_new_tokens=None,
        search_batch_size=512,
        eval_batch_size=1000,
        seeds=3,
        equal_budget=True,
    ),
}


def methods(preset: Preset) -> list[Method]:
    """The methods of the preset's studies (``genssd.studies``), in table order."""
    return methods_of(preset.studies, preset.num_candidates, preset.equal_budget)


# ------------------------------------------------------------------------------------- the data


def demo_problems(preset: Preset, seed: int) -> tuple[list[dict], list[dict], list[dict]]:
    """``(train, pool, heldout)``: the training problems, a larger pool that starts with them (for
    a budget row) and the held-out problems (disjoint from both, the same for every seed)."""

    generate_problems = task_module(preset.task).generate_problems
    heldout = generate_problems(preset.heldout_problems, HELDOUT_STREAM, uid_prefix="heldout")
    exclude = [row["question"] for row in heldout]
    # The pool pays for about n times the problems: Gen-SSD spends about n samples' tokens each.
    budget_row = any(m.budget_of is not None for m in methods(preset))
    size = preset.train_problems * (preset.num_candidates + 1) if budget_row else preset.train_problems
    # The generator draws in sequence, so a larger draw begins with the smaller one.
    pool = generate_problems(size, TRAIN_STREAM + seed, uid_prefix="train", exclude=exclude)
    return pool[: preset.train_problems], pool, heldout


# ---------------------------------------------------------------------------------- one seed


def _search_config(method: str, overrides: dict, preset: Preset, seed: int):
    return search_config_for(
        method,
        **overrides,
        temperature=preset.temperature,
        max_new_tokens=_new_tokens(preset),
        batch_size=preset.search_batch_size,
        seed=seed,
    )


def _train_config(preset: Preset, seed: int, steps: int, only_correct: bool = False) -> TrainConfig:
    return TrainConfig(
        lr=preset.lr,
        max_steps=steps,
        batch_size=preset.train_batch_size,
        warmup_ratio=0.05,
        weight_decay=0.01,
        max_length=256,
        seed=seed,
        save_every=DEFAULT_SAVE_EVERY,
        only_correct=only_correct,
    )


def _eval_config(preset: Preset) -> EvalConfig:
    return EvalConfig(batch_size=preset.eval_batch_size, max_new_tokens=_new_tokens(preset))


def _new_tokens(preset: Preset) -> int:
    """The preset's ``max_new_tokens``, or its task's room where None."""
    if preset.max_new_tokens is not None:
        return preset.max_new_tokens
    return DEMO_TASKS[preset.task].max_new_tokens


def leap_share(
    search_paths: Path | list[Path], method: Method | None = None, seed: int = 0, task_name: str = "arith"
) -> float:
    """The share of solution lines in ``method``'s training data (None: each problem's first
    trajectory) that carry out two or more operations at once (leaps, which the small student
    cannot learn; docs/design.md §5), for the embedded task ``task_name``. ``search_paths``: the
    method's search output, or its rounds' outputs together."""

    task = get_task(task_name)
    method = method or Method("first", "first trajectories", "standard")
    kept = []
    for path in [search_paths] if isinstance(search_paths, Path) else search_paths:
        if method.train_on == "morsd":  # chosen with the student's scores, kept beside the search
            kept += read_output(path.parent / "selected.jsonl")
        else:
            kept += training_rows(
                read_output(path), task, method.train_on, per_problem=method.per_problem, seed=seed
            )
    if not kept:
        return 0.0
    rows = select_rows(kept, only_correct=method.only_correct, task=task)
    share = leap_line_share([(completion_text(row), len(row["ops"])) for row in rows], task_name)
    return share if share is not None else 0.0


def leap_line_share(texts_and_operations: list[tuple[str, int]], task_name: str) -> float | None:
    """The share of the lines of ``(solution text, the problem's operation count)`` pairs that
    carry out two or more operations at once, by the embedded task's own line counter (None: no
    lines)."""
    line_operation_counts = task_module(task_name).line_operation_counts
    counts = [n for text, ops in texts_and_operations for n in line_operation_counts(text, ops)]
    return sum(n >= 2 for n in counts) / len(counts) if counts else None


def _row(method: str, label: str, summary: dict, leaps: float | None) -> dict:
    """One method's result for one seed."""
    return {
        "method": method,
        "label": label,
        "accuracy": summary["eval"]["accuracy"],
        "teacher_tokens": summary.get("teacher_tokens_total", 0),
        "pruned_share": summary.get("pruned_share"),
        "leap_share": leaps,
    }


@dataclass(frozen=True)
class SeedSetup:
    """One seed's problems and its shared first stages (what every method of the seed builds on)."""

    root: Path
    seed: int
    train_rows: list[dict]
    pool: list[dict]
    heldout: list[dict]
    base_row: dict
    cold_row: dict
    cold_tokens: int


def setup_seed(root: Path, models: Path, preset: Preset, seed: int, device: str, progress: bool) -> SeedSetup:
    """Write one seed's problems, evaluate the base student and run the cold start, in ``root``."""

    train_rows, pool, heldout = demo_problems(preset, seed)
    write_problems = task_module(preset.task).write_problems
    write_problems(root / "data" / "train.jsonl", train_rows)
    write_problems(root / "data" / "heldout.jsonl", heldout)
    common = {"device": device, "progress": progress}
    evaluation = _eval_config(preset)
    student = models / "student"

    base = root / "base"
    info = run_stage(
        base,
        "eval",
        lambda: eval_stage(
            base / "eval.jsonl", student, get_task(preset.task), heldout, evaluation, **common
        ),
    )
    cold = run_pipeline(
        DistillPlan(
            teacher=models / "teacher",
            student=student,
            task=preset.task,
            rows=train_rows[: preset.cold_start_problems],
            out=root / "coldstart",
            search=_search_config("standard", {}, preset, seed),
            train=_train_config(preset, seed, preset.cold_start_steps),
            evaluation=evaluation,
            eval_rows=heldout,
            **common,
        )
    )
    leaps = leap_share(root / "coldstart" / "search.jsonl", task_name=preset.task)
    return SeedSetup(
        root=root,
        seed=seed,
        train_rows=train_rows,
        pool=pool,
        heldout=heldout,
        base_row=_row("base", "base student (no fine-tuning)", {"eval": info}, None),
        cold_row=_row("coldstart", "cold start (Standard KD)", cold, leaps),
        cold_tokens=cold["teacher_tokens"],
    )


def adopt_search(source: Path, folder: Path) -> None:
    """Give ``folder`` (a method's run folder) the finished search of ``source``, a method of the
    same seed with the same search settings (``search_owners``), so it is not run twice."""
    if read_marker(folder, "search") is not None:
        return
    info = read_marker(source, "search")
    if info is None:
        raise RuntimeError(f"{source} has no finished search to share")  # a scheduling bug
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source / "search.jsonl", folder / "search.jsonl")
    write_marker(folder, "search", info)  # last, and atomically: a kill leaves no half marker


def run_method(
    setup: SeedSetup,
    method: Method,
    models: Path,
    preset: Preset,
    device: str,
    progress: bool,
    budget: int | None = None,
    search_from: str | None = None,
) -> tuple[dict, int]:
    """One method on top of a seed's cold start: its result row and its search's teacher tokens.

    ``budget`` (``Method.budget_of``): teacher tokens to spend, drawing problems from the pool.
    ``search_from``: the key of a method of this seed whose finished search this one shares.
    """
    folder = setup.root / method.key
    if search_from is not None:
        adopt_search(setup.root / search_from, folder)
    rows = setup.pool if budget is not None else setup.train_rows
    summary = run_pipeline(
        DistillPlan(
            teacher=models / "teacher",
            student=setup.root / "coldstart" / "student",
            task=preset.task,
            rows=rows,
            out=folder,
            search=_search_config(method.preset, method.overrides, preset, setup.seed),
            # Rounds split the steps: every method trains for the same number of them.
            train=_train_config(preset, setup.seed, preset.train_steps // method.rounds, method.only_correct),
            evaluation=_eval_config(preset),
            eval_rows=setup.heldout,
            train_on=method.train_on,
            per_problem=method.per_problem,
            rounds=method.rounds,
            teacher_token_budget=budget,
            device=device,
            progress=progress,
        )
    )
    # Every fine-tuned student's data includes the shared cold start's.
    summary["teacher_tokens_total"] = summary["teacher_tokens"] + setup.cold_tokens
    searches = [folder / "search.jsonl"] if method.rounds == 1 else sorted(folder.glob("round*/search.jsonl"))
    leaps = leap_share(searches, method, setup.seed, preset.task)
    row = _row(method.key, method.label, summary, leaps)
    # The row beside the method's outputs: a run stopped before results.json can still be read.
    write_json(folder / "row.json", row)
    return row, summary["teacher_tokens"]


def search_owners(chosen: list[Method], preset: Preset, root: Path) -> dict[str, str]:
    """``{method key: key of the method whose search it shares}`` for the methods of ``chosen``
    whose search settings (as run, seed aside) another one's equal. The owner of each setting is
    the first method with a finished search in the seed folder ``root`` (a folder that gained
    studies reuses what it holds), else the first in ``chosen``'s order."""
    groups: dict[str, list[str]] = {}
    for method in chosen:
        if method.shares_search:
            identity = config_hash(_search_config(method.preset, method.overrides, preset, seed=0))
            groups.setdefault(identity, []).append(method.key)
    shared = {}
    for keys in groups.values():
        finished = [key for key in keys if read_marker(root / key, "search") is not None]
        owner = (finished or keys)[0]
        shared.update({key: owner for key in keys if key != owner})
    return shared


def run_seed(root: Path, models: Path, preset: Preset, seed: int, device: str, progress: bool) -> list[dict]:
    """Every method for one seed, in ``root``, one after another; one result row per method."""
    setup = setup_seed(root, models, preset, seed, device, progress)
    chosen = methods(preset)
    owners = search_owners(chosen, preset, root)
    done: dict[str, tuple[dict, int]] = {}  # each method's row and its search's teacher tokens
    # Owners first, then those sharing their searches, then budget rows (they need their
    # source's tokens); otherwise in table order.
    for method in sorted(chosen, key=lambda m: (m.budget_of is not None, m.key in owners)):
        budget = done[method.budget_of][1] if method.budget_of is not None else None
        done[method.key] = run_method(
            setup, method, models, preset, device, progress, budget, owners.get(method.key)
        )
    return [setup.base_row, setup.cold_row] + [done[m.key][0] for m in chosen]


# ------------------------------------------------------------------------------------ the run


@contextlib.contextmanager
def _cpu_threads(count: int | None):
    """Run with ``count`` intra-op threads (None: unchanged).

    The demo's models are tiny: a second thread has almost no work to share and only adds
    synchronization, which on a busy two-core machine costs ten times the work itself.
    """

    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _in_worker(job, *args, device: str, progress: bool, **kwargs):
    """Run ``job(*args, device, progress, **kwargs)`` with the threads and bars the demo wants
    (also the entry point of a worker process)."""
    if not progress:
        quiet_transformers()
    with _cpu_threads(1 if device == "cpu" else None):
        return job(*args, device, progress, **kwargs)


def _run_seeds(
    out: Path,
    models: Path,
    preset: Preset,
    seeds: list[int],
    device: str,
    progress: bool,
    jobs: int,
) -> list[list[dict]]:
    """Every seed's result rows, in seed order: in this process, or in ``jobs`` worker processes.

    With workers, each seed's set-up (base evaluation, cold start) is one job and each method on
    top of it another, so up to ``jobs`` of them run at once (a method sharing another's search,
    or spending its budget, waits for it). The demo's models are so small that one process keeps
    a GPU mostly idle (its time goes to launching kernels from one CPU core). Workers are spawned
    (CUDA cannot be used in a forked child) and show no progress bars or stage lines of their own:
    one bar (or, without, one line a job) counts the finished jobs.
    """
    if jobs == 1:
        return [
            _in_worker(run_seed, out / f"seed{s}", models, preset, s, device=device, progress=progress)
            for s in seeds
        ]

    context = multiprocessing.get_context("spawn")
    quiet = {"device": device, "progress": False}
    total = len(seeds) * (1 + len(methods(preset)))
    with (
        concurrent.futures.ProcessPoolExecutor(
            jobs, mp_context=context, initializer=silence_stage_lines
        ) as pool,
        tqdm(total=total, desc="demo jobs", unit="job", disable=not progress) as bar,
    ):

        def finished(label: str, future: concurrent.futures.Future) -> None:
            # A failed job is re-raised where its result is read; here it only must not count as done.
            if future.cancelled() or future.exception() is not None:
                return
            bar.update(1)
            if progress:
                bar.set_postfix_str(label)
            else:
                print(f"[genssd] finished {label}", flush=True)

        def submit(label, job, *args, **kwargs):
            future = pool.submit(_in_worker, job, *args, **quiet, **kwargs)
            future.add_done_callback(lambda f: finished(label, f))
            return future

        try:
            setups = {
                s: submit(f"seed{s} set-up", setup_seed, out / f"seed{s}", models, preset, s) for s in seeds
            }
            chosen = methods(preset)
            owners = {s: search_owners(chosen, preset, out / f"seed{s}") for s in seeds}
            runs: dict[tuple[int, str], concurrent.futures.Future] = {}

            def ready(s: int, m: Method) -> bool:
                """Whether seed ``s``'s method ``m`` can start: its set-up done, the search it
                shares finished (the owner's marker: its training is not waited for), the method
                whose tokens are its budget done. A failed set-up or owner fails the run here."""
                if not setups[s].done():
                    return False
                setups[s].result()
                owner = owners[s].get(m.key)
                if owner is not None and read_marker(out / f"seed{s}" / owner, "search") is None:
                    if (s, owner) in runs and runs[s, owner].done():
                        runs[s, owner].result()
                    return False
                source = runs.get((s, m.budget_of)) if m.budget_of is not None else None
                return m.budget_of is None or (source is not None and source.done())

            # Method by method across the seeds: a run stopped early has its first rows complete.
            waiting = [(s, m) for m in chosen for s in seeds]
            while waiting:
                still = []
                for s, m in waiting:
                    if not ready(s, m):
                        still.append((s, m))
                        continue
                    budget = runs[s, m.budget_of].result()[1] if m.budget_of is not None else None
                    runs[s, m.key] = submit(
                        f"seed{s}/{m.key}",
                        run_method,
                        setups[s].result(),
                        m,
                        models,
                        preset,
                        budget=budget,
                        search_from=owners[s].get(m.key),
                    )
                if len(still) == len(waiting):
                    running = [f for f in [*setups.values(), *runs.values()] if not f.done()]
                    if not running:
                        raise RuntimeError("demo jobs wait on each other")  # a scheduling bug
                    # An owner marks its search finished while its job goes on: look again soon.
                    first = concurrent.futures.FIRST_COMPLETED
                    concurrent.futures.wait(running, timeout=5, return_when=first)
                waiting = still
            return [
                [setups[s].result().base_row, setups[s].result().cold_row]
                + [runs[s, m.key].result()[0] for m in chosen]
                for s in seeds
            ]
        except BaseException:
            # Fail fast: drop the jobs not started yet (the running ones finish, and their
            # stages are kept for a rerun), instead of running them all before the error shows.
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def check_models(models: Path) -> None:
    """``models`` must hold ``teacher/`` and ``student/`` model folders."""
    for name in ("teacher", "student"):
        if not (Path(models) / name / "config.json").is_file():
            raise UsageError(f"no {name} model in {models} (expected {Path(models) / name}/config.json)")


def run_demo(
    out: str | Path = "runs/demo",
    *,
    preset: str | Preset = "quick",
    device: str | None = None,
    seed: int = 0,
    models: str | Path | None = None,
    progress: bool = True,
    jobs: int = 1,
) -> dict:
    """Run (or finish) the demo in ``out``; print the table; return ``results.json``'s content.

    ``jobs`` > 1 runs up to that many jobs (a seed's set-up, a method) at a time, each in its own
    process, with a line per finished job instead of progress bars. ``models`` None: the shipped
    models of the preset's task. A folder's methods may change between reruns (``Preset.studies``,
    ``equal_budget``): the methods already run are kept, the new ones run.
    """
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise UsageError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        preset = PRESETS[preset]
    preset = dataclasses.replace(preset, max_new_tokens=_new_tokens(preset))  # recorded as run
    if jobs < 1:
        raise UsageError(f"jobs must be >= 1, got {jobs}")
    models, out = Path(models if models is not None else DEMO_TASKS[preset.task].models), Path(out)
    check_models(models)
    device = resolve_device(device)
    if out.exists() and not out.is_dir():
        raise UsageError(f"output folder {out} is a file")
    out.mkdir(parents=True, exist_ok=True)
    # Which methods run does not change the others' results (each has its own folder and guard).
    settings = {k: v for k, v in dataclasses.asdict(preset).items() if k not in ("studies", "equal_budget")}
    guard_run(out, {"preset": settings, "seed": seed, "models": str(models.resolve())})

    started = time.perf_counter()
    seeds = [seed + i for i in range(preset.seeds)]
    per_seed = _run_seeds(out, models, preset, seeds, device, progress, jobs)
    rows = aggregate(per_seed)
    table = format_table(rows)
    results = {
        "task": preset.task,
        "preset": dataclasses.asdict(preset),
        "seeds": seeds,
        "device": device,
        "methods": rows,
        "studies": {
            name: [m.key for m in study_methods(name, preset.num_candidates, preset.equal_budget)]
            for name in preset.studies
        },
        "per_seed": per_seed,
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(out / "results.json", results)
    (out / "table.txt").write_text(table + "\n\n" + TABLE_NOTES + "\n")
    title = f"{preset.task}, {preset.train_problems} problems, {len(seeds)} seed(s), {device}"
    plotted = write_plot(out / "accuracy_vs_teacher_tokens.png", rows, title)

    print()
    print(table)
    print()
    print(TABLE_NOTES)
    if not plotted:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
    print(f"\nresults, JSONL and checkpoints in {out}/ ({results['seconds']:.0f} s)")
    return results


__all__ = [
    "ASSETS",
    "DEMO_TASKS",
    "PRESETS",
    "Method",
    "Preset",
    "aggregate",
    "format_table",
    "leap_line_share",
    "methods",
    "run_demo",
]
