"""``genssd demo``: Gen-SSD against its baselines on the embedded default (``genssd.demo``).

Its settings are a ``genssd.demo.Preset``: ``--preset`` picks one, ``--config`` (YAML of Preset
keys) and ``--set KEY=VALUE`` change its keys, as the other commands' do their configs'.
"""

from __future__ import annotations

import os

from genssd.commands import add_overrides_flag

# Each job process holds its own models and data (~0.5 GB on the full preset); four keep a small
# machine's memory free while giving the two-core CPU machine both its cores.
MAX_DEFAULT_JOBS = 4


def default_jobs() -> int:
    """The CPU cores this process may use, at most MAX_DEFAULT_JOBS."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, MAX_DEFAULT_JOBS))


def register(subparsers) -> None:
    from genssd.demo import DEMO_TASKS, PRESETS

    parser = subparsers.add_parser(
        "demo",
        help="Gen-SSD vs its baselines on a built-in task (arith, ledger), with the shipped models",
        description="Distill the shipped teacher into the shipped student on a synthetic task (arith by "
        "default; --task ledger: word problems) with every method (Standard KD, rejection sampling, "
        "post-hoc student selection, Gen-SSD, the random-scorer ablation), fine-tune the student on "
        "each method's data with the same settings, and print the held-out accuracy against the "
        "teacher tokens spent. Rerunning with the same --out skips finished stages.",
    )
    parser.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="quick",
        help="quick: minutes on a CPU (default); full: the larger GPU experiment (3 seeds)",
    )
    parser.add_argument(
        "--config", help="YAML file of Preset keys (train_steps, num_candidates, ...) over the --preset's"
    )
    add_overrides_flag(parser, "--set", "override one Preset key (repeatable)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the problems, sampling and training")
    parser.add_argument(
        "--task", choices=sorted(DEMO_TASKS), help="the embedded task (default arith; = --set task=...)"
    )
    parser.add_argument(
        "--models", help="folder with teacher/ and student/ model folders (default: the task's shipped ones)"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=default_jobs(),
        help="jobs (a seed's cold start, a method) run at a time, each in its own process (default: the "
        f"usable CPU cores, at most {MAX_DEFAULT_JOBS}; 1 runs everything in this process with its "
        "progress bars; on a GPU the tiny models leave room for about one job per CPU core)",
    )
    parser.add_argument(
        "--study",
        action="append",
        metavar="NAME",
        help="a question to answer (repeatable; default main): main (the usual table), equal-data-M "
        "(every method on at most M correct trajectories a problem), presets (ours, the paper's rule, "
        "MoRSD at equal teacher budget), iterative (rounds vs one search), sweeps (margin, K, chunk, "
        "score scope); methods the studies share run once (= --set studies=[...])",
    )
    parser.add_argument(
        "--equal-data",
        type=int,
        metavar="M",
        help="the equal-data protocol: every method trains on at most M correct trajectories per problem "
        "(= --study equal-data-M)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def demo_preset(args):
    """The ``Preset`` of the parsed arguments: ``--preset``'s, then ``--config``, then ``--study``
    (with ``--equal-data``) and ``--task``, then ``--set`` (unknown keys and bad values raise
    ``UsageError``)."""
    import dataclasses

    from genssd.config import build_config
    from genssd.demo import PRESETS, Preset

    studies = list(args.study or []) + ([] if args.equal_data is None else [f"equal-data-{args.equal_data}"])
    given = [f"studies=[{', '.join(studies)}]"] if studies else []
    given += [] if args.task is None else [f"task={args.task}"]
    return build_config(
        Preset,
        yaml_path=args.config,
        overrides=[*given, *args.set],
        **dataclasses.asdict(PRESETS[args.preset]),
    )


def run(args) -> int:
    from genssd.data import check_writable
    from genssd.demo import run_demo
    from genssd.models import quiet_transformers

    preset = demo_preset(args)  # before anything is written
    check_writable(args.out, folder=True)
    # The demo loads and saves many tiny models: Hugging Face's per-file bars would bury its own.
    quiet_transformers()
    run_demo(
        args.out,
        preset=preset,
        device=args.device,
        seed=args.seed,
        models=args.models,
        progress=not args.no_progress,
        jobs=args.jobs,
    )
    return 0
